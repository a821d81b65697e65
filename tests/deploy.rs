//! What users run from deploy/: the native demo walkthrough end to end, `canaryd check` on
//! Kubernetes manifests, and `canaryd probe` (the container health check).

mod support;

use std::process::Command;
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn native_demo_walkthrough_passes() {
    if !have("prometheus") || !have("curl") {
        if std::env::var_os("CI").is_some() {
            panic!("prometheus and curl are required; .ci/run installs them");
        }
        eprintln!("SKIPPED: prometheus or curl missing; CI runs this test");
        return;
    }
    let out = Command::new("bash")
        .arg(format!("{ROOT}/deploy/native/demo.sh"))
        .arg("--check")
        .env("CANARYD_BIN", env!("CARGO_BIN_EXE_canaryd"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("native demo: all checks passed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("canaryd_route_weight{version=\"canary\"} = 50"),
        "{stdout}"
    );
}

#[test]
fn check_reads_configs_inside_kubernetes_configmaps() {
    for file in [
        "deploy/k8s/sidecar/canaryd.yaml",
        "deploy/k8s/ingress/canaryd.yaml",
    ] {
        let out = canaryd()
            .args(["check", "--skip-files", &format!("{ROOT}/{file}")])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("ConfigMap/") && stdout.contains("config OK"),
            "{stdout}"
        );
    }
    let manifest = std::fs::read_to_string(format!("{ROOT}/deploy/k8s/ingress/canaryd.yaml"))
        .unwrap()
        .replacen("weight: 10", "weight: 110", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, manifest).unwrap();
    let out = canaryd()
        .args(["check", "--skip-files"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("ConfigMap/canaryd canaryd.yaml: 1 error(s)")
            && stderr.contains("routes[0].versions.canary.weight"),
        "{stderr}"
    );
}

#[test]
fn check_reads_tls_files_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.yaml");
    std::fs::write(
        &path,
        "listeners: [{ address: \"127.0.0.1:8443\", tls: { cert: /nonexistent/tls.crt, key: /nonexistent/tls.key } }]\nroutes:\n  - name: r\n    versions: { v: { endpoints: [\"127.0.0.1:1\"] } }\n",
    )
    .unwrap();
    let out = canaryd().arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("listeners[0].tls.cert: cannot read /nonexistent/tls.crt"),
        "{stderr}"
    );
    let out = canaryd()
        .args(["check", "--skip-files"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[tokio::test]
async fn probe_exits_by_status() {
    let origin = Origin::start("up").await;
    let probe = |path: String| {
        let mut cmd = canaryd();
        cmd.args(["probe", &path]);
        run_cmd(cmd)
    };
    assert!(
        probe(format!("http://{}/", origin.addr))
            .await
            .status
            .success()
    );
    let out = probe(format!("http://{}/status/503", origin.addr)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));
    let out = probe(format!("http://{}/", closed_port())).await;
    assert_eq!(out.status.code(), Some(1));
}
