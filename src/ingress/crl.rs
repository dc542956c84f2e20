//! A client-certificate verifier that follows a file as it changes: the CRL
//! file (`KMS_TLS_CLIENT_CRL_FILE`) is re-read, without a restart, when its
//! modification time, length, inode or device changes.
//!
//! [`ReloadingVerifier`] implements rustls' `ClientCertVerifier` by handing
//! each call to the verifier currently in force, held in an [`ArcSwap`] (a
//! handshake takes no lock). [`ReloadingVerifier::watch`] builds the first
//! verifier with the caller's `build` function (an error there is a start
//! error) and starts a thread that looks at the file every `period`; on a
//! change it calls `build` again and swaps the result in. A file that no
//! longer loads (unreadable, malformed, badly signed) keeps the previous
//! verifier in force: a warning naming the file is logged and the attempt is
//! counted in `kms_tls_crl_reload_total{result="error"}`; successful reloads
//! in `{result="ok"}`. The next change of the file is tried again.
//!
//! The thread holds only a weak reference: it ends within one period once
//! the verifier (and so every server config using it) is dropped.
//!
//! This module knows nothing of CRLs or PEM; `build` (in
//! [`crate::ingress::tls`]) does, and names the file in its errors.
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

/// How often the CRL file is looked at.
pub const POLL_PERIOD: Duration = Duration::from_millis(500);

/// Builds the verifier from the file's current contents; the error says
/// what is wrong with the file (never its contents).
pub type Build = Box<dyn Fn() -> Result<Arc<dyn ClientCertVerifier>, String> + Send + 'static>;

/// What identifies one version of the file: (mtime s, mtime ns, length,
/// inode, device). `None`: the file could not be looked at.
type Stamp = Option<(i64, i64, u64, u64, u64)>;

fn stamp_of(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.len(), m.ino(), m.dev()))
}

/// The client-certificate verifier in force, replaced when the watched
/// file changes.
#[derive(Debug)]
pub struct ReloadingVerifier {
    current: ArcSwap<Arc<dyn ClientCertVerifier>>,
    /// The CA subjects hinted to clients: they come from the CA bundle,
    /// which is read once, so every verifier built has the same.
    hints: Vec<DistinguishedName>,
}

impl ReloadingVerifier {
    /// Build the first verifier and watch `path`: every `period`, a
    /// changed file is loaded with `build` and, when that succeeds, put in
    /// force. The error is the first `build`'s, or the thread's.
    pub fn watch(
        path: PathBuf,
        build: Build,
        period: Duration,
    ) -> Result<Arc<ReloadingVerifier>, String> {
        // The stamp before the read: a change during the read is seen at
        // the next look.
        let stamp = stamp_of(&path);
        let first = build()?;
        let me = Arc::new(ReloadingVerifier {
            hints: first.root_hint_subjects().to_vec(),
            current: ArcSwap::from_pointee(first),
        });
        let weak = Arc::downgrade(&me);
        std::thread::Builder::new()
            .name("kms-crl-reload".into())
            .spawn(move || poll(weak, path, build, period, stamp))
            .map_err(|e| format!("cannot start the thread that reloads it: {e}"))?;
        Ok(me)
    }

    /// The verifier in force now.
    fn now(&self) -> arc_swap::Guard<Arc<Arc<dyn ClientCertVerifier>>> {
        self.current.load()
    }
}

