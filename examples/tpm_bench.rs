//! TPM ECDSA P-256 sign through ron-kms vs. directly through tss-esapi, in
//! the same run, on two swtpm instances started side by side (swtpm serves
//! one connection at a time, and ron-kms holds its own). Rounds alternate
//! direct / service / gRPC so machine noise hits all.
//!
//! - `direct load+sign`: one thread, one ESAPI context; each op is
//!   SHA-256 of the message, `TPM2_Load` of the key's blobs under the SRK,
//!   `TPM2_Sign`, `TPM2_FlushContext`, in a password session with an
//!   empty-authValue key — what the backend did per call before issue 30.
//! - `direct session`: the same on a key with a 32-byte authValue, loaded
//!   in a password session and signing in a salted HMAC session with
//!   AES-128-CFB parameter encryption — what the backend does per call now;
//!   the ratio to `direct load+sign` is what the session costs.
//! - `direct sign`: the same key kept loaded, `TPM2_Sign` only: the
//!   device's own ceiling.
//! - `service`: N requests in flight through the in-process service API
//!   (key lookup, policy, blocking-pool hop, the TPM queue, DER encoding,
//!   audit record) — no transport.
//! - `grpc`: the same over gRPC on loopback, for context.
//!
//! Needs swtpm and libtss2 (scripts/install-deps.sh --test installs them).
//!
//! ```sh
//! cargo run --release --example tpm_bench -- [seconds per run, default 3] [rounds, default 5]
//! ```
use std::str::FromStr;
use std::time::Instant;

use ron_kms::backend::tpm;
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, Digest, SignatureScheme};
use tss_esapi::{Context, TctiNameConf};

// The closed-loop signing load both custody benchmarks use.
#[path = "common/sign_load.rs"]
mod sign_load;

// The tests' throw-away swtpm: own state dir, two free loopback ports.
#[path = "../tests/common/swtpm.rs"]
#[allow(dead_code)]
mod swtpm;

const MSG: &[u8] = b"benchmark message";

/// An ESAPI context on `tcti` with an ECC P-256 SRK and one ECDSA key
/// created under it (blobs kept, not loaded).
struct Direct {
    ctx: Context,
    srk: tss_esapi::handles::KeyHandle,
    public: tss_esapi::structures::Public,
    private: tss_esapi::structures::Private,
    /// The salted, parameter-encrypting session, and a key with an
    /// authValue created in it.
    session: AuthSession,
    auth: Auth,
    auth_public: tss_esapi::structures::Public,
    auth_private: tss_esapi::structures::Private,
}

/// Session attributes: continue, and encrypt the command's first
/// parameter (`decrypt`) and/or the response's (`encrypt`).
fn attrs(ctx: &mut Context, s: AuthSession, decrypt: bool, encrypt: bool) {
    let (a, m) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .with_decrypt(decrypt)
        .with_encrypt(encrypt)
        .build();
    ctx.tr_sess_set_attributes(s, a, m).unwrap();
}

impl Direct {
    fn new(tcti: &str) -> Self {
        let mut ctx = Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap();
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        // the same templates the backend uses, so both sides do the same work
        let srk = ctx
            .create_primary(
                Hierarchy::Owner,
                tpm::srk_template().unwrap(),
                None,
                None,
                None,
                None,
            )
            .unwrap()
            .key_handle;
        let key_t = tpm::signing_key_template().unwrap();
        let k = ctx
            .create(srk, key_t.clone(), None, None, None, None)
            .unwrap();
        // the backend's own session: salted, parameters encrypted both ways
        let session = tpm::start_session(&mut ctx, srk).unwrap();
        let auth = Auth::try_from(vec![0x5a; 32]).unwrap();
        let a = ctx
            .execute_with_session(Some(session), |c| {
                c.create(srk, key_t, Some(auth.clone()), None, None, None)
            })
            .unwrap();
        Direct {
            ctx,
            srk,
            public: k.out_public,
            private: k.out_private,
            session,
            auth,
            auth_public: a.out_public,
            auth_private: a.out_private,
        }
    }

