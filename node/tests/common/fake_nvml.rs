//! A scripted NVML library (`tests/fake_nvml/fake_nvml.c`, built here with the system's C
//! compiler) that a node loads through `--nvml-library` as it loads the driver's, and the state
//! file that steers what it reports.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::path::PathBuf;
use std::process::Command;

pub struct FakeNvml {
    dir: tempfile::TempDir,
    pub library: PathBuf,
    state: PathBuf,
}

impl FakeNvml {
    /// Builds the library; it reports one GPU with `state` ("key value" lines, see the C file).
    pub fn build(state: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let library = dir.path().join("libnvidia-ml.so.1");
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake_nvml/fake_nvml.c");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
            .arg(&library)
            .arg(&source)
            .output()
            .expect("a C compiler (cc) is installed");
        assert!(out.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let state_file = dir.path().join("state");
        let fake = Self { dir, library, state: state_file };
        fake.set(state);
        fake
    }

    /// Replaces what the GPU reports from its next query on (atomically: a rename).
    pub fn set(&self, state: &str) {
        let next = self.dir.path().join("state.next");
        std::fs::write(&next, state).unwrap();
        std::fs::rename(&next, &self.state).unwrap();
    }

    /// Makes `node` read this GPU (index 0) whatever device it computes on.
    pub fn attach<'a>(&self, node: &'a mut Command) -> &'a mut Command {
        node.arg("--gpu").arg("0").arg("--nvml-library").arg(&self.library);
        node.env("FAKE_NVML_STATE", &self.state)
    }
}
