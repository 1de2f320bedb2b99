//! The published API description against the running intake: the document validates
//! as OpenAPI 3.1, and a property-based tester (schemathesis) that generates requests
//! from it finds no server error and no answer that the document does not describe.
//! `make prepare` installs both tools (into `target/tools/py`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use loanflow_testkit::{application, TestSystem, MANAGER_TOKEN};

fn tool(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/py/bin").join(name);
    assert!(path.exists(), "{name} is missing: run `make prepare` (a Python venv in target/tools/py)");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_the_running_intake_keeps_to_it() {
    let system = TestSystem::start().await;
    // Something to find: an application waiting for a person, one approved.
    let mut big = application(760);
    big["amount"] = serde_json::json!("60000.00");
    big["applicant"]["annual_income"] = serde_json::json!("400000.00");
    let waiting = system.submit_ok(&big).await;
    system.wait_for_status(&waiting, "awaiting_approver", std::time::Duration::from_secs(20)).await;

    let response = system.http.get(system.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let document = response.text().await.unwrap();
    let file = std::env::temp_dir().join(format!("loanflow-openapi-{}.json", system.id));
    std::fs::write(&file, &document).unwrap();
    let validated = tokio::process::Command::new(tool("openapi-spec-validator")).arg(&file).output().await.unwrap();
    assert!(
        validated.status.success(),
        "{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/schemathesis.toml");
    let tested = tokio::process::Command::new(tool("schemathesis"))
        .arg("--config-file")
        .arg(&config)
        .args(["run", &system.url("/api/openapi.json"), "--checks", checks, "--exclude-path", "/metrics"])
        .env("LOANFLOW_APPROVER_TOKEN", MANAGER_TOKEN)
        .env("LOANFLOW_REFERENCE", &waiting)
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&tested.stdout);
    println!("{out}");
    let _ = std::fs::remove_file(&file);
    assert!(
        tested.status.success(),
        "schemathesis found answers the document does not describe:\n{out}{}",
        String::from_utf8_lossy(&tested.stderr)
    );
    system.shutdown().await;
}
