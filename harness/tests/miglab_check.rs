//! `miglab check` and `miglab list` as a user runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn miglab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_miglab"))
}

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn check_accepts_every_committed_scenario() {
    let files = yaml_files();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let out = miglab().arg("check").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_refuses_a_broken_file_with_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "name: broken\ndescription: d\nseed: 1\ndevice: {kind: dma-engine}\nguest: {ram: 64M}\nsteps:\n  - connect: {sied: source}\n",
    )
    .unwrap();
    let out = miglab().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!("{}:7:15: unknown field `sied`, expected one of side, strict, twin_socket, timeout_ms", path.display())
    );
}

#[test]
fn check_reports_every_semantic_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("early.yaml");
    std::fs::write(
        &path,
        "name: early\ndescription: d\nseed: 1\ndevice: {kind: dma-engine}\nguest: {ram: 1000}\nsteps:\n  - migrate: {}\n",
    )
    .unwrap();
    let out = miglab().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    assert!(stderr.contains(&format!("{p}:5:14: expected a RAM size that is a non-zero multiple of 4K")), "{stderr}");
    assert!(
        stderr.contains(&format!("{p}:7:5: expected a `connect` to the source before this `migrate` step")),
        "{stderr}"
    );
}

#[test]
fn list_shows_each_scenario_with_its_description() {
    let out = miglab().arg("list").arg("--dir").arg(scenarios_dir()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), yaml_files().len(), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("live-migrate ") && l.contains("migrates")), "{stdout}");
}

#[test]
fn schema_prints_the_committed_schema() {
    let out = miglab().arg("schema").output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(scenarios_dir().join("schema.json")).unwrap();
    assert!(
        out.stdout == committed.as_bytes(),
        "scenarios/schema.json is stale; regenerate it with\n    cargo run -p harness --bin miglab -- schema > scenarios/schema.json"
    );
}
