//! Several real `ron-kms` processes on one PostgreSQL (tests/common/pg.rs):
//! how fast a change on one replica reaches the others, what a database
//! outage does under load, and two replicas racing one `op_id`.
//!
//! Every replica has its own data dir (lock, audit chain) and the same
//! master key file, as docs/scale-out.md prescribes for sealed-file custody.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::pg::Pg;
use common::process::{serve_with, Served};
use common::{Client, Front};
use ron_kms::proto::CreateKeyRequest;

struct Replicas {
    nodes: Vec<Served>,
    token: String,
}

/// Start `n` replicas on `url`, one after the other (the first bootstraps
/// the admin token; the others find it in the store).
fn start_replicas(url: &str, dir: &Path, n: usize, extra: &[(&str, &str)]) -> Replicas {
    let key = dir.join("master.key");
    let mut nodes = Vec::new();
    let mut token = String::new();
    for i in 0..n {
        let data = dir.join(format!("node{i}"));
        let node_id = format!("node-{i}");
        let mut envs: Vec<(&str, &std::ffi::OsStr)> = vec![
            ("KMS_STORE", url.as_ref()),
            ("KMS_NODE_ID", node_id.as_ref()),
            ("KMS_MASTER_KEY_FILE", key.as_os_str()),
        ];
        envs.extend(extra.iter().map(|(k, v)| (*k, v.as_ref())));
        let s = serve_with(&["--data-dir".as_ref(), data.as_os_str()], &envs, None);
        if i == 0 {
            token = s.token.clone().expect("the first replica bootstraps");
        } else {
            assert!(s.token.is_none(), "only the first replica bootstraps");
        }
        nodes.push(s);
    }
    Replicas { nodes, token }
}

