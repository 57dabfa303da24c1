//! The Kubernetes manifests kustomize applies, validated against the Kubernetes schemas by
//! `kubernetes-validate` (installed into `.venv` by `scripts/setup.sh`).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let k8s = repo.join("k8s");
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap();
    // The `resources:` list: every file kustomize applies as it is.
    let resources: Vec<PathBuf> = kustomization
        .lines()
        .skip_while(|l| l.trim() != "resources:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|f| k8s.join(f))
        .collect();
    assert!(resources.len() >= 4, "{resources:?}");
    for file in &resources {
        assert!(file.exists(), "{} is listed but missing", file.display());
    }
    let out = Command::new(repo.join(".venv/bin/kubernetes-validate"))
        .arg("--strict")
        .args(&resources)
        .output()
        .expect("kubernetes-validate is installed (scripts/setup.sh)");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    for kind in
        ["deployment/control-plane", "statefulset/dia-node", "poddisruptionbudget/control-plane"]
    {
        assert!(
            report.contains(&format!("passed for resource {kind}")),
            "{kind} not validated:\n{report}"
        );
    }
}
