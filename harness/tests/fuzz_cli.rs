//! `miglab fuzz` and `miglab merge` as a CI matrix runs them: each shard against the server
//! given with `--server` and `--device`, its summary written with `--summary-json`, then the
//! summaries merged.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn miglab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_miglab")).args(args).output().expect("miglab runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A server of another name: logs its command line, calls its dma-engine `engine-x`, and is
/// vfu-server underneath.
fn wrapper_server(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("other-server");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {log}\nfor a in \"$@\"; do shift; [ \"$a\" = engine-x ] && a=dma-engine; set -- \"$@\" \"$a\"; done\nexec {miglab} serve \"$@\"\n",
        log = dir.join("calls.log").display(),
        miglab = env!("CARGO_BIN_EXE_miglab"),
    );
    std::fs::write(&path, script).expect("the wrapper is written");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("the wrapper is executable");
    path
}

#[test]
fn shards_run_against_the_given_server_and_their_summaries_merge() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = wrapper_server(dir.path());
    let d = |name: &str| dir.path().join(name).display().to_string();
    for shard in ["0/2", "1/2"] {
        let summary = d(&format!("summary-{}.json", &shard[..1]));
        let out = miglab(&[
            "fuzz",
            "--seeds",
            "0..4",
            "--shard",
            shard,
            "--no-shrink",
            "--server",
            &server.display().to_string(),
            "--server-device",
            "engine-x",
            "--reports",
            &d("reports"),
            "--regressions",
            &d("regressions"),
            "--summary-json",
            &summary,
        ]);
        assert!(out.status.success(), "shard {shard}: {}", text(&out));
        assert!(text(&out).contains("2 runs in"), "{}", text(&out));
    }
    let calls = std::fs::read_to_string(dir.path().join("calls.log")).expect("the server was started");
    assert!(calls.lines().all(|l| l.contains("--device engine-x")), "{calls}");

    let out = miglab(&["merge", &d("summary-0.json"), &d("summary-1.json"), "--summary-json", &d("merged.json")]);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.starts_with("merged 2 summaries: seeds 0..4, shards 0/2, 1/2: 4 runs"), "{printed}");
    assert!(printed.contains("model coverage: (state × operation × outcome)"), "{printed}");
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("merged.json")).expect("merged.json is written"))
            .expect("merged.json is JSON");
    assert_eq!(merged["runs"], 4);

    // Four seeds cannot reach every required cell.
    let out = miglab(&["merge", &d("summary-0.json"), &d("summary-1.json"), "--require-coverage"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not reached (--require-coverage)"));
}

#[test]
fn merge_names_a_file_that_is_not_a_summary() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("junk.json");
    std::fs::write(&path, "{\"runs\": 1}").expect("written");
    let out = miglab(&["merge", &path.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains(&format!("{}: not a campaign summary", path.display())), "{}", text(&out));
}

#[test]
fn print_shows_the_scenario_each_seed_draws_without_running_it() {
    let out = miglab(&["fuzz", "--seeds", "7..9", "--print"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<&str> = stdout.split("---\n").filter(|d| !d.trim().is_empty()).collect();
    assert_eq!(docs.len(), 2, "{stdout}");
    for (doc, seed) in docs.iter().zip(7..) {
        assert_eq!(*doc, harness::fuzz::generate::generate(seed).render(None), "seed {seed}");
        harness::scenario::load_str(doc, &format!("fuzz-{seed}.yaml")).expect("a printed scenario loads");
    }
    let without_range = miglab(&["fuzz", "--print", "--time", "1s"]);
    assert!(!without_range.status.success());
    assert!(text(&without_range).contains("give --seeds A..B"), "{}", text(&without_range));
}