    /// Load, sign, flush per op in the session, for `secs`; ops/s.
    fn session_load_sign(&mut self, secs: f64) -> f64 {
        let (t, mut n) = (Instant::now(), 0u64);
        let s = self.session;
        while t.elapsed().as_secs_f64() < secs {
            let (srk, private, public, auth) = (
                self.srk,
                self.auth_private.clone(),
                self.auth_public.clone(),
                self.auth.clone(),
            );
            // as the backend does: load in a password session, sign in the
            // salted HMAC session
            let h = self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.load(srk, private, public)
                })
                .unwrap();
            self.ctx.execute_with_session(Some(s), |c| {
                attrs(c, s, true, false);
                c.tr_set_auth(h.into(), auth).unwrap();
                sign_once(c, h);
                c.flush_context(h.into()).unwrap();
            });
            n += 1;
        }
        n as f64 / t.elapsed().as_secs_f64()
    }

    /// Load, sign, flush per op for `secs`; ops/s.
    fn load_sign(&mut self, secs: f64) -> f64 {
        let (t, mut n) = (Instant::now(), 0u64);
        while t.elapsed().as_secs_f64() < secs {
            let h = self
                .ctx
                .load(self.srk, self.private.clone(), self.public.clone())
                .unwrap();
            sign_once(&mut self.ctx, h);
            self.ctx.flush_context(h.into()).unwrap();
            n += 1;
        }
        n as f64 / t.elapsed().as_secs_f64()
    }

    /// Sign with the key kept loaded for `secs`; ops/s.
    fn sign_only(&mut self, secs: f64) -> f64 {
        let h = self
            .ctx
            .load(self.srk, self.private.clone(), self.public.clone())
            .unwrap();
        let (t, mut n) = (Instant::now(), 0u64);
        while t.elapsed().as_secs_f64() < secs {
            sign_once(&mut self.ctx, h);
            n += 1;
        }
        let r = n as f64 / t.elapsed().as_secs_f64();
        self.ctx.flush_context(h.into()).unwrap();
        r
    }
}

/// One ECDSA signature over SHA-256(MSG) with the loaded key `h`.
fn sign_once(ctx: &mut Context, h: KeyHandle) {
    let digest = ring::digest::digest(&ring::digest::SHA256, MSG);
    let digest = Digest::try_from(digest.as_ref().to_vec()).unwrap();
    ctx.sign(
        h,
        digest,
        SignatureScheme::Null,
        tpm::null_ticket().unwrap(),
    )
    .unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let (secs, rounds, dir) = sign_load::args_and_dir("tpm");
    let tpm_direct = swtpm::Swtpm::start(&dir.join("tpm-direct"));
    let tpm_service = swtpm::Swtpm::start(&dir.join("tpm-service"));
    let mut direct = Direct::new(&tpm_direct.tcti());

    let rt = sign_load::runtime();
    let mut cfg = sign_load::bench_config(&dir.join("data"));
    cfg.backend = tpm_service.backend();
    let served = sign_load::start_with_p256(&rt, &cfg);

    let service = |inflight: usize| sign_load::service(&served, &rt, MSG, inflight, secs);
    let grpc = |inflight: usize| sign_load::grpc(&served, &rt, MSG, inflight, secs);

    // warm-up
    direct.load_sign(0.5);
    service(1);

    sign_load::print_header("tpm ECDSA P-256 sign, swtpm", &cfg, secs, rounds);
    let (mut r1, mut r4, mut rg, mut raw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rs = Vec::new();
    for round in 0..rounds {
        let d = direct.load_sign(secs);
        let ds = direct.session_load_sign(secs);
        let d_raw = direct.sign_only(secs);
        let s1 = service(1);
        let s4 = service(4);
        let g4 = grpc(4);
        println!(
            "round {round}: direct load+sign {d:.0} ops/s (sign only {d_raw:.0}); direct session {ds:.0} ({:.2} of password); service 1 in flight {s1:.0} ({:.2} of direct session), 4 in flight {s4:.0} ({:.2}); grpc 4 in flight {g4:.0} ({:.2})",
            ds / d,
            s1 / ds,
            s4 / ds,
            g4 / ds
        );
        r1.push(s1 / ds);
        r4.push(s4 / ds);
        rg.push(g4 / ds);
        raw.push(d / d_raw);
        rs.push(ds / d);
    }
    println!(
        "median service/direct session: 1 in flight {:.2}, 4 in flight {:.2}; grpc/direct session {:.2}; direct session / direct password {:.2}; direct load+sign / sign-only {:.2}",
        median(r1),
        median(r4),
        median(rg),
        median(rs),
        median(raw)
    );
    rt.block_on(served.running.shutdown());
    drop(direct);
    let _ = std::fs::remove_dir_all(&dir);
}
