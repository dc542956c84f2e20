//! Running the real `ron-kms` binary: `serve` with its stdout parsed for
//! the bootstrap token and bound addresses, and one-shot client commands.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_ron-kms");

pub struct Served {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    pub token: Option<String>,
}

impl Served {
    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(data: &Path) -> Served {
    serve_with(&["--data-dir".as_ref(), data.as_os_str()], &[], None)
}

/// `ron-kms serve` on ephemeral ports with extra arguments, environment and
/// working directory.
pub fn serve_with(
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
    cwd: Option<&Path>,
) -> Served {
    serve_logged(args, envs, cwd, Stdio::null())
}

/// As [`serve_with`], with the server's stderr (its logs) sent to `stderr`.
pub fn serve_logged(
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
    cwd: Option<&Path>,
    stderr: Stdio,
) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ])
    .args(args)
    .env("KMS_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(stderr);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().unwrap();
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
        // the default: the token is in a 0600 file the banner names
        [banner] if banner.starts_with("bootstrap:") => {
            let path = banner
                .split(" token in ")
                .nth(1)
                .and_then(|r| r.split(" (mode 0600").next())
                .unwrap_or_else(|| panic!("no file in the banner: {banner}"));
            Some(std::fs::read_to_string(path).unwrap().trim().to_string())
        }
        other => panic!("unexpected stdout before the address line: {other:?}"),
    };
    Served {
        child,
        grpc: format!("http://{grpc}"),
        http,
        token,
    }
}

pub fn http_get(addr: &str, path: &str) -> String {
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

pub fn cli(addr: &str, token: &str, args: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
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

/// `ron-kms tokens create` against `data` (the store a running server
/// shares): the token it printed, the only thing on its stdout.
pub fn create_token(data: &Path, tenant: &str, scopes: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "tokens",
            "create",
            "--tenant",
            tenant,
            "--scopes",
            scopes,
            "--data-dir",
        ])
        .arg(data)
        .output()
        .unwrap();
    succeeded(out).trim().to_string()
}

/// A command's stdout, after asserting it exited 0 (its stderr otherwise).
pub fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ron-kms audit verify DIR`: whether it passed, and what it printed.
pub fn audit_verify(dir: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
