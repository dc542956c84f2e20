//! A throw-away TPM 2.0 for one test: `swtpm` (Debian `swtpm`) on two free
//! consecutive loopback ports with its own state dir, which it keeps across a kill and
//! restart. `scripts/install-deps.sh --test` installs it.
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Swtpm {
    pub state: PathBuf,
    pub port: u16,
    pub ctrl_port: u16,
    child: Option<Child>,
}

/// Two consecutive free ports, P and P+1: the swtpm TCTI always finds the
/// control channel at the server port plus one. Free when checked, and very
/// likely for the next few milliseconds.
fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

impl Swtpm {
    /// A fresh TPM whose state lives under `dir`.
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port_pair();
        let mut t = Swtpm {
            state: dir.to_path_buf(),
            port,
            ctrl_port: port + 1,
            child: None,
        };
        t.spawn();
        t
    }

    /// A TPM manufactured by `swtpm_setup` with an EK certificate issued by
    /// a local CA of its own under `dir/ca` (swtpm-localca: a root and an
    /// intermediate that signs the EK certificates). Returns the TPM and
    /// the PEM file of the CA's two certificates.
    pub fn start_certified(dir: &Path) -> (Self, PathBuf) {
        let (state, ca) = (dir.join("state"), dir.join("ca"));
        for d in [&state, &ca] {
            std::fs::create_dir_all(d).unwrap();
        }
        let localca = dir.join("swtpm-localca.conf");
        std::fs::write(
            &localca,
            format!(
                "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
                ca.display()
            ),
        )
        .unwrap();
        let setup = dir.join("swtpm_setup.conf");
        std::fs::write(
            &setup,
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                localca.display()
            ),
        )
        .unwrap();
        let out = Command::new("swtpm_setup")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(&state)
            .arg("--create-ek-cert")
            .arg("--config")
            .arg(&setup)
            .output()
            .expect("swtpm_setup runs (swtpm-tools: scripts/install-deps.sh --test)");
        assert!(
            out.status.success(),
            "swtpm_setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let chain = dir.join("ek-ca.pem");
        let mut pem = std::fs::read(ca.join("issuercert.pem")).unwrap();
        pem.extend(std::fs::read(ca.join("swtpm-localca-rootca-cert.pem")).unwrap());
        std::fs::write(&chain, pem).unwrap();
        let port = free_port_pair();
        let mut t = Swtpm {
            state,
            port,
            ctrl_port: port + 1,
            child: None,
        };
        t.spawn();
        (t, chain)
    }

    fn spawn(&mut self) {
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", self.state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.ctrl_port
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm runs (install swtpm: scripts/install-deps.sh --test)");
        self.child = Some(child);
        // ready when the control port accepts (both ports open together)
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.ctrl_port)).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("swtpm exited at start: {st}");
            }
            assert!(Instant::now() < deadline, "swtpm did not open its ports");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCTI string ron-kms takes (`KMS_TPM_TCTI`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// SIGKILL: the TPM goes away mid-command, as a crashed device would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same state dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The backend part of an in-process [`ron_kms::config::Config`].
    pub fn backend(&self) -> ron_kms::config::BackendKind {
        self.backend_with(|_| {})
    }

    /// The TPM backend itself, on this TPM with the default settings and
    /// no pin (for tests of the `Backend` trait without a server).
    pub fn open_backend(&self) -> ron_kms::backend::tpm::TpmBackend {
        ron_kms::backend::tpm::TpmBackend::open(
            ron_kms::backend::tpm::TpmSettings {
                tcti: self.tcti(),
                queue_depth: ron_kms::backend::tpm::DEFAULT_QUEUE_DEPTH,
                ek_ca_file: None,
                seal_pcrs: None,
                attestation: Default::default(),
            },
            std::sync::Arc::new(ron_kms::crypto::Provider::default()),
            None,
        )
        .unwrap()
    }

    /// [`Self::backend`] adjusted by `f`.
    pub fn backend_with(
        &self,
        f: impl FnOnce(&mut ron_kms::config::TpmConfig),
    ) -> ron_kms::config::BackendKind {
        let mut t = ron_kms::config::TpmConfig {
            tcti: self.tcti(),
            queue_depth: ron_kms::backend::tpm::DEFAULT_QUEUE_DEPTH,
            ek_ca_file: None,
            seal_pcrs: None,
            attestation: Default::default(),
            attestation_required: false,
            attestation_interval: Duration::from_secs(60),
        };
        f(&mut t);
        ron_kms::config::BackendKind::Tpm(t)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}
