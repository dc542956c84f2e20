//! The PKCS#11 yardstick: the service's own token key, signed directly
//! through cryptoki with no service around it (`run --backend pkcs11
//! --yardstick`). It opens the same module and token in this process, finds
//! the one private key the run created (the service's key object, by
//! class, key type and its label `ron-kms/TENANT/bench-ALG#v1`), and signs with as many
//! threads as the service has pooled sessions, each on a logged-in session
//! of its own: what the token itself can do on this machine, measured the
//! way a run is (warm-up, then a window of latencies in an HDR histogram
//! and this process's CPU).
use std::path::Path;
use std::sync::Arc;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::*;
use stats::{Figures, Tally};

/// The token and key the service signs with.
pub(crate) struct Direct {
    ctx: Pkcs11,
    slot: Slot,
    alg: Algorithm,
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = self.ctx.clone().finalize();
    }
}

impl Direct {
    /// Load `module`, find the token labelled `token`, and log in with `pin`
    /// (on a session that stays open, so every later session is logged in).
    pub(crate) fn open(
        module: &Path,
        token: &str,
        pin: &str,
        alg: Algorithm,
    ) -> Result<Direct, String> {
        let ctx = Pkcs11::new(module).map_err(|e| format!("load {}: {e}", module.display()))?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| format!("C_Initialize: {e}"))?;
        let slot = ctx
            .get_slots_with_initialized_token()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == token)
            })
            .ok_or_else(|| format!("no token labelled {token}"))?;
        let d = Direct { ctx, slot, alg };
        let s = d.ctx.open_ro_session(d.slot).map_err(|e| e.to_string())?;
        s.login(UserType::User, Some(&AuthPin::new(pin.into())))
            .map_err(|e| format!("C_Login: {e}"))?;
        // the login holds for the application while any session is open
        std::mem::forget(s);
        Ok(d)
    }

    /// The service's private key of this run's algorithm (exactly one).
    fn key(&self, s: &cryptoki::session::Session) -> Result<ObjectHandle, String> {
        let key_type = match self.alg {
            Algorithm::EcdsaP256 => KeyType::EC,
            Algorithm::Ed25519 => KeyType::EC_EDWARDS,
            other => return Err(format!("{} is not a token signing key", other.as_str())),
        };
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(key_type),
            ])
            .map_err(|e| e.to_string())?;
        let mut ours = Vec::new();
        for h in found {
            let label = s
                .get_attributes(h, &[AttributeType::Label])
                .map_err(|e| e.to_string())?;
            // the bench's key (`bench-ALG`, version 1) in the caller's
            // tenant; the audit log's own keys are in `_system`
            let wanted = format!("/bench-{}#v1", self.alg.as_str());
            if matches!(label.first(), Some(Attribute::Label(l))
                if l.starts_with(b"ron-kms/")
                    && !l.starts_with(b"ron-kms/_system/")
                    && l.ends_with(wanted.as_bytes()))
            {
                ours.push(h);
            }
        }
        match ours.as_slice() {
            [h] => Ok(*h),
            other => Err(format!(
                "expected one ron-kms private key on the token, found {}",
                other.len()
            )),
        }
    }

    /// One signature over `message`, as the service makes it: ECDSA over
    /// the SHA-256 computed here (`CKM_ECDSA`), Ed25519 pure (`CKM_EDDSA`).
    fn sign(
        &self,
        s: &cryptoki::session::Session,
        key: ObjectHandle,
        message: &[u8],
    ) -> Result<Vec<u8>, String> {
        let r = match self.alg {
            Algorithm::EcdsaP256 => {
                let digest = ring::digest::digest(&ring::digest::SHA256, message);
                s.sign(&Mechanism::Ecdsa, key, digest.as_ref())
            }
            _ => s.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                key,
                message,
            ),
        };
        r.map_err(|e| e.to_string())
    }

    /// `threads` threads, each on its own session, signing `items`
    /// messages of `a.size` bytes per "request" back to back through the
    /// warm-up and the measured window: the window's figures, with this
    /// process's CPU as the server CPU.
    pub(crate) fn measure(
        self: &Arc<Self>,
        a: &RunArgs,
        threads: usize,
        items: usize,
    ) -> Result<RunReport, String> {
        let warmup = Duration::from_secs_f64(a.warmup);
        let duration = Duration::from_secs_f64(a.duration);
        let start = Instant::now() + Duration::from_millis(50);
        let (measure_from, end) = (start + warmup, start + warmup + duration);
        let msg = vec![0x5a; a.size];
        let (tallies, cpu): (Vec<Result<Tally, String>>, f64) = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let (me, msg) = (self.clone(), &msg);
                    sc.spawn(move || -> Result<Tally, String> {
                        let s = me.ctx.open_ro_session(me.slot).map_err(|e| e.to_string())?;
                        let key = me.key(&s)?;
                        let mut t = Tally::new();
                        while Instant::now() < start {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        loop {
                            let t0 = Instant::now();
                            if t0 >= end {
                                break;
                            }
                            for _ in 0..items {
                                me.sign(&s, key, msg)?;
                            }
                            if t0 >= measure_from {
                                let us = t0.elapsed().as_micros() as u64;
                                let ok = stats::Items {
                                    ok: items as u64,
                                    failed: Vec::new(),
                                };
                                t.record(us, Ok(ok), items as u64);
                            }
                        }
                        Ok(t)
                    })
                })
                .collect();
            // this process's CPU over the window (the load generator idles)
            while Instant::now() < measure_from {
                std::thread::sleep(Duration::from_millis(5));
            }
            let c0 = proc_sample(std::process::id()).unwrap_or_default();
            let t0 = Instant::now();
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            let c1 = proc_sample(std::process::id()).unwrap_or_default();
            let cpu = (c1.cpu_seconds - c0.cpu_seconds) / t0.elapsed().as_secs_f64();
            let results = hs
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a direct thread panicked".into()))
                })
                .collect();
            (results, cpu)
        });
        let mut total = Tally::new();
        for t in tallies {
            total.merge(t?);
        }
        let secs = duration.as_secs_f64();
        let part = PartReport::of("direct", &total, secs);
        let figures: Figures = part.figures;
        let ops = figures.ops_per_sec;
        Ok(RunReport {
            server: "direct".into(),
            transport: "pkcs11".into(),
            op: "sign".into(),
            alg: self.alg.as_str().into(),
            mode: "closed".into(),
            concurrency: threads,
            batch: items,
            keys: 1,
            connections: threads,
            rate: None,
            audit: false,
            seconds: secs,
            figures,
            server_cpu_cores: cpu,
            server_cpu_us_per_op: if ops > 0.0 { cpu * 1e6 / ops } else { 0.0 },
            client_cpu_cores: 0.0,
            server_peak_rss_mib: 0.0,
            parts: Vec::new(),
            tenant_p95_skew: None,
        })
    }
}
