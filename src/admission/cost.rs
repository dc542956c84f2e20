//! The cost table: what one request weighs in an op's gate and a tenant's
//! token bucket.
//!
//! One unit is about 25 µs of CPU on the reference host (2 cores). A row's
//! units are `round(µs / 25)`, at least 1, from these single-core figures
//! measured on that host:
//!
//! | operation                         | ops/s  | µs   |
//! |-----------------------------------|--------|------|
//! | Ed25519 sign / verify (ring)      | 43k / 22k | 23 / 45 |
//! | ECDSA P-256 sign / verify (ring)  | 60k / 19k | 17 / 53 |
//! | ML-DSA-44 sign (liboqs)           | 16.9k  | 59   |
//! | ML-DSA-65 sign / verify           | 10.4k / 26.6k | 96 / 38 |
//! | ML-DSA-87 sign                    | 8k     | 125  |
//! | ML-KEM-768 encaps / decaps        | 84k / 71k | 12 / 14 |
//! | ECDSA P-256 digest sign / verify (aws-lc-rs) | 39k / 19k | 26 / 53 |
//! | ML-DSA-44 μ sign / verify (RustCrypto ml-dsa) | 1.15k / 5.5k | 869 / 181 |
//! | ML-DSA-65 μ sign / verify         | 724 / 3.9k | 1381 / 256 |
//! | ML-DSA-87 μ sign / verify         | 654 / 2.5k | 1528 / 401 |
//! | SLH-DSA-SHA2-128s sign / verify (fips205) | 3.6 / 4.5k | 278,413 / 223 |
//! | SLH-DSA-SHA2-128f sign / verify   | 81 / 1.3k | 12,273 / 749 |
//! | X25519                            |        | ≈ 40 |
//! | AES-256-GCM (a wrapped key)       |        | ≈ 0  |
//! | HMAC-SHA256 / -SHA512 tag, 64 B (ring) | 3.0M / 857k | 0.33 / 1.17 |
//! | HMAC-SHA256 / -SHA512 tag, 8 KiB | 202k / 69k | 4.9 / 14.5 |
//!
//! A hybrid costs the sum of its parts before rounding (Ed25519 + ML-DSA-65
//! verify: 45 + 38 µs = 3 units). Figures not measured (ML-DSA-44 and -87
//! verify, ML-KEM-1024) are scaled from their neighbours. Admin requests
//! (create, rotate, list, …) cost 1 whatever the algorithm: they are rare and
//! the key generation they may do is not what the gate protects against.
//!
//! Digest signing ([`DIGEST_TABLE`]) has rows of its own where its crypto
//! differs: ML-DSA over an external μ runs in RustCrypto's `ml-dsa`, about
//! ten times liboqs's message signing (the μ rows above, `cargo bench
//! --bench crypto -- digest`, 2026-12-07). The hybrid's pre-hash is signed
//! by liboqs like a message and costs the same.
//!
//! [`TABLE`] is the whole table, for docs; [`cost`] looks a request up.
use crate::crypto::Algorithm;

use super::Gate;

/// Every (op, algorithm, units) pair that makes sense: signing and HMAC
/// algorithms for [`Gate::Sign`] and [`Gate::Verify`], wrapping algorithms for
/// [`Gate::Wrap`] and [`Gate::Unwrap`]. [`Gate::Admin`] is not listed: it always
/// costs 1.
pub const TABLE: &[(Gate, Algorithm, u32)] = &[
    (Gate::Sign, Algorithm::Ed25519, 1),
    (Gate::Sign, Algorithm::EcdsaP256, 1),
    (Gate::Sign, Algorithm::MlDsa44, 2),
    (Gate::Sign, Algorithm::MlDsa65, 4),
    (Gate::Sign, Algorithm::MlDsa87, 5),
    (Gate::Sign, Algorithm::HybridEd25519MlDsa65, 5),
    // SLH-DSA: by far the dearest signatures (`cargo bench --bench crypto
    // -- slh`, 2026-12-07). A request holds at most its gate's share per
    // core, and the tenant's bucket is charged at most the gate's
    // capacity (`Admission::admit`), so these rows rank more than they
    // meter.
    (Gate::Sign, Algorithm::SlhDsaSha2_128s, 11_137),
    (Gate::Sign, Algorithm::SlhDsaSha2_128f, 491),
    (Gate::Verify, Algorithm::Ed25519, 2),
    (Gate::Verify, Algorithm::EcdsaP256, 2),
    (Gate::Verify, Algorithm::MlDsa44, 1),
    (Gate::Verify, Algorithm::MlDsa65, 2),
    (Gate::Verify, Algorithm::MlDsa87, 3),
    (Gate::Verify, Algorithm::HybridEd25519MlDsa65, 3),
    (Gate::Verify, Algorithm::SlhDsaSha2_128s, 9),
    (Gate::Verify, Algorithm::SlhDsaSha2_128f, 30),
    // HMAC: Mac is charged to the sign gate, VerifyMac to the verify gate;
    // a tag costs 0.3–15 µs (`cargo bench --bench crypto -- hmac`,
    // 2026-12-07), so one unit, the least a request costs.
    (Gate::Sign, Algorithm::HmacSha256, 1),
    (Gate::Sign, Algorithm::HmacSha512, 1),
    (Gate::Verify, Algorithm::HmacSha256, 1),
    (Gate::Verify, Algorithm::HmacSha512, 1),
    (Gate::Wrap, Algorithm::Aes256Gcm, 1),
    (Gate::Wrap, Algorithm::MlKem768, 1),
    (Gate::Wrap, Algorithm::MlKem1024, 1),
    (Gate::Wrap, Algorithm::HybridX25519MlKem768, 2),
    (Gate::Unwrap, Algorithm::Aes256Gcm, 1),
    (Gate::Unwrap, Algorithm::MlKem768, 1),
    (Gate::Unwrap, Algorithm::MlKem1024, 1),
    (Gate::Unwrap, Algorithm::HybridX25519MlKem768, 2),
];

