//! The `ron-kms` binary as a user runs it: `serve` bootstraps and prints an
//! admin token once, the client commands talk gRPC to it, `tokens create`
//! adds a token the running server accepts, SIGTERM stops it cleanly, and a
//! restart keeps everything.
mod common;

use std::time::{Duration, Instant};

use common::process::{cli, http_get, serve};

/// `ron-kms verify` of `sig` over `message` with key `release#v1`.
fn verify_v1(addr: &str, token: &str, sig: &str, message: &str) -> (i32, Vec<u8>, String) {
    let args = [
        "verify",
        "--key",
        "release#v1",
        "--signature",
        sig,
        "--message",
        message,
    ];
    cli(addr, token, &args, None)
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[test]
fn the_binary_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = serve(&data);
    let admin = s
        .token
        .clone()
        .expect("first start prints the bootstrap token");
    assert!(admin.starts_with("rkms_"), "{admin}");

    let (code, out, err) = cli(
        &s.grpc,
        &admin,
        &["keys", "create", "release", "--algorithm", "ed25519"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["key"]["versions"][0]["kid"], "release#v1");

    let (code, out, err) = cli(
        &s.grpc,
        &admin,
        &["sign", "--key", "release", "--message", "v1.2.3"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let sig = json(&out)["signature"].as_str().unwrap().to_string();
    let (code, _, _) = verify_v1(&s.grpc, &admin, &sig, "v1.2.3");
    assert_eq!(code, 0, "valid signature exits 0");
    let (code, out, _) = verify_v1(&s.grpc, &admin, &sig, "v1.2.4");
    assert_eq!(code, 1, "invalid signature exits 1");
    assert_eq!(json(&out)["valid"], false);

    cli(
        &s.grpc,
        &admin,
        &["keys", "create", "dek", "--algorithm", "ml-kem-768"],
        None,
    );
    let (code, out, err) = cli(
        &s.grpc,
        &admin,
        &["wrap", "--key", "dek"],
        Some(b"top secret"),
    );
    assert_eq!(code, 0, "{err}");
    let ct = json(&out)["ciphertext"].as_str().unwrap().to_string();
    let (code, out, err) = cli(&s.grpc, &admin, &["unwrap"], Some(ct.as_bytes()));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"top secret");

    let (code, out, _) = cli(&s.grpc, &admin, &["keys", "rotate", "release"], None);
    assert_eq!(
        (code, json(&out)["kid"].as_str().unwrap()),
        (0, "release#v2")
    );
    let (code, _, _) = cli(
        &s.grpc,
        &admin,
        &["keys", "disable", "release", "--version", "1"],
        None,
    );
    assert_eq!(code, 0);
    let (code, _, err) = verify_v1(&s.grpc, &admin, &sig, "v1.2.3");
    assert_eq!(code, 2, "a disabled version is an error, not a verdict");
    assert!(
        err.contains("FailedPrecondition")
            || err.contains("failed precondition")
            || err.contains("disabled"),
        "{err}"
    );

    // a token made by `tokens create` while the server runs is accepted
    let ci = common::process::create_token(&data, "ci", "kms:admin,kms:read");
    assert!(
        ci.starts_with("rkms_") && !ci.contains('\n'),
        "only the token on stdout"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, out, err) = cli(&s.grpc, &ci, &["keys", "list"], None);
        if code == 0 {
            assert_eq!(
                json(&out),
                serde_json::json!([]),
                "tenant ci sees none of admin's keys"
            );
            break;
        }
        assert!(Instant::now() < deadline, "new token never accepted: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, err) = cli(&s.grpc, "rkms_wrong", &["keys", "list"], None);
    assert_eq!(code, 2);
    assert!(err.to_lowercase().contains("unauthenticated"), "{err}");

    // HTTP front of the same process
    let health = http_get(&s.http, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains(r#""status":"ok""#),
        "{health}"
    );
    let ready = http_get(&s.http, "/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.contains(r#""ready":true"#),
        "{ready}"
    );

    // SIGTERM stops it; a restart keeps keys and does not bootstrap again
    let status = s.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let s2 = serve(&data);
    assert!(s2.token.is_none(), "no second bootstrap");
    let (code, out, err) = cli(&s2.grpc, &admin, &["keys", "get", "release"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["key"]["primary_version"], 2);
    assert_eq!(json(&out)["key"]["versions"][0]["state"], "disabled");
}

/// `ron-kms ARGS` under a pseudo-terminal (`script` from util-linux), as a
/// person runs it: its output, with the terminal's `\r\n` made `\n`.
fn on_a_terminal(addr: &str, token: &str, args: &[&str]) -> String {
    let mut line = common::process::BIN.to_string();
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let out = std::process::Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env("KMS_ADDR", addr)
        .env("KMS_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script runs (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().replace("\r\n", "\n")
}

#[test]
fn people_get_a_short_form_on_a_terminal_and_scripts_get_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("data"));
    let admin = s.token.clone().unwrap();
    let create = ["keys", "create", "release", "--algorithm", "ml-dsa-87"];
    // through a pipe: JSON, with the whole public key, as before
    let (code, out, err) = cli(&s.grpc, &admin, &create, None);
    assert_eq!(code, 0, "{err}");
    let spki = json(&out)["key"]["versions"][0]["public_key_der"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(spki.len() > 3000, "the ML-DSA-87 SPKI in base64");

    // on a terminal: name, algorithm, versions and states, a fingerprint
    let shown = on_a_terminal(&s.grpc, &admin, &["keys", "get", "release"]);
    let der = base64_decode(&spki);
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let fp = format!("sha256:{}", &hex::encode(digest.as_ref())[..16]);
    assert!(
        shown.starts_with("release  ml-dsa-87 (sign), primary v1\n"),
        "{shown}"
    );
    assert!(
        shown.contains("  v1   enabled ") && shown.contains(&fp),
        "{shown}"
    );
    assert!(!shown.contains(&spki[..64]) && shown.len() < 200, "{shown}");
    let listed = on_a_terminal(&s.grpc, &admin, &["keys", "list"]);
    assert!(listed.starts_with("NAME "), "{listed}");
    assert!(listed.contains("release  ml-dsa-87"), "{listed}");
    // --output json on a terminal, --output table through a pipe
    let forced = on_a_terminal(
        &s.grpc,
        &admin,
        &["keys", "get", "release", "--output", "json"],
    );
    assert_eq!(json(forced.as_bytes())["key"]["name"], "release");
    let table = ["keys", "get", "release", "--output", "table"];
    let (code, out, _) = cli(&s.grpc, &admin, &table, None);
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8(out).unwrap(), shown);
    // `keys get --pem` is JSON with the PEM, on a terminal too
    let pem = on_a_terminal(&s.grpc, &admin, &["keys", "get", "release", "--pem"]);
    let v = json(pem.as_bytes());
    assert!(v["key"]["versions"][0]["public_key_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    // sign and verify on a terminal: the signature to copy, and the verdict
    let signed = on_a_terminal(
        &s.grpc,
        &admin,
        &["sign", "--key", "release", "--message", "v1"],
    );
    assert!(
        signed.starts_with("signed with release#v1 (ml-dsa-87), 4627 bytes:\n"),
        "{signed}"
    );
    let sig = signed.lines().nth(1).unwrap();
    let verify = [
        "verify",
        "--key",
        "release#v1",
        "--message",
        "v1",
        "--signature",
    ];
    let verdict = on_a_terminal(&s.grpc, &admin, &[&verify[..], &[sig]].concat());
    assert_eq!(verdict, "valid: release#v1 (ml-dsa-87, pq_only)\n");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// `sign --digest-file` hashes a file larger than the body cap on the
/// client (μ from the key's public key for ML-DSA, SHA-256 for ECDSA) and
/// sends only the digest; the signature verifies as an ordinary signature
/// over the file, outside ron-kms, and `verify --digest-file` agrees.
#[test]
fn digest_file_signs_a_large_file_without_sending_it() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("data"));
    let admin = s.token.clone().unwrap();
    let file = dir.path().join("artifact.bin");
    let body: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let f = file.to_str().unwrap();
    for alg in ["ml-dsa-65", "ecdsa-p256"] {
        let (code, out, err) = cli(
            &s.grpc,
            &admin,
            &["keys", "create", alg, "--algorithm", alg],
            None,
        );
        assert_eq!(code, 0, "{err}");
        let der = base64::engine::general_purpose::STANDARD
            .decode(
                json(&out)["key"]["versions"][0]["public_key_der"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let (code, out, err) = cli(
            &s.grpc,
            &admin,
            &["sign", "--key", alg, "--digest-file", f],
            None,
        );
        assert_eq!(code, 0, "{err}");
        let r = json(&out);
        assert_eq!(r["kid"], format!("{alg}#v1"));
        let sig = r["signature"].as_str().unwrap().to_string();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&sig)
            .unwrap();
        assert!(
            common::independent::verify(alg, &der, &body, &raw),
            "{alg}: an ordinary signature over the file"
        );
        let verify = |path: &str| {
            cli(
                &s.grpc,
                &admin,
                &[
                    "verify",
                    "--key",
                    &format!("{alg}#v1"),
                    "--signature",
                    &sig,
                    "--digest-file",
                    path,
                ],
                None,
            )
            .0
        };
        assert_eq!(verify(f), 0, "{alg}");
        let other = dir.path().join("other.bin");
        std::fs::write(&other, &body[1..]).unwrap();
        assert_eq!(verify(other.to_str().unwrap()), 1, "{alg}: another file");
    }
    let (code, _, _) = cli(
        &s.grpc,
        &admin,
        &["keys", "create", "ed", "--algorithm", "ed25519"],
        None,
    );
    assert_eq!(code, 0);
    let (code, _, err) = cli(
        &s.grpc,
        &admin,
        &["sign", "--key", "ed", "--digest-file", f],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sign whole messages"), "{err}");
}

/// `mac` of stdin and `verify-mac` under the kid it printed: exit 0 for
/// the tag, 1 for another message or another tag, 2 for a tag that is not
/// base64. (That the tags are HMACs is tests/mac.rs's job.)
#[test]
fn mac_and_verify_mac_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("data"));
    let admin = s.token.clone().unwrap();
    let (code, out, err) = cli(
        &s.grpc,
        &admin,
        &["keys", "create", "tags", "--algorithm", "hmac-sha512"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["key"]["purpose"], "mac");
    let (code, out, err) = cli(&s.grpc, &admin, &["mac", "--key", "tags"], Some(b"payload"));
    assert_eq!(code, 0, "{err}");
    let r = json(&out);
    assert_eq!(r["kid"], "tags#v1");
    let tag = r["mac"].as_str().unwrap().to_string();
    assert_eq!(base64_decode(&tag).len(), 64);
    let check = |message: &str, tag: &str| {
        let args = [
            "verify-mac",
            "--key",
            "tags#v1",
            "--mac",
            tag,
            "--message",
            message,
        ];
        cli(&s.grpc, &admin, &args, None)
    };
    let (code, out, _) = check("payload", &tag);
    assert_eq!((code, json(&out)["valid"].as_bool()), (0, Some(true)));
    assert_eq!(check("payloaD", &tag).0, 1, "another message");
    let mut other = base64_decode(&tag);
    other[0] ^= 1;
    use base64::Engine as _;
    let other = base64::engine::general_purpose::STANDARD.encode(other);
    assert_eq!(check("payload", &other).0, 1, "another tag");
    let (code, _, err) = check("payload", "%%%");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--mac is not valid base64"), "{err}");
}

/// `keys settings` and `keys delete`: the floor set from the command line
/// holds, a delete is refused until `--deletion-allowed true`, then the key
/// is gone. (That floors hold on every operation is tests/key_settings.rs's.)
#[test]
fn key_settings_and_delete_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("data"));
    let admin = s.token.clone().unwrap();
    let run = |args: &[&str]| cli(&s.grpc, &admin, args, None);
    assert_eq!(
        run(&["keys", "create", "old", "--algorithm", "ed25519"]).0,
        0
    );
    assert_eq!(run(&["keys", "rotate", "old"]).0, 0);
    let (code, out, err) = run(&["keys", "settings", "old", "--min-decryption-version", "2"]);
    assert_eq!(code, 0, "{err}");
    let k = &json(&out)["key"];
    assert_eq!(k["min_decryption_version"], 2);
    assert_eq!(k["deletion_allowed"], false);
    let (code, _, err) = run(&["keys", "delete", "old"]);
    assert_ne!(code, 0);
    assert!(err.contains("deletion_allowed"), "{err}");
    let (code, _, err) = run(&["keys", "settings", "old", "--deletion-allowed", "true"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["keys", "delete", "old"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["destroyed_versions"], 2);
    let (code, _, err) = run(&["keys", "get", "old"]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
}
