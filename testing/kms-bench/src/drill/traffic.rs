//! Drills on what clients send: bursts, rotation floods, many keys, hostile
//! clients.
use super::*;

pub(super) async fn burst(a: &DrillArgs) -> Result<Verdict, String> {
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
    // Open-loop workers: enough that the client never runs out at the
    // steady rate, and during the burst as many requests in flight as a
    // crowd of callers would have (more than the admission gates hold plus
    // their queues: 2 x (64 + 256) for sign and verify), so the server has
    // to shed rather than the client queueing the excess.
    let n = (a.concurrency * 8).max(64);
    let crowd = (a.concurrency * 64).max(1024);
    v.fact(
        "requests in flight at most",
        format!("{n} before and after, {crowd} during the burst"),
    );
    for (name, secs, r, k) in [
        ("before", before, rate, n),
        ("during", during, rate * 10.0, crowd),
        ("after", after, rate, n),
    ] {
        let p = phase(
            name,
            vec![Group {
                clients: workers(&ep, k).await?,
                mix: sign_verify(&ep, "burst", false).await?,
                pace: open(r),
            }],
            secs,
        )
        .await;
        v.phases.push(p);
    }
    v.check_only_sheds();
    let t = &v.phases[1].tally;
    let shed: u64 = t.errors.values().sum();
    let answered = t.ok + shed;
    v.fact(
        "load generator",
        format!(
            "answered {answered} of the {:.0} requests due in the burst: on 2 shared cores the generator falls behind the 10x schedule, and open-loop latency is counted from each request's due time, so the burst's percentiles include the generator's own backlog",
            rate * 10.0 * during
        ),
    );
    v.check(
        format!(
            "the server sheds the excess with retry advice: {shed} of {answered} burst requests shed"
        ),
        shed > 0,
    );
    v.check_ok_share(2, "after the burst");
    v.check_key(&ep, "burst").await;
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}

