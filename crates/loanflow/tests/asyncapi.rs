//! The AsyncAPI document of the broker's exchanges, queues and messages: the committed
//! `schema/asyncapi.json` is what the code generates (so a message type that changes
//! without the document fails here), and AsyncAPI's own parser accepts it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;

use serde_json::Value;

use loanflow_platform::Settings;

fn committed_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema/asyncapi.json")
}

#[test]
fn the_committed_asyncapi_document_is_the_generated_one() {
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(committed_path()).unwrap()).unwrap();
    let generated = loanflow_platform::broker::asyncapi::document(&Settings::defaults().unwrap());
    assert!(
        committed == generated,
        "schema/asyncapi.json is out of date (a message type or the topology changed): run `make asyncapi`"
    );
}

#[tokio::test]
async fn asyncapi_s_own_parser_accepts_the_document() {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        tools.join("node_modules/@asyncapi/parser").exists(),
        "AsyncAPI's parser is missing: run `make prepare` (npm ci in {})",
        tools.display()
    );
    let checked = tokio::process::Command::new("node")
        .arg("validate-asyncapi.mjs")
        .arg(committed_path())
        .current_dir(&tools)
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "the AsyncAPI document does not validate:\n{out}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}
