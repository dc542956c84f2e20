//! Chaos drills (docs/RUNBOOK.md): each starts a ron-kms of its own (the
//! service child, with fault injection on), drives load with this bench's
//! workers, injects its fault, and prints a verdict table: requests ok /
//! shed / failed by code and p50/p95/p99 before, during and after, the
//! recovery time, the keys checked and whether the audit chain verifies.
//!
//! A request refused with a retryable code (`unavailable`, `saturated`,
//! `tenant_share`, `rate_limit`, `overloaded`, `timeout`: 503 or 429 with
//! retry advice) counts as *shed*; anything else that is not ok counts as
//! *failed* and fails the drill.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ron_kms::proto::{GetKeyRequest, SignRequest};

use super::*;
use stats::Tally;

/// The codes a shed request may carry (all retryable, with retry advice).
const SHED_CODES: &[&str] = &[
    "unavailable",
    "saturated",
    "tenant_share",
    "rate_limit",
    "overloaded",
    "timeout",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DrillKind {
    /// Custody flapping (down/up on a schedule), slow and erroring.
    HsmFlap,
    /// 10x the steady rate for a window, then back.
    Burst,
    /// Rotations at 10x a busy rate while signing and verifying with the
    /// rotating key.
    RotateFlood,
    /// Slow-loris connections, gzip bombs and oversized bodies mixed into
    /// normal traffic.
    HostileClients,
    /// The TPM simulator (swtpm) killed under signing load and restarted.
    TpmLoss,
    /// Many keys (100,000; 2,000 in the short form) and verify over all of
    /// them with the verify cache at its bound: RSS stays bounded.
    MemoryPressure,
    /// The process killed (SIGKILL) mid-load and restarted.
    #[value(name = "kill-9")]
    Kill9,
}

impl DrillKind {
    fn name(self) -> &'static str {
        match self {
            DrillKind::HsmFlap => "hsm-flap",
            DrillKind::Burst => "burst",
            DrillKind::RotateFlood => "rotate-flood",
            DrillKind::Kill9 => "kill-9",
            DrillKind::MemoryPressure => "memory-pressure",
            DrillKind::TpmLoss => "tpm-loss",
            DrillKind::HostileClients => "hostile-clients",
        }
    }
}

#[derive(clap::Args)]
pub struct DrillArgs {
    /// The drills to run, in order (default: all).
    #[arg(value_enum)]
    drills: Vec<DrillKind>,
    /// The short forms (seconds per phase instead of minutes), as CI runs
    /// them.
    #[arg(long)]
    short: bool,
    /// Workers (closed loop) driving the steady load.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// One phase's tallies.
struct Phase {
    name: &'static str,
    tally: Tally,
    secs: f64,
}

/// A drill's outcome: its phases and its checks.
struct Verdict {
    drill: &'static str,
    phases: Vec<Phase>,
    facts: Vec<(String, String)>,
    checks: Vec<(String, bool)>,
}

impl Verdict {
    fn new(drill: &'static str) -> Self {
        Verdict {
            drill,
            phases: Vec::new(),
            facts: Vec::new(),
            checks: Vec::new(),
        }
    }
    fn fact(&mut self, k: &str, v: impl std::fmt::Display) {
        self.facts.push((k.to_string(), v.to_string()));
    }
    fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push((what.into(), ok));
    }
    fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.1)
    }

    /// At least 99% of phase `i`'s requests were ok.
    fn check_ok_share(&mut self, i: usize, when: &str) {
        let t = &self.phases[i].tally;
        let share = t.ok as f64 / (t.ok + t.errors.values().sum::<u64>()).max(1) as f64;
        self.check(
            format!("{when}, {:.2}% of requests ok (>= 99%)", share * 100.0),
            share >= 0.99,
        );
    }

    /// The drill's key still reads back and signs.
    async fn check_key(&mut self, ep: &Endpoint, name: &str) {
        let k = keys_ok(ep, &[name.to_string()]).await;
        self.fact("keys checked", format!("{k} of 1"));
        self.check("no key lost", k == 1);
    }

    /// Every phase: no failure other than a shed.
    fn check_only_sheds(&mut self) {
        let failed: BTreeMap<String, u64> = self
            .phases
            .iter()
            .flat_map(|p| p.tally.errors.iter())
            .filter(|(c, _)| !SHED_CODES.contains(&c.as_str()))
            .fold(BTreeMap::new(), |mut m, (c, n)| {
                *m.entry(c.clone()).or_insert(0) += n;
                m
            });
        let what = if failed.is_empty() {
            "no request failed other than shed with retry advice".to_string()
        } else {
            format!("requests failed other than shed: {failed:?}")
        };
        self.check(what, failed.is_empty());
    }

    fn print(&self) {
        println!(
            "\n## drill {} — host {}, {}, commit {}",
            self.drill,
            super::host(),
            super::date(),
            super::commit()
        );
        println!(
            "\n| phase | s | ok | shed | failed | codes | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|---:|---|---:|---:|---:|"
        );
        for p in &self.phases {
            let shed: u64 = p
                .tally
                .errors
                .iter()
                .filter(|(c, _)| SHED_CODES.contains(&c.as_str()))
                .map(|(_, n)| n)
                .sum();
            let all: u64 = p.tally.errors.values().sum();
            let codes = p
                .tally
                .errors
                .iter()
                .map(|(c, n)| format!("{c}:{n}"))
                .collect::<Vec<_>>()
                .join(" ");
            let q = |x: f64| p.tally.latency_us.value_at_quantile(x) as f64 / 1000.0;
            println!(
                "| {} | {:.0} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                p.name,
                p.secs,
                p.tally.ok,
                shed,
                all - shed,
                if codes.is_empty() {
                    "—".into()
                } else {
                    codes
                },
                q(0.50),
                q(0.95),
                q(0.99)
            );
        }
        println!();
        for (k, v) in &self.facts {
            println!("- {k}: {v}");
        }
        for (what, ok) in &self.checks {
            println!("- [{}] {what}", if *ok { "pass" } else { "FAIL" });
        }
        println!(
            "\nverdict: {} {}",
            self.drill,
            if self.passed() { "PASSED" } else { "FAILED" }
        );
    }
}