/// The rows for Sign and Verify of a digest where they differ from
/// [`TABLE`]'s: `round(µs / 25)` of the digest figures above.
pub const DIGEST_TABLE: &[(Gate, Algorithm, u32)] = &[
    (Gate::Sign, Algorithm::MlDsa44, 35),
    (Gate::Sign, Algorithm::MlDsa65, 55),
    (Gate::Sign, Algorithm::MlDsa87, 61),
    (Gate::Verify, Algorithm::MlDsa44, 7),
    (Gate::Verify, Algorithm::MlDsa65, 10),
    (Gate::Verify, Algorithm::MlDsa87, 16),
];

/// Cost units of one request. `alg` is the key's algorithm, `None` when the
/// key is unknown (the op will fail anyway): 1. So does a pair the table does
/// not list (signing with a wrapping key fails too) and every admin request.
/// `digest`: a Sign or Verify of a digest, priced by [`DIGEST_TABLE`] where
/// it has a row.
pub fn cost(op: Gate, alg: Option<Algorithm>, digest: bool) -> u32 {
    let Some(alg) = alg else { return 1 };
    let row = |t: &[(Gate, Algorithm, u32)]| {
        t.iter()
            .find(|&&(o, a, _)| o == op && a == alg)
            .map(|&(_, _, units)| units)
    };
    digest
        .then(|| row(DIGEST_TABLE))
        .flatten()
        .or_else(|| row(TABLE))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Purpose;

    fn makes_sense(op: Gate, alg: Algorithm) -> bool {
        match op {
            Gate::Sign | Gate::Verify => matches!(alg.purpose(), Purpose::Sign | Purpose::Mac),
            Gate::Wrap | Gate::Unwrap => alg.purpose() == Purpose::Wrap,
            Gate::Admin => false,
        }
    }

    #[test]
    fn every_sensible_pair_has_exactly_one_row() {
        for op in Gate::ALL {
            for alg in Algorithm::ALL {
                let rows = TABLE
                    .iter()
                    .filter(|&&(o, a, _)| o == op && a == alg)
                    .count();
                let want = usize::from(makes_sense(op, alg));
                assert_eq!(rows, want, "{} {}", op.as_str(), alg.as_str());
            }
        }
    }

    #[test]
    fn units_are_positive_and_ordered_by_work() {
        assert!(TABLE.iter().all(|&(_, _, u)| u >= 1));
        let sign = |a| cost(Gate::Sign, Some(a), false);
        assert!(sign(Algorithm::MlDsa87) > sign(Algorithm::Ed25519));
        assert!(sign(Algorithm::MlDsa87) > sign(Algorithm::MlDsa65));
        assert!(sign(Algorithm::MlDsa65) > sign(Algorithm::MlDsa44));
        assert!(
            cost(Gate::Verify, Some(Algorithm::HybridEd25519MlDsa65), false)
                >= cost(Gate::Verify, Some(Algorithm::MlDsa65), false)
        );
    }

    #[test]
    fn digest_rows_price_mu_above_message_signing() {
        for &(op, alg, units) in DIGEST_TABLE {
            assert!(makes_sense(op, alg) && alg.prehash().is_some());
            assert_eq!(cost(op, Some(alg), true), units);
            assert!(units > cost(op, Some(alg), false), "{} {alg}", op.as_str());
        }
        // no row of its own: the message row
        for alg in [Algorithm::EcdsaP256, Algorithm::HybridEd25519MlDsa65] {
            assert_eq!(
                cost(Gate::Sign, Some(alg), true),
                cost(Gate::Sign, Some(alg), false)
            );
        }
    }

    #[test]
    fn unknown_key_mismatched_pair_and_admin_cost_one() {
        assert_eq!(cost(Gate::Sign, None, false), 1);
        assert_eq!(cost(Gate::Verify, None, false), 1);
        assert_eq!(cost(Gate::Sign, Some(Algorithm::Aes256Gcm), false), 1);
        assert_eq!(cost(Gate::Unwrap, Some(Algorithm::MlDsa87), false), 1);
        for alg in Algorithm::ALL {
            assert_eq!(cost(Gate::Admin, Some(alg), false), 1);
        }
    }
}
