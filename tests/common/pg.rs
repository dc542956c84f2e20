//! A throw-away PostgreSQL cluster for one test binary: `initdb` into a
//! temp dir, `postgres` on a free loopback port, trust auth for the user
//! `kms`, removed on drop. The server binaries come from Debian's
//! `postgresql` package (`scripts/install-deps.sh --test` installs it); a
//! missing install fails the test, it never skips it.
//!
//! PostgreSQL refuses to run as root, so under root (CI) the cluster runs as
//! the `postgres` user the Debian package creates.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pg {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    pub port: u16,
    running: bool,
    /// Extra `-c` settings (TLS).
    extra: String,
}

fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("KMS_TEST_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin \
         (install Debian's postgresql: scripts/install-deps.sh --test, or set KMS_TEST_PG_BIN)",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// The blocking `postgres` client cannot run on a tokio worker (async
/// tests call these helpers): run `f` on a thread of its own.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pg {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A cluster that accepts TCP connections over TLS only (`hostssl`),
    /// with the server certificate and key of `pki` (for localhost and
    /// 127.0.0.1). Local-socket connections (the helper's own) stay plain.
    pub fn start_tls(pki: &super::certs::Pki) -> Self {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&super::certs::Pki>) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pgdata");
        if is_root() {
            let out = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(out.success(), "chown of the cluster dir failed");
        }
        let out = pg_command(&bin, "initdb")
            .args(["-A", "trust", "-U", "kms", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut extra = String::new();
        if let Some(pki) = pki {
            // the server's key must be owned by the server's user, 0600
            let (crt, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&crt, &pki.server_cert_pem).unwrap();
            std::fs::write(&key, &pki.server_key_pem).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                for f in [&crt, &key] {
                    assert!(Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(f)
                        .status()
                        .unwrap()
                        .success());
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
            extra = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                crt.display(),
                key.display()
            );
        }
        let mut pg = Pg {
            _dir: dir,
            data,
            bin,
            port: free_port(),
            running: false,
            extra,
        };
        pg.resume();
        pg
    }

    /// Start (again) on the same port and data.
    pub fn resume(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200{}",
            self.port,
            self.data.display(),
            self.extra
        );
        let out = pg_command(&self.bin, "pg_ctl")
            .args(["-w", "-t", "30", "-D"])
            .arg(&self.data)
            .args(["-o", &opts, "-l"])
            .arg(self.data.join("server.log"))
            .arg("start")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
        );
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = self.socket_url("postgres");
        while off_runtime(|| postgres::Client::connect(&url, postgres::NoTls).is_err()) {
            assert!(Instant::now() < deadline, "PostgreSQL did not accept");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop at once (`-m immediate`: like a crash, no clean shutdown).
    pub fn kill(&mut self) {
        let out = pg_command(&self.bin, "pg_ctl")
            .args(["-w", "-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://kms@127.0.0.1:{}/{db}", self.port)
    }

    /// The local socket (in the data dir), for the helper's own use.
    fn socket_url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=kms dbname={db}",
            self.data.display(),
            self.port
        )
    }

    /// A new, empty database; its TCP URL.
    pub fn fresh_db(&self, name: &str) -> String {
        let url = self.socket_url("postgres");
        off_runtime(|| {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        });
        self.url(name)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_command(&self.bin, "pg_ctl")
                .args(["-D"])
                .arg(&self.data)
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