/// Phase lengths in seconds: before, during, after.
fn lengths(short: bool, long: (f64, f64, f64)) -> (f64, f64, f64) {
    if short {
        (2.0, 4.0, 3.0)
    } else {
        long
    }
}

/// A service child with fault injection, its data dir kept by the drill.
fn start_service(data: &Path, envs: &[(&str, &str)]) -> Result<Server, String> {
    let mut all = vec![("KMS_FAULT_INJECTION", "true"), ("KMS_LOG", "warn")];
    all.extend_from_slice(envs);
    Server::start_env(
        &["service", "--data-dir", &data.to_string_lossy()],
        &all,
        Transport::Grpc,
        None,
    )
}

/// Workers over `conns` shared channels.
async fn workers(ep: &Endpoint, n: usize) -> Result<Vec<Client>, String> {
    let chans = load::grpc_clients(ep, 4).await?;
    (0..n)
        .map(|i| Client::grpc(chans[i % chans.len()].clone(), &ep.token))
        .collect()
}

/// Run `groups` for `secs` and keep the merged tally as phase `name`.
async fn phase(name: &'static str, groups: Vec<Group>, secs: f64) -> Phase {
    let (out, _) = load::run(groups, Duration::ZERO, Duration::from_secs_f64(secs), false).await;
    Phase {
        name,
        tally: out.total,
        secs,
    }
}

/// The steady sign + verify mix on key `name`.
async fn sign_verify(ep: &Endpoint, name: &str, create: bool) -> Result<Mix, String> {
    let c = load::grpc_clients(ep, 1).await?.remove(0);
    let sign = prepare(
        c.clone(),
        &ep.token,
        Op::Sign,
        Algorithm::Ed25519,
        name,
        32,
        create,
    )
    .await?;
    let verify = prepare(
        c,
        &ep.token,
        Op::Verify,
        Algorithm::Ed25519,
        name,
        32,
        false,
    )
    .await?;
    Ok(Mix::new(vec![
        ("sign".into(), sign, 50),
        ("verify".into(), verify, 50),
    ]))
}