pub(super) async fn rotate_flood(a: &DrillArgs) -> Result<Verdict, String> {
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

pub(super) async fn hostile_clients(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("hostile-clients");
    let (before, during, after) = lengths(a.short, (20.0, 60.0, 20.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    // a short header deadline so the drill sees slow-loris connections cut
    let s = start_service(&data, &[("KMS_HEADER_TIMEOUT_MS", "1000")])?;
    let ep = s.endpoint.clone();
    let http = ep.http.trim_start_matches("http://").to_string();
    sign_verify(&ep, "hostile", true).await?;
    v.steady(&ep, "hostile", "before", a.concurrency, before)
        .await?;
    v.fact(
        "attacks",
        "50 slow-loris connections (a header byte every 300 ms), gzip bombs (64 MiB of zeros in ~64 KiB), 2 MiB bodies, on the HTTP port; an HTTP/2 rapid-reset stream flood on the gRPC port; all through the phase",
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
    let flood = {
        let (grpc, stop, token) = (
            ep.grpc.trim_start_matches("http://").to_string(),
            stop.clone(),
            ep.token.clone(),
        );
        tokio::spawn(async move { h2_flood(&grpc, &token, &stop).await })
    };
    v.steady(&ep, "hostile", "during", a.concurrency, during)
        .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = abuse.await.map_err(|e| e.to_string())?;
    let flood = flood.await.map_err(|e| e.to_string())?;
    v.fact(
        "HTTP/2 stream flood (rapid reset on the gRPC port)",
        format!(
            "{} connections, {} streams opened and cancelled; ended by the server: {} (GOAWAY ENHANCE_YOUR_CALM {}, socket closed {}), still open at the end: {}; most streams on one connection: {}",
            flood.connections,
            flood.streams,
            flood.calm + flood.closed,
            flood.calm,
            flood.closed,
            flood.open_at_end,
            flood.most_streams
        ),
    );
    v.check(
        "the server ends every flooding connection (at most one still open when the phase ends)",
        flood.connections > 1 && flood.open_at_end <= 1 && flood.other.is_empty(),
    );
    if !flood.other.is_empty() {
        v.fact(
            "flood connections ended otherwise",
            format!("{:?}", flood.other),
        );
    }
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
    v.steady(&ep, "hostile", "after", a.concurrency, after)
        .await?;
    v.check_only_sheds();
    let k = keys_ok(&ep, &["hostile".to_string()]).await;
    v.check("the server still serves (no key lost)", k == 1);
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}

/// What the stream flood saw.
#[derive(Default)]
struct Flood {
    connections: u64,
    streams: u64,
    /// Connections the server ended with GOAWAY ENHANCE_YOUR_CALM.
    calm: u64,
    /// Connections the server closed while the client was still writing
    /// (the GOAWAY could not be read before the socket went).
    closed: u64,
    /// Connections ended in any other way.
    other: BTreeMap<String, u64>,
    open_at_end: u64,
    most_streams: u64,
}

/// HTTP/2 rapid reset (CVE-2023-44487) on `addr` until `stop`: on each
/// connection open streams and cancel them at once, as fast as the client
/// can, until the server ends the connection; then connect again.
async fn h2_flood(addr: &str, token: &str, stop: &std::sync::atomic::AtomicBool) -> Flood {
    use std::sync::atomic::Ordering::Relaxed;
    let mut f = Flood::default();
    while !stop.load(Relaxed) {
        let Ok(sock) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok((send, conn)) = h2::client::handshake(sock).await else {
            continue;
        };
        f.connections += 1;
        let conn = tokio::spawn(conn);
        let mut n = 0u64;
        let mut refused = false;
        let mut send = send;
        while !stop.load(Relaxed) && n < 100_000 {
            // h2's contract: wait until the connection can take another
            // stream. Past the server's stream limit a new stream is
            // pending open, and sending one more then fails on our side
            // (`Rejected`), which is not the server ending the connection.
            send = match send.ready().await {
                Ok(s) => s,
                Err(_) => {
                    refused = true;
                    break;
                }
            };
            let Ok(head) = http::Request::builder()
                .method("POST")
                .uri("http://localhost/ron.kms.v1.Kms/Sign")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {token}"))
                .body(())
            else {
                break;
            };
            match send.send_request(head, false) {
                Ok((_resp, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(_) => {
                    refused = true;
                    break;
                }
            }
            n += 1;
            if n.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
        f.streams += n;
        f.most_streams = f.most_streams.max(n);
        if !refused {
            if stop.load(Relaxed) {
                // cut short by the end of the phase, not by the server
                f.open_at_end += 1;
            } else {
                *f.other
                    .entry("100,000 streams without being cut off".into())
                    .or_insert(0) += 1;
            }
            conn.abort();
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(5), conn).await {
            Ok(Ok(Err(e))) if e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) => f.calm += 1,
            Ok(Ok(Err(e))) if e.is_io() => f.closed += 1,
            Ok(Ok(Err(e))) => *f.other.entry(e.to_string()).or_insert(0) += 1,
            Ok(Ok(Ok(()))) => *f.other.entry("ended cleanly".into()).or_insert(0) += 1,
            Ok(Err(e)) => *f.other.entry(e.to_string()).or_insert(0) += 1,
            Err(_) => {
                *f.other
                    .entry("refused, but not ended within 5 s".into())
                    .or_insert(0) += 1
            }
        }
    }
    f
}

fn rss_mib(pid: u32) -> f64 {
    stats::proc_sample(pid)
        .map(|p| p.rss_kib as f64 / 1024.0)
        .unwrap_or(0.0)
}

pub(super) async fn memory_pressure(a: &DrillArgs) -> Result<Verdict, String> {
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
                prepare(
                    c,
                    &token,
                    Op::Verify,
                    Algorithm::Ed25519,
                    &name,
                    32,
                    false,
                    true,
                )
                .await
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
