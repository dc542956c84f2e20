//! The network-jitter drill: delay, jitter and loss on the path between
//! the bench and the service, in a network namespace the drill makes.
//!
//! `tc netem` is the usual tool, but this kernel has no `sch_netem`, so the
//! drill impairs the path with the same effect at the same layer: every TCP
//! packet crossing the namespace's end of a veth pair goes through an
//! NFQUEUE (iptables-legacy), and `kms-bench impair` — running inside the
//! namespace — holds each one for its delay or drops it, packet by packet,
//! before it is let through. The kernel's TCP stacks see real delay and real
//! loss (retransmissions, RTO backoff); nothing in the service or the client
//! is told. Both directions are impaired, so the round trip gains twice the
//! delay. Packets leave in the order they came (jitter without reordering).
//!
//! Needs root (network namespaces, veth, iptables) and the Debian packages
//! iproute2 and iptables (scripts/install-deps.sh --test installs them).
use std::collections::VecDeque;
use std::io::BufRead as _;
use std::sync::{Arc, Mutex};

use ron_kms::proto::SignRequest;

use super::*;

/// The NFQUEUE number the drill uses inside its own namespace.
const QUEUE: u16 = 7;

/// The impairment, per direction.
#[derive(Clone, Copy, Default)]
struct Impair {
    delay: Duration,
    jitter: Duration,
    loss: f64,
}

/// `kms-bench impair`: bind NFQUEUE `queue` in the current namespace and
/// delay or drop what it carries. Its stdin takes `set DELAY_MS JITTER_MS
/// LOSS` lines (LOSS from 0 to 1); it prints `ready` once bound and ends,
/// letting every held packet through, when stdin closes.
pub fn impair(queue: u16) -> Result<ExitCode, String> {
    let mut q = nfq::Queue::open().map_err(|e| format!("netlink: {e}"))?;
    q.bind(queue)
        .map_err(|e| format!("bind queue {queue}: {e}"))?;
    // metadata only: the verdict needs the packet id, not the payload
    q.set_copy_range(queue, 0).map_err(|e| e.to_string())?;
    q.set_queue_max_len(queue, 1 << 16)
        .map_err(|e| e.to_string())?;
    q.set_recv_gso(queue, true).map_err(|e| e.to_string())?;
    q.set_nonblocking(true);
    let params = Arc::new(Mutex::new(Impair::default()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (params, done) = (params.clone(), done.clone());
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let w: Vec<&str> = line.split_whitespace().collect();
                let ms = |s: &str| Duration::from_secs_f64(s.parse::<f64>().unwrap_or(0.0) / 1e3);
                match w.as_slice() {
                    ["set", d, j, l] => {
                        *params.lock().unwrap_or_else(|p| p.into_inner()) = Impair {
                            delay: ms(d),
                            jitter: ms(j),
                            loss: l.parse::<f64>().unwrap_or(0.0).clamp(0.0, 1.0),
                        }
                    }
                    _ => eprintln!("kms-bench impair: unknown command {:?}", line.trim()),
                }
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    // xorshift64*: the drill's dice, not cryptography
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut uniform = move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut last_release = Instant::now();
    loop {
        let stopping = done.load(std::sync::atomic::Ordering::Acquire);
        let mut got = 0;
        while got < 256 {
            match q.recv() {
                Ok(mut m) => {
                    got += 1;
                    let p = *params.lock().unwrap_or_else(|p| p.into_inner());
                    if !stopping && p.loss > 0.0 && uniform() < p.loss {
                        m.set_verdict(nfq::Verdict::Drop);
                        q.verdict(m).map_err(|e| e.to_string())?;
                        continue;
                    }
                    let spread = p.jitter.as_secs_f64() * (2.0 * uniform() - 1.0);
                    let wait = (p.delay.as_secs_f64() + spread).max(0.0);
                    // FIFO: a packet never overtakes the one before it
                    let at = (Instant::now() + Duration::from_secs_f64(wait)).max(last_release);
                    last_release = at;
                    m.set_verdict(nfq::Verdict::Accept);
                    held.push_back((at, m));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("nfqueue: {e}")),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(at, _)| *at <= now || stopping) {
            if let Some((_, m)) = held.pop_front() {
                q.verdict(m).map_err(|e| e.to_string())?;
            }
        }
        if stopping && held.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        if got == 0 {
            let next = held
                .front()
                .map(|(at, _)| at.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(1));
            std::thread::sleep(next.min(Duration::from_millis(1)));
        }
    }
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e} (scripts/install-deps.sh --test)", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The drill's namespace, its veth pair and firewall rules; removed on drop
/// (deleting the namespace deletes its veth end, which deletes the pair).
struct Netns {
    name: String,
    /// The namespace side's address: the service listens here.
    inner: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let id = std::process::id();
        let name = format!("ron-kms-drill-{id}");
        let (outer_if, inner_if) = (
            format!("rkd{}o", id % 100_000),
            format!("rkd{}i", id % 100_000),
        );
        let net = format!("10.213.{}", (id % 63) * 4);
        let outer = format!("{net}.1");
        let inner = format!("{net}.2");
        let ns = Netns {
            name: name.clone(),
            inner: inner.clone(),
        };
        sh(&["ip", "netns", "add", &name])?;
        let inns = |args: &[&str]| {
            let mut a = vec!["ip", "netns", "exec", &name];
            a.extend_from_slice(args);
            sh(&a)
        };
        sh(&[
            "ip", "link", "add", &outer_if, "type", "veth", "peer", "name", &inner_if,
        ])?;
        sh(&["ip", "link", "set", &inner_if, "netns", &name])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{outer}/30"),
            "dev",
            &outer_if,
        ])?;
        sh(&["ip", "link", "set", &outer_if, "up"])?;
        inns(&[
            "ip",
            "addr",
            "add",
            &format!("{inner}/30"),
            "dev",
            &inner_if,
        ])?;
        inns(&["ip", "link", "set", &inner_if, "up"])?;
        inns(&["ip", "link", "set", "lo", "up"])?;
        let q = QUEUE.to_string();
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            inns(&[
                "iptables-legacy",
                "-A",
                chain,
                dir,
                &inner_if,
                "-p",
                "tcp",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &q,
                "--queue-bypass",
            ])?;
        }
        Ok(ns)
    }

    /// `ip netns exec NAME` in front of a command.
    fn exec(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// The impairment process inside the namespace.
struct Impairer {
    child: Child,
}

impl Impairer {
    fn start(ns: &Netns) -> Result<Impairer, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = ns
            .exec(&exe)
            .args(["impair", "--queue", &QUEUE.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let _ = child.kill();
            return Err("kms-bench impair did not start".into());
        }
        Ok(Impairer { child })
    }

    fn set(&mut self, delay_ms: f64, jitter_ms: f64, loss: f64) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "set {delay_ms} {jitter_ms} {loss}")
            .and_then(|_| stdin.flush())
            .map_err(|e| e.to_string())
    }
}

