//! The `ron-kms` binary as a user runs it: `serve` bootstraps and prints an
//! admin token once, the client commands talk gRPC to it, `tokens create`
//! adds a token the running server accepts, SIGTERM stops it cleanly, and a
//! restart keeps everything.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ron-kms");

struct Served {
    child: Child,
    grpc: String,
    http: String,
    token: Option<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path) -> Served {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("KMS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // stdout: the bootstrap banner (first start only: a line, then the
    // token), then "ron-kms X serving gRPC on A and HTTP on B (data dir D)".
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let (mut grpc, mut http) = (String::new(), String::new());
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split(" serving gRPC on ").nth(1) {
            let mut parts = rest.split_whitespace();
            grpc = parts.next().unwrap().to_string();
            http = parts.nth(3).unwrap().to_string();
            break;
        }
        lines.push(line);
    }
    assert!(
        !grpc.is_empty(),
        "server did not report its addresses; stdout: {lines:?}"
    );
    let token = match lines.as_slice() {
        [] => None,
        [banner, token] if banner.starts_with("bootstrap:") => Some(token.trim().to_string()),
        other => panic!("unexpected stdout before the address line: {other:?}"),
    };
    Served {
        child,
        grpc: format!("http://{grpc}"),
        http,
        token,
    }
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn cli(addr: &str, token: &str, args: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("KMS_ADDR", addr)
        .env("KMS_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut i = child.stdin.take().unwrap();
        if let Some(b) = stdin {
            i.write_all(b).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    let (code, _, _) = cli(
        &s.grpc,
        &admin,
        &[
            "verify",
            "--key",
            "release#v1",
            "--signature",
            &sig,
            "--message",
            "v1.2.3",
        ],
        None,
    );
    assert_eq!(code, 0, "valid signature exits 0");
    let (code, out, _) = cli(
        &s.grpc,
        &admin,
        &[
            "verify",
            "--key",
            "release#v1",
            "--signature",
            &sig,
            "--message",
            "v1.2.4",
        ],
        None,
    );
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
    let (code, _, err) = cli(
        &s.grpc,
        &admin,
        &[
            "verify",
            "--key",
            "release#v1",
            "--signature",
            &sig,
            "--message",
            "v1.2.3",
        ],
        None,
    );
    assert_eq!(code, 2, "a disabled version is an error, not a verdict");
    assert!(
        err.contains("FailedPrecondition")
            || err.contains("failed precondition")
            || err.contains("disabled"),
        "{err}"
    );

    // a token made by `tokens create` while the server runs is accepted
    let out = Command::new(BIN)
        .args([
            "tokens",
            "create",
            "--tenant",
            "ci",
            "--scopes",
            "kms:admin,kms:read",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ci = String::from_utf8(out.stdout).unwrap().trim().to_string();
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
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut s = s;
    let status = s.child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    drop(s);
    let s2 = serve(&data);
    assert!(s2.token.is_none(), "no second bootstrap");
    let (code, out, err) = cli(&s2.grpc, &admin, &["keys", "get", "release"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["key"]["primary_version"], 2);
    assert_eq!(json(&out)["key"]["versions"][0]["state"], "disabled");
}