async fn clients(r: &Replicas) -> Vec<Client> {
    let mut out = Vec::new();
    for s in &r.nodes {
        out.push(
            Client::connect_to(
                Front::Grpc,
                &s.grpc,
                &format!("http://{}", s.http),
                &r.token,
            )
            .await,
        );
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// Poll every replica but `from` until `done` holds on it; the time each
/// took, measured from `t0`.
async fn until_all(
    cs: &mut [Client],
    from: usize,
    t0: Instant,
    name: &str,
    want_ok: bool,
) -> Vec<Duration> {
    let mut pending: Vec<usize> = (0..cs.len()).filter(|i| *i != from).collect();
    let mut took = Vec::new();
    while !pending.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{name}: replicas {pending:?} did not converge in 10 s"
        );
        let mut still = Vec::new();
        for &b in &pending {
            match cs[b].sign(name, b"convergence").await {
                Ok(_) if want_ok => took.push(t0.elapsed()),
                Err(e) if !want_ok => {
                    e.expect(400, tonic::Code::FailedPrecondition, &e.code);
                    took.push(t0.elapsed());
                }
                Ok(_) => still.push(b),
                Err(e) if e.grpc == Some(tonic::Code::NotFound) => still.push(b),
                Err(e) => panic!("{name} on replica {b}: {e:?}"),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    took
}

/// Item 2 of issue 10: create→usable and disable→refused across 2 and 3
/// replicas, p50/p99 over 100 trials each; p99 must be within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convergence_across_two_and_three_replicas() {
    let pg = Pg::start();
    let mut table = Vec::new();
    for n in [2usize, 3] {
        let dir = tempfile::tempdir().unwrap();
        let url = pg.fresh_db(&format!("conv{n}"));
        let r = start_replicas(&url, dir.path(), n, &[]);
        let mut cs = clients(&r).await;
        let (mut created, mut disabled) = (Vec::new(), Vec::new());
        const TRIALS: usize = 100;
        for t in 0..TRIALS {
            let a = t % n;
            let name = format!("c{n}-{t}");
            cs[a].create(&name, "ed25519").await.unwrap();
            let t0 = Instant::now();
            created.extend(until_all(&mut cs, a, t0, &name, true).await);
            // disable on a different replica than the one that created it
            let d = (a + 1) % n;
            cs[d].set_state(&name, 1, "disabled").await.unwrap();
            let t0 = Instant::now();
            disabled.extend(until_all(&mut cs, d, t0, &name, false).await);
        }
        created.sort();
        disabled.sort();
        for (what, v) in [
            ("create -> usable", &created),
            ("disable -> refused", &disabled),
        ] {
            table.push(format!(
                "| {n} | {what} | {} | {} | {} | {} |",
                v.len(),
                ms(pct(v, 0.50)),
                ms(pct(v, 0.99)),
                ms(*v.last().unwrap())
            ));
            assert!(
                pct(v, 0.99) <= Duration::from_secs(1),
                "{n} replicas, {what}: p99 {} ms is over 1 s",
                ms(pct(v, 0.99))
            );
        }
    }
    eprintln!("| replicas | change | samples | p50 ms | p99 ms | max ms |");
    eprintln!("|---:|---|---:|---:|---:|---:|");
    for row in table {
        eprintln!("{row}");
    }
}

/// Item 3 of issue 10: PostgreSQL killed under load. Sign and verify keep
/// working on every replica from its snapshot; mutations fail fast with
/// UNAVAILABLE and retry advice; when the database returns, mutations work
/// again and changes propagate, without restarting any replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load() {
    let mut pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.fresh_db("outage");
    let r = start_replicas(&url, dir.path(), 2, &[("KMS_STORE_RECONCILE_SECS", "1")]);
    let mut cs = clients(&r).await;
    cs[0].create("steady", "ed25519").await.unwrap();
    until_all(&mut cs, 0, Instant::now(), "steady", true).await;

    // load: sign + verify on both replicas until told to stop
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for s in &r.nodes {
        let mut c = Client::connect_to(
            Front::Grpc,
            &s.grpc,
            &format!("http://{}", s.http),
            &r.token,
        )
        .await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.sign("steady", b"under load").await {
                    Ok(s) => match c.verify(&s.kid, b"under load", &s.signature).await {
                        Ok(v) if v.valid => ok += 1,
                        other => failed.push(format!("verify: {other:?}")),
                    },
                    Err(e) => failed.push(format!("sign: {e:?}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    pg.kill();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, what) in [(0usize, "create"), (1, "rotate")] {
        let t = Instant::now();
        let e = if what == "create" {
            cs[i].create("during-outage", "ed25519").await.unwrap_err()
        } else {
            cs[i].rotate("steady", "").await.unwrap_err()
        };
        let took = t.elapsed();
        assert_eq!(e.grpc, Some(tonic::Code::Unavailable), "{what}: {e:?}");
        assert!(e.retry_after_ms.is_some(), "{what}: retry advice: {e:?}");
        assert!(
            took < Duration::from_secs(4),
            "{what} took {took:?} to fail; it should fail fast"
        );
        eprintln!(
            "{what} during the outage failed in {} ms: {}",
            took.as_millis(),
            e.message
        );
    }
    // still ready: the snapshot serves (the store shows as degraded)
    let ready = common::process::http_get(&r.nodes[1].http, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("degraded"), "{ready}");
    while outage.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    pg.resume();
    let back = Instant::now();
    loop {
        match cs[0].create("after-outage", "ed25519").await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.grpc, Some(tonic::Code::Unavailable), "{e:?}");
                assert!(
                    back.elapsed() < Duration::from_secs(15),
                    "mutations did not resume: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let resumed = back.elapsed();
    // the listener reconnected: a change on replica 0 reaches replica 1
    let t0 = Instant::now();
    let took = until_all(&mut cs, 0, t0, "after-outage", true).await;
    cs[1].rotate("steady", "").await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for h in load {
        let (ok, failed) = h.await.unwrap();
        assert!(
            failed.is_empty(),
            "sign/verify failed during the outage: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 0);
    eprintln!(
        "outage: {total} sign+verify pairs, none failed; mutations resumed {} ms after PostgreSQL came back; a new key reached the other replica {} ms after its creation",
        resumed.as_millis(),
        took[0].as_millis()
    );
    drop(r);
}

/// Item 4 of issue 10: two replicas racing one `op_id` mutation: exactly
/// one applies, and both answer with its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_one_op_id() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.fresh_db("race");
    let r = start_replicas(&url, dir.path(), 2, &[]);
    let mut cs = clients(&r).await;
    let (mut c0, mut c1) = {
        let mut it = cs.drain(..);
        (it.next().unwrap(), it.next().unwrap())
    };
    for round in 0..20 {
        let name = format!("raced-{round}");
        let req = || CreateKeyRequest {
            name: name.clone(),
            algorithm: "ed25519".into(),
            op_id: format!("create-{round}"),
            ..Default::default()
        };
        let (a, b) = tokio::join!(c0.create_key(req()), c1.create_key(req()));
        let (a, b) = (a.unwrap().key.unwrap(), b.unwrap().key.unwrap());
        assert_eq!(a.versions.len(), 1, "round {round}");
        assert_eq!(
            a.versions[0].public_key_der, b.versions[0].public_key_der,
            "round {round}: both answers name the one key that was created"
        );

        let op = format!("rotate-{round}");
        let (a, b) = tokio::join!(c0.rotate(&name, &op), c1.rotate(&name, &op));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.kid, format!("{name}#v2"), "round {round}");
        assert_eq!(a.kid, b.kid, "round {round}");
        // exactly one rotation applied, as both replicas see it
        for c in [&mut c0, &mut c1] {
            let k = c.get_key(&name, false).await.unwrap();
            assert_eq!(k.versions.len(), 2, "round {round}: {k:?}");
            assert_eq!(k.primary_version, 2);
        }

        // without an op_id both rotations apply, one after the other
        let (a, b) = tokio::join!(c0.rotate(&name, ""), c1.rotate(&name, ""));
        let (a, b) = (a.unwrap().kid, b.unwrap().kid);
        let mut kids = [a, b];
        kids.sort();
        assert_eq!(
            kids,
            [format!("{name}#v3"), format!("{name}#v4")],
            "round {round}"
        );
    }
    // each replica wrote its own audit chain, naming itself
    drop(c0);
    drop(c1);
    let mut dirs = Vec::new();
    for (i, s) in r.nodes.into_iter().enumerate() {
        let st = s.terminate();
        assert!(st.success(), "replica {i} exit: {st:?}");
        dirs.push(dir.path().join(format!("node{i}/audit")));
    }
    let out = std::process::Command::new(common::process::BIN)
        .args(["audit", "verify"])
        .args(&dirs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("(node node-0)"), "{text}");
    assert!(text.contains("(node node-1)"), "{text}");
    eprintln!("{text}");
}

/// Key settings and deletion reach every replica: a floor set on one is
/// enforced on the other, and a key deleted on one is gone on the other
/// (then made again under the same name, the other sees the new key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_deletion_reach_every_replica() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.fresh_db("settings");
    let r = start_replicas(&url, dir.path(), 2, &[]);
    let mut cs = clients(&r).await;
    cs[0].create("floor", "ed25519").await.unwrap();
    let old = cs[0].sign("floor", b"m").await.unwrap().signature;
    cs[0].rotate("floor", "").await.unwrap();
    let until = |cond: bool, what: &str, t0: Instant| {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        !cond
    };
    // the other replica verifies v1 (and caches its public key) first
    let t0 = Instant::now();
    while until(
        cs[1]
            .verify("floor#v1", b"m", &old)
            .await
            .is_ok_and(|v| v.valid),
        "v1 verifies on replica 1",
        t0,
    ) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cs[0]
        .update_key(ron_kms::proto::UpdateKeyRequest {
            name: "floor".into(),
            min_decryption_version: Some(2),
            deletion_allowed: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let t0 = Instant::now();
    while until(
        cs[1]
            .verify("floor#v1", b"m", &old)
            .await
            .is_err_and(|e| e.grpc == Some(tonic::Code::FailedPrecondition)),
        "the floor holds on replica 1",
        t0,
    ) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("floor on replica 1 after {} ms", t0.elapsed().as_millis());
    cs[1].delete_key("floor").await.unwrap();
    let t0 = Instant::now();
    while until(
        cs[0]
            .get_key("floor", false)
            .await
            .is_err_and(|e| e.grpc == Some(tonic::Code::NotFound)),
        "the delete reaches replica 0",
        t0,
    ) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // made again on replica 0: replica 1 sees the new key, v1 only
    cs[0].create("floor", "ecdsa-p256").await.unwrap();
    let t0 = Instant::now();
    while until(
        cs[1]
            .get_key("floor", false)
            .await
            .is_ok_and(|k| k.algorithm == "ecdsa-p256" && k.versions.len() == 1),
        "the new key reaches replica 1",
        t0,
    ) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
