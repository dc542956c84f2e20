//! PKCS#11 ECDSA P-256 sign through ron-kms vs. directly through cryptoki,
//! on the same SoftHSM2 token, in the same run, at equal concurrency (1 and
//! 2). Rounds alternate direct / service / gRPC so machine noise hits all.
//!
//! - `direct`: N threads, each with its own logged-in session, each op
//!   SHA-256 of the message + `C_Sign(CKM_ECDSA)` (what the backend does).
//! - `service`: N requests in flight through the in-process service API
//!   (`KmsService::sign`: key lookup, policy, blocking-pool hop, session
//!   pool, DER encoding, audit record with group commit) — no transport.
//! - `grpc`: the same over gRPC on loopback (client and server share the
//!   machine's cores), for context.
//!
//! Needs softhsm2 (scripts/install-deps.sh installs it).
//!
//! ```sh
//! cargo run --release --example pkcs11_bench -- [seconds per run, default 3] [rounds, default 5]
//! ```
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use ron_kms::config::{BackendKind, PassphraseSource, Pkcs11Config};

// The tests' throw-away SoftHSM2 token: temp dir, own SOFTHSM2_CONF,
// softhsm2-util --init-token, a 0600 PIN file.
// The closed-loop signing load both custody benchmarks use.
#[path = "common/sign_load.rs"]
mod sign_load;

#[path = "../tests/common/softhsm.rs"]
#[allow(dead_code)]
mod softhsm;

use softhsm::{module, SoftHsm, PIN};

const LABEL: &str = "ron-kms-bench";
const MSG: &[u8] = b"benchmark message";

/// Direct cryptoki: `threads` threads signing for `secs`; ops/s.
fn direct(ctx: &Pkcs11, slot: cryptoki::slot::Slot, threads: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    for t in 0..threads {
        let (ctx, stop, done) = (ctx.clone(), stop.clone(), done.clone());
        hs.push(std::thread::spawn(move || {
            let s = ctx.open_rw_session(slot).unwrap();
            match s.login(UserType::User, Some(&AuthPin::new(PIN.into()))) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => panic!("login: {e}"),
            }
            let id = format!("direct-{t}").into_bytes();
            let (_, key) = s
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Id(id.clone()),
                        Attribute::Verify(true),
                        Attribute::EcParams(vec![
                            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                        ]),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Id(id),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Sign(true),
                    ],
                )
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let d = ring::digest::digest(&ring::digest::SHA256, MSG);
                let sig = s.sign(&Mechanism::Ecdsa, key, d.as_ref()).unwrap();
                assert_eq!(sig.len(), 64);
                n += 1;
            }
            done.fetch_add(n, Ordering::Relaxed);
        }));
    }
    // keys are generated before the clock starts: give threads a moment
    std::thread::sleep(Duration::from_millis(100));
    let before = done.load(Ordering::Relaxed);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    (done.load(Ordering::Relaxed) - before) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let (secs, rounds, dir) = sign_load::args_and_dir("pkcs11");
    let hsm = SoftHsm::new(&dir, LABEL);
    // read by the module when it is loaded, before any thread starts
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);

    let rt = sign_load::runtime();
    let mut cfg = sign_load::bench_config(&dir.join("data"));
    cfg.backend = BackendKind::Pkcs11(Pkcs11Config {
        module: module(),
        token_label: LABEL.into(),
        pin: PassphraseSource::File(hsm.pin_file.clone()),
        pool_size: 4,
    });
    let served = sign_load::start_with_p256(&rt, &cfg);

    // the direct client: the module is already initialised in this process
    let ctx = Pkcs11::new(module()).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == LABEL)
        .unwrap();

    let service = |inflight: usize| sign_load::service(&served, &rt, MSG, inflight, secs);
    let grpc = |inflight: usize| sign_load::grpc(&served, &rt, MSG, inflight, secs);

    // warm-up
    direct(&ctx, slot, 1, 0.5);
    service(1);

    sign_load::print_header("pkcs11 ECDSA P-256 sign, SoftHSM2", &cfg, secs, rounds);
    for conc in [1usize, 2] {
        let mut ratios = Vec::new();
        let mut grpc_ratios = Vec::new();
        for round in 0..rounds {
            let d = direct(&ctx, slot, conc, secs);
            let s = service(conc);
            let g = grpc(conc);
            println!(
                "concurrency {conc} round {round}: direct {d:.0} ops/s, service {s:.0} ops/s ({:.2}), grpc {g:.0} ops/s ({:.2})",
                s / d,
                g / d
            );
            ratios.push(s / d);
            grpc_ratios.push(g / d);
        }
        ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
        grpc_ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "concurrency {conc}: median service/direct {:.2} (min {:.2}, max {:.2}); median grpc/direct {:.2}",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
            grpc_ratios[grpc_ratios.len() / 2]
        );
    }
    rt.block_on(served.running.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}
