//! Amnesia mode leaves nothing behind: the data dir, the working directory
//! and TMPDIR are byte-for-byte unchanged after a session that created keys
//! and signed; configurations that would persist keys refuse to start.
mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::process::{cli, serve_with, BIN};

/// Path → contents of every file below `dir` (and the directories).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn amnesia_writes_nothing_anywhere() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let work = root.path().join("work");
    let tmp = root.path().join("tmp");
    for d in [&data, &work, &tmp] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(data.join("keep.txt"), b"untouched").unwrap();
    let before = [snapshot(&data), snapshot(&work), snapshot(&tmp)];

    let s = serve_with(
        &[
            OsStr::new("--amnesia"),
            OsStr::new("--data-dir"),
            data.as_os_str(),
        ],
        &[("TMPDIR", tmp.as_os_str())],
        Some(&work),
    );
    let token = s.token.clone().expect("amnesia prints a bootstrap token");
    for (name, alg) in [
        ("sig", "ml-dsa-87"),
        ("ed", "ed25519"),
        ("kem", "ml-kem-1024"),
        ("aes", "aes-256-gcm"),
    ] {
        let (code, _, err) = cli(
            &s.grpc,
            &token,
            &["keys", "create", name, "--algorithm", alg],
            None,
        );
        assert_eq!(code, 0, "{err}");
    }
    for i in 0..50 {
        let (code, _, err) = cli(
            &s.grpc,
            &token,
            &["sign", "--key", "sig", "--message", &format!("m{i}")],
            None,
        );
        assert_eq!(code, 0, "{err}");
        if i % 10 == 0 {
            cli(&s.grpc, &token, &["keys", "rotate", "ed"], None);
        }
    }
    let (code, _, err) = cli(&s.grpc, &token, &["wrap", "--key", "kem"], Some(b"x"));
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = cli(
        &s.grpc,
        &token,
        &["keys", "destroy", "ed", "--version", "1"],
        None,
    );
    assert_eq!(code, 2, "destroying an enabled version is refused");

    assert!(s.terminate().success(), "clean exit on SIGTERM");

    let after = [snapshot(&data), snapshot(&work), snapshot(&tmp)];
    for (name, (b, a)) in ["data dir", "working dir", "TMPDIR"]
        .iter()
        .zip(before.iter().zip(after.iter()))
    {
        assert_eq!(b, a, "{name} changed in amnesia mode");
    }
    assert!(!work.join("ron-kms-data").exists());
}

/// (serve arguments, environment, field named in the error, text in it)
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);

#[test]
fn configurations_that_would_persist_keys_refuse_to_start() {
    let cases: &[Case] = &[
        (
            &["--amnesia"],
            &[("KMS_BACKEND", "pkcs11")],
            "KMS_BACKEND",
            "conflicts with --amnesia",
        ),
        (
            &["--amnesia"],
            &[("KMS_BACKEND", "tpm")],
            "KMS_BACKEND",
            "conflicts with --amnesia",
        ),
        (
            &[],
            &[("KMS_AMNESIA", "true"), ("KMS_STORE", "postgres://db/kms")],
            "KMS_STORE",
            "conflicts with KMS_AMNESIA",
        ),
        (
            &["--amnesia"],
            &[("KMS_MASTER_KEY_FILE", "/etc/ron-kms/master.key")],
            "KMS_MASTER_KEY_FILE",
            "conflicts with --amnesia",
        ),
        (
            &["--amnesia"],
            &[("KMS_MASTER_PASSPHRASE_ENV", "PASS")],
            "KMS_MASTER_PASSPHRASE_ENV",
            "conflicts with --amnesia",
        ),
    ];
    for (args, envs, field, text) in cases {
        let out = Command::new(BIN)
            .arg("serve")
            .args(*args)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {envs:?}: {err}");
        assert!(
            err.contains(&format!("config: {field}: ")) && err.contains(text),
            "{args:?} {envs:?}: {err}"
        );
    }
}