impl Drop for Impairer {
    fn drop(&mut self) {
        crate::child::close_and_reap(&mut self.child, Duration::from_secs(3));
    }
}

/// gRPC channels as a careful client makes them for a lossy path: a
/// connect timeout, and HTTP/2 keep-alive pings so a dead connection is
/// noticed and replaced.
async fn careful_channels(ep: &Endpoint) -> Result<Vec<KmsClient<Channel>>, String> {
    let mut chans = Vec::new();
    for _ in 0..4 {
        let ch = tonic::transport::Endpoint::from_shared(ep.grpc.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| format!("{}: {e}", ep.grpc))?;
        chans.push(KmsClient::new(ch));
    }
    Ok(chans)
}

/// `n` workers over `chans`, each call under `deadline`.
fn careful_clients(
    chans: &[KmsClient<Channel>],
    token: &str,
    n: usize,
    deadline: Duration,
) -> Result<Vec<Client>, String> {
    (0..n)
        .map(|i| {
            Client::grpc(chans[i % chans.len()].clone(), token)
                .map(|c| Client::Deadline(Box::new(c), deadline))
        })
        .collect()
}

/// Sign on `c` (under `deadline` per try) until it works or `limit` passes.
async fn until_ok_on(mut c: Client, work: &Work, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if c.call(work).await.is_ok() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// What a client sees when its own deadline passes or its connection is
/// found dead: not an answer from the server.
const CLIENT_SIDE: &[&str] = &[
    "client_deadline",
    "grpc_cancelled",
    "grpc_deadlineexceeded",
    "grpc_unavailable",
];

pub(super) async fn network_jitter(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("network-jitter");
    let (before, during, after) = lengths(a.short, (20.0, 60.0, 20.0));
    let blackhole = if a.short { 3.0 } else { 15.0 };
    let (delay_ms, jitter_ms, loss) = (25.0, 10.0, 0.02);
    let deadline = Duration::from_secs(2);
    let ns = Netns::create()?;
    let mut imp = Impairer::start(&ns)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = ns.exec(&exe);
    cmd.args(["service", "--data-dir", &data.to_string_lossy()])
        .args(["--listen", &ns.inner])
        .env("KMS_LOG", "warn");
    let s = Server::start_cmd(cmd, Transport::Grpc, None)?;
    let ep = s.endpoint.clone();
    // a new veth pair can take a moment to carry traffic
    let addr = ep.grpc.trim_start_matches("http://").to_string();
    let t = Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!("{addr} is not reachable through the veth pair"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    v.fact(
        "path",
        format!(
            "bench in the host namespace, service in namespace {} behind a veth pair; TCP in both directions through an NFQUEUE held or dropped by `kms-bench impair` (no sch_netem in this kernel)",
            ns.name
        ),
    );
    v.fact(
        "client",
        format!(
            "deadline {} s per call, connect timeout 1 s, HTTP/2 keep-alive ping every 1 s (1 s timeout)",
            deadline.as_secs()
        ),
    );
    sign_verify(&ep, "jitter", true).await?;
    let g = closed;
    let n = a.concurrency;
    // one set of channels through every phase: the partition's dead
    // connections must be noticed and replaced by the client itself
    let chans = careful_channels(&ep).await?;
    let clients = || careful_clients(&chans, &ep.token, n, deadline);
    v.phases.push(
        phase(
            "before",
            vec![g(sign_verify(&ep, "jitter", false).await?, clients()?)],
            before,
        )
        .await,
    );
    imp.set(delay_ms, jitter_ms, loss)?;
    v.fact(
        "fault 1",
        format!(
            "{delay_ms} ms ± {jitter_ms} ms delay and {:.0}% loss each way, {during:.0} s",
            loss * 100.0
        ),
    );
    v.phases.push(
        phase(
            "delay + jitter + loss",
            vec![g(sign_verify(&ep, "jitter", false).await?, clients()?)],
            during,
        )
        .await,
    );
    v.fact(
        "fault 2",
        format!("every packet dropped for {blackhole:.0} s (a partition)"),
    );
    let mix = sign_verify(&ep, "jitter", false).await?;
    imp.set(0.0, 0.0, 1.0)?;
    v.phases
        .push(phase("partition", vec![g(mix, clients()?)], blackhole).await);
    imp.set(0.0, 0.0, 0.0)?;
    let probe = Work::Sign(SignRequest {
        context: Vec::new(),
        key: "jitter".into(),
        message: b"probe".to_vec(),
        op_id: String::new(),
        ..Default::default()
    });
    let one = careful_clients(&chans, &ep.token, 1, deadline)?
        .pop()
        .ok_or("no client")?;
    v.recovery(
        "recovery (path healed -> first sign ok on the client's own channels)",
        until_ok_on(one, &probe, Duration::from_secs(30)).await,
        "sign works again within 3 s of the path healing, without a new client",
        Duration::from_secs(3),
    );
    v.phases.push(
        phase(
            "after",
            vec![g(sign_verify(&ep, "jitter", false).await?, clients()?)],
            after,
        )
        .await,
    );
    // what failed, by side
    let mut server_side = BTreeMap::new();
    for p in &v.phases {
        for (c, k) in &p.tally.errors {
            if !SHED_CODES.contains(&c.as_str()) && !CLIENT_SIDE.contains(&c.as_str()) {
                *server_side.entry(c.clone()).or_insert(0u64) += k;
            }
        }
    }
    v.check(
        if server_side.is_empty() {
            "no request failed other than shed with retry advice or the client's own deadline"
                .to_string()
        } else {
            format!("requests failed otherwise: {server_side:?}")
        },
        server_side.is_empty(),
    );
    v.check_ok_share(1, "under delay, jitter and loss");
    let base_p50 = v.phases[0].tally.latency_us.value_at_quantile(0.5) as f64 / 1e3;
    let jit_p50 = v.phases[1].tally.latency_us.value_at_quantile(0.5) as f64 / 1e3;
    v.check(
        format!(
            "the delay shows: p50 {jit_p50:.1} ms under it against {base_p50:.1} ms before (≥ the {:.0} ms round trip added)",
            2.0 * delay_ms
        ),
        jit_p50 >= base_p50 + 2.0 * delay_ms * 0.8,
    );
    let worst = v.phases[2].tally.latency_us.max() as f64 / 1e6;
    v.check(
        format!(
            "no call outlived its deadline in the partition (longest {worst:.2} s, deadline {} s + 0.5 s)",
            deadline.as_secs()
        ),
        worst <= deadline.as_secs_f64() + 0.5,
    );
    let part = &v.phases[2].tally;
    let part_ok = part.ok;
    let part_failed: u64 = part.errors.values().sum();
    v.fact(
        "partition",
        format!("{part_ok} ok (answered before the cut), {part_failed} ended by the client's deadline or a dead connection"),
    );
    v.check_ok_share(3, "after the path healed");
    v.check_key(&ep, "jitter").await;
    drop(imp);
    stop_and_verify(s, &data, &mut v);
    drop(ns);
    Ok(v)
}
