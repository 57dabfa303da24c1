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

/// The manifests run the images `scripts/build-images.sh` builds, as the user the Dockerfiles
/// set and on ports they expose (`scripts/smoke-images.sh` runs the images themselves).
#[test]
fn the_manifests_run_the_images_the_dockerfiles_build_as_their_user_on_their_ports() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |path: &str| std::fs::read_to_string(repo.join(path)).unwrap();
    let script = read("scripts/build-images.sh");
    for (manifest_path, dockerfile, image) in [
        ("k8s/control-plane.yaml", "docker/control-plane.Dockerfile", "dia-serve/control-plane"),
        ("k8s/gpu-node.yaml", "docker/node.Dockerfile", "dia-serve/dia-node"),
    ] {
        let (manifest, docker) = (read(manifest_path), read(dockerfile));
        assert!(manifest.contains(&format!("image: {image}\n")), "{manifest_path} runs {image}");
        let build = format!("-f {dockerfile} -t \"{image}:$tag\"");
        assert!(script.contains(&build), "build-images.sh builds {image} from {dockerfile}");
        let user = docker.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
        let uid = user.split(':').next().unwrap();
        assert!(manifest.contains(&format!("runAsUser: {uid},")), "{manifest_path} runs as {uid}");
        let exposed: Vec<&str> = docker
            .lines()
            .filter_map(|l| l.strip_prefix("EXPOSE "))
            .flat_map(str::split_whitespace)
            .collect();
        let ports: Vec<&str> = manifest
            .split("containerPort: ")
            .skip(1)
            .map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next().unwrap())
            .collect();
        assert!(!ports.is_empty(), "{manifest_path} names its container ports");
        for port in ports {
            assert!(exposed.contains(&port), "{dockerfile} exposes {port}: {exposed:?}");
        }
    }
}
