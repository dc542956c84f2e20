//! The process killed mid-load and restarted.
use super::*;

/// Once with each audit durability (`KMS_AUDIT_SYNC`): `fsync`, where a
/// record is on the disk before its answer, and `write`, where it is in the
/// kernel, which a killed process cannot take with it.
pub(super) async fn kill_9(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("kill-9");
    for sync in ["fsync", "write"] {
        v.fact("run", format!("KMS_AUDIT_SYNC={sync}"));
        kill_9_with(a, &mut v, sync).await?;
    }
    Ok(v)
}

async fn kill_9_with(a: &DrillArgs, v: &mut Verdict, sync: &str) -> Result<(), String> {
    let env = [("KMS_AUDIT_SYNC", sync)];
    let base = v.phases.len();
    let (before, _, after) = lengths(a.short, (20.0, 0.0, 20.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let mut s = start_service(&data, &env)?;
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
    let mut s2 = start_service(&data, &env)?;
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
    let after_t = &v.phases[base + 1].tally;
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
    let after_signs = v.phases[base + 1].tally.ok;
    stop_and_verify(s2, &data, v);
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
    Ok(())
}
