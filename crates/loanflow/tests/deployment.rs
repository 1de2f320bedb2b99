//! Deployment files, checked here: the RabbitMQ definitions in `deploy/rabbitmq/` are
//! what `loanflow broker-definitions` generates, and they import into a broker; the
//! container image's Dockerfile passes its linter (hadolint), the compose file the
//! compose specification's schema, the Kubernetes manifests Kubernetes' own schemas
//! (strict: no unknown field), and the KEDA objects the CRD schema kept beside them.
//! (This machine has no container engine to build or run the image.)

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use serde_json::Value;

use loanflow_platform::broker::access;
use loanflow_platform::Settings;

const API: &str = "http://127.0.0.1:15672/api";

fn committed() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/rabbitmq/definitions.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_committed_broker_definitions_are_the_generated_ones() {
    let generated = access::definitions(&Settings::defaults().unwrap());
    assert_eq!(
        committed(),
        generated,
        "deploy/rabbitmq/definitions.json is out of date: run `loanflow broker-definitions > deploy/rabbitmq/definitions.json`"
    );
}

#[tokio::test]
async fn the_broker_definitions_import_into_a_scratch_vhost() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut settings = Settings::defaults().unwrap();
    settings.broker.url = format!("amqp://127.0.0.1:5672/loanflow-definitions-{id}");
    settings.broker.user_prefix = format!("d{id}_");
    let vhost = access::vhost_of(&settings.broker.url);
    let definitions = access::definitions(&settings);
    let http = reqwest::Client::new();
    let imported = http.post(format!("{API}/definitions")).basic_auth("guest", Some("guest")).json(&definitions).send();
    let status = imported.await.unwrap().status();

    let get = |path: String| {
        let http = http.clone();
        async move {
            let answer = http.get(format!("{API}/{path}")).basic_auth("guest", Some("guest")).send().await.unwrap();
            answer.json::<Value>().await.unwrap()
        }
    };
    // The management API shows a queue's policy once its statistics are next collected.
    let applied = |queues: &Value| queues.as_array().is_some_and(|q| q.iter().all(|q| q["policy"].is_string()));
    let mut queues = get(format!("queues/{vhost}")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !applied(&queues) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        queues = get(format!("queues/{vhost}")).await;
    }
    let permissions = get(format!("vhosts/{vhost}/permissions")).await;
    let policies = get(format!("policies/{vhost}")).await;
    // Clean up before asserting, so that a failure leaves nothing behind.
    let _ = http.delete(format!("{API}/vhosts/{vhost}")).basic_auth("guest", Some("guest")).send().await;
    for grant in access::grants() {
        let user = settings.broker.user_of(&grant.service);
        let _ = http.delete(format!("{API}/users/{user}")).basic_auth("guest", Some("guest")).send().await;
    }

    assert!(status.is_success(), "import answered {status}");
    let declared: Vec<(&str, &str)> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["name"].as_str().unwrap(), q["type"].as_str().unwrap_or("classic")))
        .collect();
    assert_eq!(declared.len(), definitions["queues"].as_array().unwrap().len(), "{declared:?}");
    assert!(
        declared.contains(&("loanflow.step.kyc", "quorum")) && declared.contains(&("loanflow.dead-letters", "quorum"))
    );
    // Creating the vhost grants the importing administrator too; every service user has its own.
    let prefix = settings.broker.user_prefix.clone();
    let services = permissions.as_array().unwrap().iter().filter(|p| p["user"].as_str().unwrap().starts_with(&prefix));
    assert_eq!(services.count(), access::grants().len(), "every service user has its permissions");
    let policy = |name: &str| policies.as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap();
    let retention = policy("loanflow-dead-letter-retention");
    assert_eq!(retention["definition"]["message-ttl"], 1_209_600_000_u64, "dead letters kept 14 days");
    let dead_lettering = policy("loanflow-at-least-once-dead-lettering");
    assert_eq!(dead_lettering["definition"]["dead-letter-strategy"], "at-least-once");
    // It applies to every queue that dead-letters: the steps and the status queue.
    for q in queues.as_array().unwrap() {
        let name = q["name"].as_str().unwrap();
        let expected = if name == "loanflow.dead-letters" {
            "loanflow-dead-letter-retention"
        } else {
            "loanflow-at-least-once-dead-lettering"
        };
        assert_eq!(q["policy"], expected, "the policy of {name}");
    }
}

/// A checking tool of `target/tools/py` (installed by `make prepare`), run from the
/// repository root; the test fails with its output unless it succeeds.
fn check(tool: &str, args: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("target/tools/py/bin").join(tool);
    assert!(path.exists(), "{tool} is missing: run `make prepare` (deploy/test-tools.txt)");
    let out = std::process::Command::new(path).args(args).current_dir(&root).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    assert!(!text.contains("Couldn't find schema"), "{tool} checked nothing: {text}");
}

#[test]
fn the_dockerfile_passes_its_linter() {
    check("hadolint", &["--config", "deploy/container/hadolint.yaml", "deploy/container/Dockerfile"]);
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    check("check-jsonschema", &["--builtin-schema", "vendor.compose-spec", "deploy/compose/compose.yaml"]);
}

#[test]
fn the_kubernetes_manifests_follow_kubernetes_schemas() {
    let manifests = ["config", "intake", "bureau", "levels", "migrate"].map(|f| format!("deploy/kubernetes/{f}.yaml"));
    let mut args = vec!["--strict"];
    args.extend(manifests.iter().map(String::as_str));
    check("kubernetes-validate", &args);
}

#[test]
fn the_keda_objects_follow_the_kept_crd_schema() {
    for file in ["deploy/kubernetes/keda-credit.yaml", "deploy/kubernetes/keda-auth.yaml"] {
        check("check-jsonschema", &["--schemafile", "deploy/kubernetes/schemas/keda-v1alpha1.json", file]);
    }
}