/// Sign with `name` until it works (or `limit` passes): the recovery time.
async fn until_sign_ok(ep: &Endpoint, name: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut c = load::grpc_clients(ep, 1).await.ok()?.remove(0);
    while t.elapsed() < limit {
        let r = c
            .sign(
                with_auth(
                    SignRequest {
                        key: name.into(),
                        message: b"probe".to_vec(),
                        op_id: String::new(),
                    },
                    &ep.token,
                )
                .ok()?,
            )
            .await;
        if r.is_ok() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Every key in `names` still reads back and signs: how many did.
async fn keys_ok(ep: &Endpoint, names: &[String]) -> usize {
    let Ok(mut cs) = load::grpc_clients(ep, 1).await else {
        return 0;
    };
    let c = &mut cs[0];
    let mut ok = 0;
    for n in names {
        let Ok(get) = with_auth(
            GetKeyRequest {
                name: n.clone(),
                pem: false,
            },
            &ep.token,
        ) else {
            continue;
        };
        let Ok(sign) = with_auth(
            SignRequest {
                key: n.clone(),
                message: b"check".to_vec(),
                op_id: String::new(),
            },
            &ep.token,
        ) else {
            continue;
        };
        if c.get_key(get).await.is_ok() && c.sign(sign).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

/// Stop the child cleanly (its audit log is sealed) and verify the chain.
fn stop_and_verify(server: Server, data: &Path, v: &mut Verdict) {
    drop(server);
    match ron_kms::audit::verify_dir(&data.join("audit"), None) {
        Ok(s) => {
            v.fact(
                "audit chain",
                format!("{} records, {} checkpoints", s.records, s.checkpoints),
            );
            v.check("audit chain verifies and is sealed", s.unsealed_tail == 0);
        }
        Err(e) => {
            v.fact("audit chain", &e);
            v.check("audit chain verifies", false);
        }
    }
}

/// Records in the audit chain with this op and `result ok`.
fn audited_ok(data: &Path, op: &str) -> u64 {
    let mut n = 0;
    for f in ron_kms::audit::chain::segments(&data.join("audit")).unwrap_or_default() {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v["op"] == op && v["result"] == "ok" {
                    n += 1;
                }
            }
        }
    }
    n
}

async fn hsm_flap(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("hsm-flap");
    let (before, during, after) = lengths(a.short, (20.0, 120.0, 30.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let mut s = start_service(&data, &[])?;
    let ep = s.endpoint.clone();
    let mix = || sign_verify(&ep, "flap", false);
    sign_verify(&ep, "flap", true).await?;
    let g = |mix: Mix, clients| Group {
        clients,
        mix,
        pace: Pace::Closed,
    };
    v.phases.push(
        phase(
            "before",
            vec![g(mix().await?, workers(&ep, a.concurrency).await?)],
            before,
        )
        .await,
    );
    // 400 ms up / 300 ms down, every call 2 ms slower, 5% of calls failing
    s.send("flap 400 300")?;
    s.send("latency 2")?;
    s.send("errors 0.05")?;
    v.fact(
        "fault",
        "custody flaps 400 ms up / 300 ms down, +2 ms per call, 5% of calls fail",
    );
    v.phases.push(
        phase(
            "during",
            vec![g(mix().await?, workers(&ep, a.concurrency).await?)],
            during,
        )
        .await,
    );
    s.send("clear")?;
    let rec = until_sign_ok(&ep, "flap", Duration::from_secs(30)).await;
    v.fact(
        "recovery (fault cleared -> first sign ok)",
        rec.map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or("never".into()),
    );
    v.check(
        "sign works again within 5 s of the fault clearing",
        rec.is_some_and(|d| d < Duration::from_secs(5)),
    );
    v.phases.push(
        phase(
            "after",
            vec![g(mix().await?, workers(&ep, a.concurrency).await?)],
            after,
        )
        .await,
    );
    v.check_only_sheds();
    v.check_ok_share(2, "after the fault");
    v.check_key(&ep, "flap").await;
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}

async fn burst(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("burst");
    // the long form is one 5-minute cycle: 60 s at 10x in the middle
    let (before, during, after) = lengths(a.short, (120.0, 60.0, 120.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let s = start_service(&data, &[])?;
    let ep = s.endpoint.clone();
    sign_verify(&ep, "burst", true).await?;
    // the steady rate: a third of what a closed loop gets through here
    let probe = phase(
        "probe",
        vec![Group {
            clients: workers(&ep, a.concurrency).await?,
            mix: sign_verify(&ep, "burst", false).await?,
            pace: Pace::Closed,
        }],
        1.0,
    )
    .await;
    let rate = (probe.tally.ok as f64 / 3.0).max(50.0);
    v.fact(
        "steady rate",
        format!(
            "{rate:.0} req/s (a third of a closed loop's {})",
            probe.tally.ok
        ),
    );
    v.fact("burst rate", format!("{:.0} req/s (10x)", rate * 10.0));
    let open = |r: f64| {
        Pace::Open(Schedule {
            rate: r,
            burst: None,
        })
    };
    // open-loop workers: enough that the client never runs out at 10x
    let n = (a.concurrency * 8).max(64);
    for (name, secs, r) in [
        ("before", before, rate),
        ("during", during, rate * 10.0),
        ("after", after, rate),
    ] {
        let p = phase(
            name,
            vec![Group {
                clients: workers(&ep, n).await?,
                mix: sign_verify(&ep, "burst", false).await?,
                pace: open(r),
            }],
            secs,
        )
        .await;
        v.phases.push(p);
    }
    v.check_only_sheds();
    v.check_ok_share(2, "after the burst");
    v.check_key(&ep, "burst").await;
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}

async fn rotate_flood(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("rotate-flood");
    let (before, during, after) = lengths(a.short, (20.0, 120.0, 30.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let s = start_service(&data, &[])?;
    let ep = s.endpoint.clone();
    // sign by name (the primary moves with each rotation); verify pins v1
    sign_verify(&ep, "flood", true).await?;
    let steady = || async {
        Ok::<_, String>(Group {
            clients: workers(&ep, a.concurrency).await?,
            mix: sign_verify(&ep, "flood", false).await?,
            pace: Pace::Closed,
        })
    };
    v.phases
        .push(phase("before", vec![steady().await?], before).await);
    const RATE: f64 = 100.0; // 10x a busy 10 rotations a second
    let rotations = Group {
        clients: workers(&ep, 8).await?,
        mix: Mix::new(vec![(
            "rotate".into(),
            Work::Rotate(ron_kms::proto::RotateKeyRequest {
                name: "flood".into(),
                op_id: String::new(),
            }),
            1,
        )]),
        pace: Pace::Open(Schedule {
            rate: RATE,
            burst: None,
        }),
    };
    v.fact(
        "fault",
        format!("{RATE:.0} rotations/s of the key being signed and verified"),
    );
    let (out, _) = load::run(
        vec![steady().await?, rotations],
        Duration::ZERO,
        Duration::from_secs_f64(during),
        false,
    )
    .await;
    let rotated = out.parts.get("rotate").map(|t| t.ok).unwrap_or(0);
    let mut during_t = Tally::new();
    for (label, t) in &out.parts {
        if label != "rotate" {
            during_t.merge_ref(t);
        }
    }
    v.fact("rotations acknowledged", rotated);
    if let Some(t) = out.parts.get("rotate") {
        v.fact("rotations refused", format!("{:?}", t.errors));
    }
    v.phases.push(Phase {
        name: "during",
        tally: during_t,
        secs: during,
    });
    v.phases
        .push(phase("after", vec![steady().await?], after).await);
    v.check_only_sheds();
    // every acknowledged rotation left its version
    let mut c = load::grpc_clients(&ep, 1).await?.remove(0);
    let key = c
        .get_key(with_auth(
            GetKeyRequest {
                name: "flood".into(),
                pem: false,
            },
            &ep.token,
        )?)
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .key
        .ok_or("no key")?;
    v.fact("versions", key.versions.len());
    v.check(
        format!(
            "{} versions = 1 + {rotated} acknowledged rotations",
            key.versions.len()
        ),
        key.versions.len() as u64 == 1 + rotated,
    );
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}

async fn kill_9(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("kill-9");
    let (before, _, after) = lengths(a.short, (20.0, 0.0, 20.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let mut s = start_service(&data, &[])?;
    let ep = s.endpoint.clone();
    sign_verify(&ep, "k9", true).await?;
    // a mutator creating and rotating keys until the kill; it records what
    // was acknowledged
    let acked: Arc<std::sync::Mutex<Vec<(String, usize)>>> = Default::default();
    let mutator = {
        let (ep, acked) = (ep.clone(), acked.clone());
        tokio::spawn(async move {
            let Ok(mut cs) = load::grpc_clients(&ep, 1).await else {
                return;
            };
            let c = &mut cs[0];
            for i in 0.. {
                let name = format!("m{i}");
                let Ok(r) = with_auth(
                    CreateKeyRequest {
                        name: name.clone(),
                        algorithm: "ed25519".into(),
                        ..Default::default()
                    },
                    &ep.token,
                ) else {
                    return;
                };
                if c.create_key(r).await.is_err() {
                    return;
                }
                acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((name.clone(), 1));
                let Ok(r) = with_auth(
                    RotateKeyRequest {
                        name: name.clone(),
                        op_id: String::new(),
                    },
                    &ep.token,
                ) else {
                    return;
                };
                if c.rotate_key(r).await.is_err() {
                    return;
                }
                if let Some(last) = acked.lock().unwrap_or_else(|p| p.into_inner()).last_mut() {
                    last.1 = 2;
                }
            }
        })
    };
    let load = phase(
        "before the kill",
        vec![Group {
            clients: workers(&ep, a.concurrency).await?,
            mix: sign_verify(&ep, "k9", false).await?,
            pace: Pace::Closed,
        }],
        before,
    );
    // the kill lands in the middle of that phase
    let killer = async {
        tokio::time::sleep(Duration::from_secs_f64(before / 2.0)).await;
        s.kill9()
    };
    let (mut p, killed) = tokio::join!(load, killer);
    killed?;
    p.name = "before (kill mid-phase)";
    let acked_signs_before = p.tally.ok;
    // while the process is dead the client sees transport errors (no KMS
    // code: grpc_unavailable, grpc_unknown); anything else would be the
    // server's own answer
    let server_errors: u64 = p
        .tally
        .errors
        .iter()
        .filter(|(c, _)| !c.starts_with("grpc_") && !SHED_CODES.contains(&c.as_str()))
        .map(|(_, n)| n)
        .sum();
    v.check(
        "before the kill: no error answered by the server (only transport errors once it is dead)",
        server_errors == 0,
    );
    v.phases.push(p);
    let _ = mutator.await;
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    v.fact(
        "acknowledged before the kill",
        format!(
            "{} creates, {} rotations, {} signs/verifies",
            acked.len(),
            acked.iter().filter(|a| a.1 == 2).count(),
            acked_signs_before
        ),
    );
    // restart on the same data dir: how long until it serves
    let t = Instant::now();
    let mut s2 = start_service(&data, &[])?;
    s2.endpoint.token = ep.token.clone();
    let ep2 = s2.endpoint.clone();
    let ready = until_sign_ok(&ep2, "k9", Duration::from_secs(60))
        .await
        .map(|_| t.elapsed());
    v.fact(
        "restart -> first sign ok",
        ready
            .map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or("never".into()),
    );
    v.check(
        "ready again within 10 s of the restart",
        ready.is_some_and(|d| d < Duration::from_secs(10)),
    );
    v.phases.push(
        phase(
            "after the restart",
            vec![Group {
                clients: workers(&ep2, a.concurrency).await?,
                mix: sign_verify(&ep2, "k9", false).await?,
                pace: Pace::Closed,
            }],
            after,
        )
        .await,
    );
    let after_t = &v.phases[1].tally;
    v.check(
        format!(
            "after the restart: every request ok ({} of {})",
            after_t.ok,
            after_t.ok + after_t.errors.values().sum::<u64>()
        ),
        after_t.errors.is_empty(),
    );
    // every acknowledged key and rotation survived
    let mut c = load::grpc_clients(&ep2, 1).await?.remove(0);
    let mut lost = Vec::new();
    for (name, versions) in &acked {
        let got = c
            .get_key(with_auth(
                GetKeyRequest {
                    name: name.clone(),
                    pem: false,
                },
                &ep2.token,
            )?)
            .await
            .ok()
            .and_then(|r| r.into_inner().key)
            .map(|k| k.versions.len())
            .unwrap_or(0);
        if got < *versions {
            lost.push(format!("{name}: {got} of {versions} versions"));
        }
    }
    v.fact(
        "keys checked",
        format!("{} acknowledged keys, {} lost", acked.len(), lost.len()),
    );
    v.check(
        format!("no acknowledged key or rotation lost {lost:?}"),
        lost.is_empty(),
    );
    let names: Vec<String> = std::iter::once("k9".to_string()).collect();
    v.check(
        "the load's key signs after the restart",
        keys_ok(&ep2, &names).await == 1,
    );
    // the phase before the kill is the one that could lose records
    let after_signs = v.phases[1].tally.ok;
    stop_and_verify(s2, &data, &mut v);
    let audited = audited_ok(&data, "sign") + audited_ok(&data, "verify");
    v.fact("audited ok sign/verify records", audited);
    v.check(
        format!("every acknowledged sign/verify is audited ({audited} >= {acked_signs_before} + {after_signs})"),
        audited >= acked_signs_before + after_signs,
    );
    let audited_mut = audited_ok(&data, "create_key") + audited_ok(&data, "rotate_key");
    let acked_mut = acked.len() + acked.iter().filter(|a| a.1 == 2).count();
    v.check(
        format!("every acknowledged create/rotate is audited ({audited_mut} >= {acked_mut} + the load's key)"),
        audited_mut > acked_mut as u64,
    );
    Ok(v)
}

/// swtpm on two consecutive free loopback ports, its state in `dir`
/// (kept across a kill and restart). Debian package `swtpm`.
struct Swtpm {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Swtpm {
    fn start(dir: &Path) -> Result<Swtpm, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let port = loop {
            let a = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let p = a.local_addr().map_err(|e| e.to_string())?.port();
            if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let mut t = Swtpm {
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        t.spawn()?;
        Ok(t)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", self.dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.port + 1
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("swtpm (Debian package swtpm): {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port + 1)).is_err() {
            if Instant::now() > deadline {
                return Err("swtpm did not open its ports".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn tpm_loss(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("tpm-loss");
    let (before, during, after) = lengths(a.short, (20.0, 30.0, 30.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let mut tpm = Swtpm::start(&dir.path().join("tpm"))?;
    let tcti = tpm.tcti();
    // no fault injection: the device itself goes away
    let s = Server::start_env(
        &["service", "--data-dir", &data.to_string_lossy()],
        &[
            ("KMS_BACKEND", "tpm"),
            ("KMS_TPM_TCTI", &tcti),
            ("KMS_LOG", "warn"),
        ],
        Transport::Grpc,
        None,
    )?;
    let ep = s.endpoint.clone();
    sign_verify(&ep, "tpm", true).await?;
    let g = |mix: Mix, clients| Group {
        clients,
        mix,
        pace: Pace::Closed,
    };
    v.phases.push(
        phase(
            "before",
            vec![g(
                sign_verify(&ep, "tpm", false).await?,
                workers(&ep, a.concurrency).await?,
            )],
            before,
        )
        .await,
    );
    v.fact(
        "fault",
        format!("swtpm killed (SIGKILL) under load, restarted {during:.0} s later"),
    );
    // the mix is made while the TPM is up (its verify needs a signature)
    let during_mix = sign_verify(&ep, "tpm", false).await?;
    tpm.kill();
    v.phases.push(
        phase(
            "during (TPM gone)",
            vec![g(during_mix, workers(&ep, a.concurrency).await?)],
            during,
        )
        .await,
    );
    tpm.spawn()?;
    let rec = until_sign_ok(&ep, "tpm", Duration::from_secs(60)).await;
    v.fact(
        "recovery (swtpm back -> first sign ok, ron-kms not restarted)",
        rec.map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or("never".into()),
    );
    v.check(
        "sign works again within 10 s of the TPM's return",
        rec.is_some_and(|d| d < Duration::from_secs(10)),
    );
    v.phases.push(
        phase(
            "after",
            vec![g(
                sign_verify(&ep, "tpm", false).await?,
                workers(&ep, a.concurrency).await?,
            )],
            after,
        )
        .await,
    );
    v.check_only_sheds();
    let during_ok = v.phases[1].tally.ok;
    v.check(
        format!(
            "verify kept answering while the TPM was gone ({during_ok} ok, from the verify cache)"
        ),
        during_ok > 0,
    );
    v.check_ok_share(2, "after the TPM's return");
    v.check_key(&ep, "tpm").await;
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}

/// The status code of one raw HTTP/1.1 exchange: `head` then `body`
/// (written as far as the server reads it), or `None` when the server
/// closed without answering.
async fn raw_http(addr: &str, head: String, body: Vec<u8>) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(head.as_bytes()).await.ok()?;
    // the server may answer (413) and close before the body is all sent
    let _ = s.write_all(&body).await;
    let mut buf = vec![0u8; 512];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.windows(2).any(|w| w == b"\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn hostile_clients(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("hostile-clients");
    let (before, during, after) = lengths(a.short, (20.0, 60.0, 20.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    // a short header deadline so the drill sees slow-loris connections cut
    let s = start_service(&data, &[("KMS_HEADER_TIMEOUT_MS", "1000")])?;
    let ep = s.endpoint.clone();
    let http = ep.http.trim_start_matches("http://").to_string();
    sign_verify(&ep, "hostile", true).await?;
    let g = |mix: Mix, clients| Group {
        clients,
        mix,
        pace: Pace::Closed,
    };
    v.phases.push(
        phase(
            "before",
            vec![g(
                sign_verify(&ep, "hostile", false).await?,
                workers(&ep, a.concurrency).await?,
            )],
            before,
        )
        .await,
    );
    v.fact(
        "attacks",
        "50 slow-loris connections (a header byte every 300 ms), gzip bombs (64 MiB of zeros in ~64 KiB), 2 MiB bodies, on the HTTP port, all through the phase",
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // slow-loris: how long until the server cuts each connection
    let loris: Vec<_> = (0..50)
        .map(|_| {
            let (http, stop) = (http.clone(), stop.clone());
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let t = Instant::now();
                let Ok(mut c) = tokio::net::TcpStream::connect(&http).await else {
                    return None;
                };
                let _ = c
                    .write_all(b"POST /v1/kms/sign HTTP/1.1\r\nHost: x\r\n")
                    .await;
                let mut b = [0u8; 64];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if c.write_all(b"X").await.is_err() {
                        return Some(t.elapsed());
                    }
                    match tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
                        _ => {}
                    }
                }
                None
            })
        })
        .collect();
    let bomb = {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).map_err(|e| e.to_string())?;
        }
        e.finish().map_err(|e| e.to_string())?
    };
    let abuse = {
        let (http, stop, token, bomb) =
            (http.clone(), stop.clone(), ep.token.clone(), bomb.clone());
        tokio::spawn(async move {
            let mut answers: BTreeMap<String, u64> = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let head = |len: usize, gz: bool| {
                    format!(
                        "POST /v1/kms/sign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n{}Content-Length: {len}\r\nConnection: close\r\n\r\n",
                        if gz { "Content-Encoding: gzip\r\n" } else { "" }
                    )
                };
                let g = raw_http(&http, head(bomb.len(), true), bomb.clone()).await;
                *answers
                    .entry(format!(
                        "gzip bomb -> {}",
                        g.map(|c| c.to_string()).unwrap_or("closed".into())
                    ))
                    .or_insert(0) += 1;
                let big = vec![b'x'; 2 << 20];
                let o = raw_http(&http, head(big.len(), false), big).await;
                *answers
                    .entry(format!(
                        "2 MiB body -> {}",
                        o.map(|c| c.to_string()).unwrap_or("closed".into())
                    ))
                    .or_insert(0) += 1;
            }
            answers
        })
    };
    v.phases.push(
        phase(
            "during",
            vec![g(
                sign_verify(&ep, "hostile", false).await?,
                workers(&ep, a.concurrency).await?,
            )],
            during,
        )
        .await,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = abuse.await.map_err(|e| e.to_string())?;
    let mut cut = Vec::new();
    for l in loris {
        if let Ok(Some(d)) = l.await {
            cut.push(d);
        }
    }
    cut.sort();
    v.fact(
        "slow-loris",
        format!(
            "{} of 50 connections cut by the server, slowest after {} ms (header deadline 1000 ms)",
            cut.len(),
            cut.last().map(|d| d.as_millis()).unwrap_or(0)
        ),
    );
    v.check(
        "every slow-loris connection is cut within 3 s",
        cut.len() == 50 && cut.last().is_some_and(|d| *d < Duration::from_secs(3)),
    );
    v.fact("abusive requests answered", format!("{answers:?}"));
    let bad: Vec<&String> = answers
        .keys()
        .filter(|k| !(k.ends_with("-> 413")))
        .collect();
    v.check(
        format!(
            "every gzip bomb and oversized body is refused with 413 ({} kinds of answer)",
            answers.len()
        ),
        bad.is_empty() && !answers.is_empty(),
    );
    v.phases.push(
        phase(
            "after",
            vec![g(
                sign_verify(&ep, "hostile", false).await?,
                workers(&ep, a.concurrency).await?,
            )],
            after,
        )
        .await,
    );
    v.check_only_sheds();
    let k = keys_ok(&ep, &["hostile".to_string()]).await;
    v.check("the server still serves (no key lost)", k == 1);
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}

fn rss_mib(pid: u32) -> f64 {
    stats::proc_sample(pid)
        .map(|p| p.rss_kib as f64 / 1024.0)
        .unwrap_or(0.0)
}

async fn memory_pressure(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("memory-pressure");
    let (keys, cache, secs) = if a.short {
        (2_000usize, 500u64, 4.0)
    } else {
        (100_000, 10_000, 60.0)
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let cache_s = cache.to_string();
    let s = start_service(&data, &[("KMS_VERIFY_CACHE_MAX", &cache_s)])?;
    let ep = s.endpoint.clone();
    let pid = s.pid();
    let idle = rss_mib(pid);
    // create the keys 16 at a time, each with a signature to verify
    let t = Instant::now();
    let c = load::grpc_clients(&ep, 1).await?.remove(0);
    let mut entries = Vec::with_capacity(keys);
    let mut k = 0;
    while k < keys {
        let mut tasks = Vec::new();
        for i in k..(k + 16).min(keys) {
            let (c, token) = (c.clone(), ep.token.clone());
            tasks.push(tokio::spawn(async move {
                let name = format!("mp-{i}");
                prepare(c, &token, Op::Verify, Algorithm::Ed25519, &name, 32, true).await
            }));
        }
        k = (k + 16).min(keys);
        for t in tasks {
            entries.push((
                "verify".to_string(),
                t.await.map_err(|e| e.to_string())??,
                1,
            ));
        }
    }
    let filled = rss_mib(pid);
    v.fact(
        "keys",
        format!(
            "{keys} created in {:.1} s; verify cache bound {cache} entries",
            t.elapsed().as_secs_f64()
        ),
    );
    let spread = |entries: Vec<(String, Work, u32)>| async {
        Ok::<_, String>(Group {
            clients: workers(&ep, a.concurrency).await?,
            mix: Mix::new(entries),
            pace: Pace::Closed,
        })
    };
    // verify spread over every key: the cache holds at most `cache`, so
    // most lookups miss and evict
    v.phases.push(
        phase(
            "verify, first half",
            vec![spread(entries.clone()).await?],
            secs / 2.0,
        )
        .await,
    );
    let mid = rss_mib(pid);
    v.phases.push(
        phase(
            "verify, second half",
            vec![spread(entries).await?],
            secs / 2.0,
        )
        .await,
    );
    let end = rss_mib(pid);
    v.fact(
        "RSS (MiB)",
        format!(
            "idle {idle:.1}, after creating the keys {filled:.1}, mid-load {mid:.1}, end {end:.1}"
        ),
    );
    v.check_only_sheds();
    // bounded: the second half of the load adds (almost) nothing
    v.check(
        format!(
            "RSS stays bounded under load: end {end:.1} MiB <= mid-load {mid:.1} MiB x 1.10 + 4"
        ),
        end <= mid * 1.10 + 4.0,
    );
    let sample: Vec<String> = (0..keys)
        .step_by((keys / 20).max(1))
        .map(|i| format!("mp-{i}"))
        .collect();
    let k = keys_ok(&ep, &sample).await;
    v.fact("keys checked", format!("{k} of {} sampled", sample.len()));
    v.check("no key lost", k == sample.len());
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}

pub async fn run(a: DrillArgs) -> Result<ExitCode, String> {
    let drills = if a.drills.is_empty() {
        vec![
            DrillKind::HsmFlap,
            DrillKind::Burst,
            DrillKind::RotateFlood,
            DrillKind::TpmLoss,
            DrillKind::MemoryPressure,
            DrillKind::HostileClients,
            DrillKind::Kill9,
        ]
    } else {
        a.drills.clone()
    };
    let mut failed = Vec::new();
    for d in drills {
        let t = Instant::now();
        eprintln!(
            "drill {} ({}) …",
            d.name(),
            if a.short { "short" } else { "long" }
        );
        let v = match d {
            DrillKind::HsmFlap => hsm_flap(&a).await,
            DrillKind::Burst => burst(&a).await,
            DrillKind::RotateFlood => rotate_flood(&a).await,
            DrillKind::Kill9 => kill_9(&a).await,
            DrillKind::MemoryPressure => memory_pressure(&a).await,
            DrillKind::TpmLoss => tpm_loss(&a).await,
            DrillKind::HostileClients => hostile_clients(&a).await,
        };
        match v {
            Ok(v) => {
                v.print();
                if !v.passed() {
                    failed.push(d.name());
                }
            }
            Err(e) => {
                println!("\nverdict: {} FAILED to run: {e}", d.name());
                failed.push(d.name());
            }
        }
        eprintln!("drill {} took {:.0} s", d.name(), t.elapsed().as_secs_f64());
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("drills failed: {failed:?}");
        Ok(ExitCode::FAILURE)
    }
}