fn poll(
    weak: Weak<ReloadingVerifier>,
    path: PathBuf,
    build: Build,
    period: Duration,
    mut last: Stamp,
) {
    let file = path.display().to_string();
    loop {
        std::thread::sleep(period);
        let Some(me) = weak.upgrade() else {
            return;
        };
        let stamp = stamp_of(&path);
        if stamp == last {
            continue;
        }
        last = stamp;
        if stamp.is_none() {
            // Gone or unreadable: say so once; the reload is counted when
            // the file is back.
            tracing::warn!(
                %file,
                "TLS client CRL file cannot be read; the CRLs loaded before stay in force"
            );
            continue;
        }
        match build() {
            Ok(v) => {
                me.current.store(Arc::new(v));
                metrics::counter!("kms_tls_crl_reload_total", "result" => "ok").increment(1);
                tracing::info!(%file, "TLS client CRL file reloaded");
            }
            Err(error) => {
                metrics::counter!("kms_tls_crl_reload_total", "result" => "error").increment(1);
                tracing::warn!(
                    %file,
                    %error,
                    "TLS client CRL file not reloaded; the CRLs loaded before stay in force"
                );
            }
        }
    }
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.now().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.now().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.now()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.now().supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.now().requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in verifier that says which version of the file it is.
    #[derive(Debug)]
    struct Version(usize);

    impl ClientCertVerifier for Version {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            &[]
        }
        fn verify_client_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            Err(rustls::Error::General(format!("version {}", self.0)))
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("unused".into()))
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("unused".into()))
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![]
        }
    }

    /// The version of the file the verifier in force was built from.
    fn in_force(v: &ReloadingVerifier) -> String {
        let der = CertificateDer::from(vec![]);
        match v.verify_client_cert(&der, &[], UnixTime::now()) {
            Err(rustls::Error::General(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    /// `build` that reads a number from the file (anything else is an
    /// error), counting its calls in `calls`.
    fn numbered(path: &Path, calls: Arc<AtomicUsize>) -> Build {
        let path = path.to_path_buf();
        Box::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            let n = text
                .trim()
                .parse()
                .map_err(|_| "not a number".to_string())?;
            Ok(Arc::new(Version(n)) as Arc<dyn ClientCertVerifier>)
        })
    }

    fn replace(path: &Path, body: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < until, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn follows_the_file_and_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl");
        std::fs::write(&path, "1").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let period = Duration::from_millis(20);
        let v =
            ReloadingVerifier::watch(path.clone(), numbered(&path, calls.clone()), period).unwrap();
        assert_eq!(in_force(&v), "version 1");

        replace(&path, "2");
        wait_for("version 2", || in_force(&v) == "version 2");

        // A file that does not load keeps version 2, and is tried once.
        let before = calls.load(Ordering::SeqCst);
        replace(&path, "garbage");
        wait_for("the bad file tried", || {
            calls.load(Ordering::SeqCst) > before
        });
        std::thread::sleep(period * 5);
        assert_eq!(calls.load(Ordering::SeqCst), before + 1);
        assert_eq!(in_force(&v), "version 2");

        // Gone: still version 2, not rebuilt; back: loaded.
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(period * 5);
        assert_eq!(in_force(&v), "version 2");
        assert_eq!(calls.load(Ordering::SeqCst), before + 1);
        replace(&path, "3");
        wait_for("version 3", || in_force(&v) == "version 3");

        // Unchanged: not read again.
        let settled = calls.load(Ordering::SeqCst);
        std::thread::sleep(period * 5);
        assert_eq!(calls.load(Ordering::SeqCst), settled);
    }

    #[test]
    fn a_bad_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl");
        std::fs::write(&path, "garbage").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let err = ReloadingVerifier::watch(path.clone(), numbered(&path, calls), POLL_PERIOD)
            .unwrap_err();
        assert_eq!(err, "not a number");
    }

    #[test]
    fn the_watcher_ends_with_the_verifier() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl");
        std::fs::write(&path, "1").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let v = ReloadingVerifier::watch(
            path.clone(),
            numbered(&path, calls.clone()),
            Duration::from_millis(20),
        )
        .unwrap();
        assert_eq!(Arc::strong_count(&calls), 2, "the thread holds `build`");
        drop(v);
        // The thread drops `build` (and its clone of `calls`) as it ends.
        wait_for("the thread to end", || Arc::strong_count(&calls) == 1);
    }
}
