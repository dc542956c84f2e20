//! The binary starts and describes itself. (Building this test also builds
//! `target/debug/kms-bench`, which scripts/test.sh hands to the perf smoke
//! and the chaos drills.)
use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kms-bench"))
        .args(args)
        .output()
        .expect("kms-bench runs");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_commands_describe_themselves() {
    let top = help(&["--help"]);
    for cmd in ["run", "drill"] {
        assert!(top.contains(cmd), "{top}");
    }
    let run = help(&["run", "--help"]);
    for flag in ["--yardstick", "--concurrency", "--json", "--audit-pairs"] {
        assert!(run.contains(flag), "{flag}: {run}");
    }
}
