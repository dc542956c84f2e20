//! scripts/perf/check_drift from outside: it passes a report equal to its
//! baseline and fails — naming the breach — on a slower ratio, an error
//! rate over the gate, and impossible figures.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BASELINES: &str = "testing/performance/baselines/ron-kms/smoke-debug";

fn gate(reports: &[PathBuf], extra: &[&str]) -> (bool, String) {
    let out = Command::new("python3")
        .arg("scripts/perf/check_drift")
        .arg(BASELINES)
        .args(reports)
        .args(extra)
        .output()
        .expect("python3 runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn baseline(name: &str) -> Value {
    let p = Path::new(BASELINES).join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    p
}

fn service_run(v: &mut Value) -> &mut Value {
    v["runs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["server"] == "service")
        .unwrap()
}

#[test]
fn the_drift_gate_passes_its_baseline_and_names_each_breach() {
    let dir = tempfile::tempdir().unwrap();
    let name = "grpc-sign-ed25519.json";
    let same = write(dir.path(), "same.json", &baseline(name));
    let (ok, out) = gate(&[same], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("drift gate: passed"), "{out}");

    let mut slow = baseline(name);
    let t = slow["ratios"][0]["throughput"].as_f64().unwrap();
    slow["ratios"][0]["throughput"] = (t * 0.8).into();
    let slow = write(dir.path(), "slow.json", &slow);
    let (ok, out) = gate(std::slice::from_ref(&slow), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("breach: throughput ratio grpc/sign/ed25519"),
        "{out}"
    );
    // the CI smoke's scaled gate lets a 20% drop through
    let (ok, out) = gate(&[slow], &["--scale", "4"]);
    assert!(ok, "{out}");

    let mut failing = baseline(name);
    let run = service_run(&mut failing);
    let n = run["requests"].as_u64().unwrap();
    run["errors"] = serde_json::json!({ "internal": n / 100 + 1 });
    let failing = write(dir.path(), "failing.json", &failing);
    let (ok, out) = gate(&[failing], &["--scale", "4"]);
    assert!(!ok, "{out}");
    assert!(out.contains("breach: 5xx"), "{out}");

    let mut shed = baseline(name);
    let run = service_run(&mut shed);
    let n = run["requests"].as_u64().unwrap();
    run["errors"] = serde_json::json!({ "saturated": n / 50 });
    let shed = write(dir.path(), "shed.json", &shed);
    let (ok, out) = gate(&[shed], &["--scale", "4"]);
    assert!(!ok, "{out}");
    assert!(out.contains("breach: 429/503"), "{out}");

    let mut impossible = baseline(name);
    let run = service_run(&mut impossible);
    run["p50_us"] = (run["p99_us"].as_u64().unwrap() + 1).into();
    let impossible = write(dir.path(), "impossible.json", &impossible);
    let (ok, out) = gate(&[impossible], &["--scale", "4"]);
    assert!(!ok, "{out}");
    assert!(out.contains("impossible result"), "{out}");

    let mut zero = baseline(name);
    let run = service_run(&mut zero);
    run["ok"] = 0.into();
    run["ops_per_sec"] = 0.0.into();
    let zero = write(dir.path(), "zero.json", &zero);
    let (ok, out) = gate(&[zero], &["--scale", "4", "--absolute"]);
    assert!(!ok, "{out}");
    assert!(out.contains("zero successful operations"), "{out}");
}

#[test]
fn ed25519_verify_far_below_sign_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sign = write(dir.path(), "s.json", &baseline("grpc-sign-ed25519.json"));
    let mut v = baseline("grpc-verify-ed25519.json");
    let mut s = baseline("grpc-sign-ed25519.json");
    let s_ops = service_run(&mut s)["ops_per_sec"].as_f64().unwrap();
    // the crypto's own verify:sign ratio in those runs; a third of what it
    // allows is refused
    let raw = |r: &Value| r["raw_crypto_ops_per_sec_single_core"].as_f64().unwrap();
    let crypto = raw(&v) / raw(&s);
    service_run(&mut v)["ops_per_sec"] = (s_ops * crypto * 0.3).into();
    let verify = write(dir.path(), "v.json", &v);
    let (ok, out) = gate(&[sign, verify], &["--scale", "4"]);
    assert!(!ok, "{out}");
    assert!(out.contains("is less than half of what sign"), "{out}");
    // at 0.8 of what the crypto allows it is a plausible result
    service_run(&mut v)["ops_per_sec"] = (s_ops * crypto * 0.8).into();
    let verify = write(dir.path(), "v2.json", &v);
    let sign = write(dir.path(), "s.json", &s);
    let (ok, out) = gate(&[sign, verify], &["--scale", "4"]);
    assert!(ok, "{out}");
}

#[test]
fn tenant_skew_is_gated_and_the_burst_mix_may_shed() {
    let dir = tempfile::tempdir().unwrap();
    let mut skewed = baseline("grpc-sign-ed25519.json");
    skewed["ratios"] = serde_json::json!([]);
    let run = service_run(&mut skewed);
    run["op"] = "mix-tenant-isolation".into();
    run["tenant_p95_skew"] = 1.5.into();
    let fair = write(dir.path(), "fair.json", &skewed);
    let (ok, out) = gate(&[fair], &[]);
    assert!(ok, "a skew of 1.5 is within the gate: {out}");
    service_run(&mut skewed)["tenant_p95_skew"] = 3.0.into();
    let unfair = write(dir.path(), "unfair.json", &skewed);
    let (ok, out) = gate(&[unfair], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("breach: tenant p95 skew"), "{out}");

    // 2% shed: a breach for a steady run, allowed in the burst mix
    for (op, allowed) in [("mix-steady", false), ("mix-burst", true)] {
        let mut v = baseline("grpc-sign-ed25519.json");
        v["ratios"] = serde_json::json!([]);
        let run = service_run(&mut v);
        run["op"] = op.into();
        let n = run["requests"].as_u64().unwrap();
        run["errors"] = serde_json::json!({ "saturated": n / 50 });
        let p = write(dir.path(), &format!("{op}.json"), &v);
        let (ok, out) = gate(&[p], &[]);
        assert_eq!(ok, allowed, "{op}: {out}");
    }
}
