//! Driving a plan against a server for a round, and the raw single-core
//! (and all-core) crypto speed beside it.
use super::*;

/// One measured run of `plan` against `srv` at `conc` workers.
pub(crate) async fn measure(
    srv: &Server,
    a: &RunArgs,
    plan: &Plan,
    conc: usize,
    role: &str,
) -> Result<RunReport, String> {
    let ep = &srv.endpoint;
    let shared = match ep.transport {
        Transport::Grpc => load::grpc_clients(ep, a.connections).await?,
        Transport::Http => Vec::new(),
    };
    let mut groups = Vec::new();
    let mut made = 0usize;
    let mut workers_total = 0usize;
    for g in &plan.groups {
        let token = match g.tenant {
            Tenant::A => ep.token.clone(),
            Tenant::B => ep.token_b.clone().unwrap_or_default(),
        };
        let n = match g.workers {
            Workers::Share(f) => ((conc as f64 * f).round() as usize).max(1),
            Workers::Fixed(n) => n,
        };
        if matches!(g.workers, Workers::Share(_)) {
            workers_total += n;
        }
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(match ep.transport {
                Transport::Grpc => Client::grpc(shared[made % shared.len()].clone(), &token)?,
                Transport::Http => Client::http(ep, &token).await?,
            });
            made += 1;
        }
        groups.push(Group {
            clients,
            mix: Mix::new(g.entries.clone()),
            pace: g.pace,
        });
    }
    let (warmup, duration) = (
        Duration::from_secs_f64(a.warmup),
        Duration::from_secs_f64(a.duration),
    );
    // /proc readings: at the start and end of the measured window, and the
    // server's RSS every 100 ms in between
    let pid = srv.pid();
    let sampler = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        let s0 = proc_sample(pid).unwrap_or_default();
        let c0 = proc_sample(std::process::id()).unwrap_or_default();
        let t0 = Instant::now();
        let mut peak = s0.rss_kib;
        while t0.elapsed() < duration {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(s) = proc_sample(pid) {
                peak = peak.max(s.rss_kib);
            }
        }
        let s1 = proc_sample(pid).unwrap_or_default();
        let c1 = proc_sample(std::process::id()).unwrap_or_default();
        let secs = t0.elapsed().as_secs_f64();
        (
            (s1.cpu_seconds - s0.cpu_seconds) / secs,
            (c1.cpu_seconds - c0.cpu_seconds) / secs,
            peak,
        )
    });
    let (outcome, window) = load::run(
        groups,
        warmup,
        duration,
        !a.quiet && std::io::stderr().is_terminal(),
    )
    .await;
    let (server_cpu, client_cpu, peak_kib) = sampler.await.map_err(|e| e.to_string())?;
    let secs = window.as_secs_f64();
    let parts: Vec<PartReport> = if outcome.parts.len() > 1 {
        outcome
            .parts
            .iter()
            .map(|(label, t)| PartReport::of(label, t, secs))
            .collect()
    } else {
        Vec::new()
    };
    let tenant_p95: Vec<u64> = parts
        .iter()
        .filter(|p| p.label.starts_with("tenant-"))
        .map(|p| p.figures.p95_us)
        .collect();
    let tenant_p95_skew = (tenant_p95.len() > 1).then(|| {
        let max = *tenant_p95.iter().max().unwrap_or(&1) as f64;
        let min = (*tenant_p95.iter().min().unwrap_or(&1)).max(1) as f64;
        max / min
    });
    let total = PartReport::of(&plan.name, &outcome.total, secs);
    let ops = total.figures.ops_per_sec;
    Ok(RunReport {
        server: role.into(),
        transport: ep.transport.as_str().into(),
        op: plan.name.clone(),
        alg: a.alg.clone(),
        mode: if a.rate.is_some() { "open" } else { "closed" }.into(),
        concurrency: workers_total,
        batch: plan.items(),
        keys: a.keys.max(1),
        connections: if ep.transport == Transport::Grpc {
            a.connections
        } else {
            made
        },
        rate: a.rate,
        audit: role == "service" && !a.no_audit,
        seconds: secs,
        figures: total.figures,
        server_cpu_cores: server_cpu,
        server_cpu_us_per_op: if ops > 0.0 {
            server_cpu * 1e6 / ops
        } else {
            0.0
        },
        client_cpu_cores: client_cpu,
        server_peak_rss_mib: peak_kib as f64 / 1024.0,
        parts,
        tenant_p95_skew,
    })
}

/// [`raw_crypto`] on `threads` threads at once, summed: the ceiling for the
/// whole machine (the load generator shares it in a real run).
pub(crate) fn raw_crypto_all_cores(
    a: &RunArgs,
    alg: Algorithm,
    threads: usize,
) -> Result<f64, String> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| raw_crypto(a, alg)))
            .collect();
        let mut sum = 0.0;
        for h in hs {
            sum += h.join().map_err(|_| "raw crypto thread panicked")??;
        }
        Ok(sum)
    })
}

/// Single-core ops/s of the raw crypto (a preloaded key, no server), for
/// one second: the ceiling no server on one core can beat.
pub(crate) fn raw_crypto(a: &RunArgs, alg: Algorithm) -> Result<f64, String> {
    let b = bare::Bare::new(alg)?;
    let msg = vec![0x5a; a.size];
    let sig = if matches!(a.op, Op::Verify | Op::Sign) {
        b.sign_bytes(&msg)?
    } else {
        Vec::new()
    };
    let ct = if a.op == Op::Unwrap {
        b.wrap_bytes(&msg)?
    } else {
        Vec::new()
    };
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(1) {
        for _ in 0..16 {
            match a.op {
                Op::Sign => drop(b.sign_bytes(&msg)?),
                Op::Verify => drop(b.verify_bytes(&msg, &sig)?),
                Op::Wrap => drop(b.wrap_bytes(&msg)?),
                Op::Unwrap => drop(b.unwrap_bytes(&ct)?),
            }
            n += 1;
        }
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}
