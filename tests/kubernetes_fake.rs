//! The fake Kubernetes API server that canaryd's Kubernetes tests run against
//! (tests/k8s/fake_apiserver.py, issue 21) is proven faithful with real clients: kubectl and
//! the Python `kubernetes` client run the verbs the tests use (apply, patch of each type, the
//! /status subresource, list and watch from a resourceVersion with bookmarks, 410 after
//! compaction, a watch cut mid-stream, 409 on a stale update) and see what kube-apiserver with
//! the Gateway API CRDs would answer (tests/k8s/fidelity.py holds the checks).

mod support;

use std::process::Command;
use support::have;

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn kubectl_and_the_python_client_find_the_fake_api_server_faithful() {
    if !have("kubectl") || !python_has("kubernetes") {
        if std::env::var_os("CI").is_some() {
            panic!(
                "kubectl and the Python kubernetes client are required; .ci/run installs the client"
            );
        }
        eprintln!("SKIPPED: kubectl or the Python kubernetes client missing; CI runs this test");
        return;
    }
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/k8s/fidelity.py"
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("kubectl and the Python client agree"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every check ran and passed: one `ok:` line per `check(` call in the script.
    let script = include_str!("k8s/fidelity.py");
    let checks = script.matches("check(").count() - script.matches("def check(").count();
    assert_eq!(stdout.matches("ok: ").count(), checks, "{stdout}");
}
