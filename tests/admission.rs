//! Admission under load, over real gRPC on loopback: tenant fair share,
//! a noisy neighbour, and overload at 5× capacity.
//!
//! Capacity is made known and CPU-independent: custody is the fault-
//! injecting wrapper with a fixed latency per call (a slow device; calls
//! run on the blocking pool), and the sign gate has a few units. So
//! capacity = units / latency, and the figures below measure admission's
//! decisions rather than this machine's spare CPU. The figures are printed
//! (`cargo test --test admission -- --nocapture`).
mod common;

use std::time::Duration;

use common::load::{self, ms, open_loop, Tenant};
use common::{process, Client, Front, TestServer};

/// Long enough that the machine's own per-request cost (a few ms in a debug
/// build on a busy 2-core box) is small beside it.
const LATENCY_MS: u64 = 20;

/// The tests measure latency: one at a time, or they measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SIGN_UNITS: u32 = 32;

/// A queued request's longest wait, 5× the device latency.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// On a RAM file system: the audit commit's disk latency is not what
/// these tests measure (see [`TestServer::start_on_tmpfs_with`]).
async fn start() -> TestServer {
    start_with_max_wait(MAX_WAIT).await
}

async fn start_with_max_wait(max_wait: Duration) -> TestServer {
    TestServer::start_on_tmpfs_with(|c| {
        c.faults.injection = true;
        c.faults.latency = Some(Duration::from_millis(LATENCY_MS));
        c.blocking_threads = 64;
        c.admission.inflight[0] = SIGN_UNITS;
        c.admission.queue = 64;
        c.admission.max_wait = max_wait;
    })
    .await
}

/// A tenant with an Ed25519 key `k` (cost 1 unit per sign).
async fn tenant(s: &TestServer, name: &str) -> Tenant {
    let token = s.token(name, "kms:admin,kms:sign");
    let mut c = Client::connect(Front::Grpc, s.running(), &token).await;
    c.create("k", "ed25519").await.unwrap();
    let grpc = format!("http://{}", s.running().grpc_addr);
    Tenant::new(name, token, "k", &grpc, 4).await
}

/// Only answers admission may give: ok, 429 tenant_share / rate_limit,
/// 503 saturated — each refusal with retry advice.
#[track_caller]
fn only_admission_answers(r: &load::Report, who: &str) {
    for o in &r.outcomes {
        match o.code.as_str() {
            "ok" => {}
            "tenant_share" | "rate_limit" => {
                assert_eq!(o.grpc, tonic::Code::ResourceExhausted, "{who}: {o:?}");
                assert!(o.retry_pushback_ms.is_some_and(|m| m > 0), "{who}: {o:?}");
            }
            "saturated" => {
                assert_eq!(o.grpc, tonic::Code::Unavailable, "{who}: {o:?}");
                assert!(o.retry_pushback_ms.is_some_and(|m| m > 0), "{who}: {o:?}");
            }
            _ => panic!("{who}: unexpected answer {o:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_at_80_20_over_capacity_share_fairly() {
    let _one_at_a_time = SERIAL.lock().await;
    let s = start().await;
    let a = tenant(&s, "a").await;
    let b = tenant(&s, "b").await;
    let capacity = SIGN_UNITS as f64 * 1000.0 / LATENCY_MS as f64;
    // 1.5× capacity offered, 80/20
    let (rate_a, rate_b) = (1.2 * capacity, 0.3 * capacity);
    let dur = Duration::from_secs(3);
    let (ra, rb) = tokio::join!(open_loop(&a, rate_a, dur), open_loop(&b, rate_b, dur));
    println!("capacity {capacity:.0}/s; offered A {rate_a:.0}/s, B {rate_b:.0}/s");
    println!("{}", ra.line("A (80%)"));
    println!("{}", rb.line("B (20%)"));
    only_admission_answers(&ra, "A");
    only_admission_answers(&rb, "B");
    let (pa, pb) = (ra.ok_quantile(0.95), rb.ok_quantile(0.95));
    println!(
        "B p95 / A p95 = {:.2}; B success {:.1}%",
        pb.as_secs_f64() / pa.as_secs_f64(),
        100.0 * rb.success_rate()
    );
    assert!(rb.success_rate() >= 0.95, "B's success rate");
    assert!(pb <= pa * 2, "B's p95 {pb:?} vs A's {pa:?}");
    // A was held to its share (refused as tenant_share), not starved
    assert!(ra.by_code().get("tenant_share").copied().unwrap_or(0) > 0);
    assert!(ra.ok_per_sec() > 0.2 * capacity, "A keeps its share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_10x_load_does_not_slow_another() {
    let _one_at_a_time = SERIAL.lock().await;
    // A queued request that waits out `max_wait` is shed. On this shared
    // 2-core host the whole process (server and load generator) sometimes
    // stalls for ~100 ms — every tenant's p99, noisy's included, then
    // reads ~100 ms — and with a 100 ms `max_wait` such a stall sheds a
    // dozen of quiet's requests however fair the gate is. 250 ms keeps the
    // wait bounded and leaves what is measured to the gate's decisions.
    let s = start_with_max_wait(Duration::from_millis(250)).await;
    let a = tenant(&s, "noisy").await;
    let b = tenant(&s, "quiet").await;
    // quiet at an eighth of capacity; noisy at 10× quiet's rate, which
    // with quiet's puts the service at 1.4× capacity
    let rate_b = SIGN_UNITS as f64 * 1000.0 / LATENCY_MS as f64 / 8.0;
    let baseline = open_loop(&b, rate_b, Duration::from_secs(2)).await;
    println!("{}", baseline.line("quiet alone"));
    let dur = Duration::from_secs(3);
    let (ra, rb) = tokio::join!(
        open_loop(&a, 10.0 * rate_b, dur),
        open_loop(&b, rate_b, dur)
    );
    println!("{}", ra.line("noisy (10x quiet's rate)"));
    println!("{}", rb.line("quiet with noisy"));
    only_admission_answers(&ra, "noisy");
    only_admission_answers(&rb, "quiet");
    let (p0, p1) = (baseline.ok_quantile(0.95), rb.ok_quantile(0.95));
    println!(
        "quiet p95 loaded / alone = {:.2} ({:.2} ms / {:.2} ms)",
        p1.as_secs_f64() / p0.as_secs_f64(),
        ms(p1),
        ms(p0)
    );
    assert_eq!(baseline.success_rate(), 1.0);
    // (a stall can still cost quiet a refusal: its requests pile up while
    // nothing finishes, and past its share of 16 units one is refused for
    // the share, as the rule says; CI saw 1 of 600 once)
    assert!(rb.success_rate() >= 0.99, "quiet's success rate");
    assert!(p1 <= p0 * 2, "quiet p95 {p1:?} vs its baseline {p0:?}");
}

/// `kms_shed_seconds` from a Prometheus text: (count, count ≤ `le`).
fn shed_histogram(text: &str, front: &str, le: &str) -> (f64, f64) {
    let find = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        find(&format!("kms_shed_seconds_count{{front=\"{front}\"}}")),
        find(&format!(
            "kms_shed_seconds_bucket{{front=\"{front}\",le=\"{le}\"}}"
        )),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_times_capacity_is_shed_fast_with_bounded_memory() {
    let _one_at_a_time = SERIAL.lock().await;
    const LAT: u64 = 10;
    const UNITS: u32 = 8;
    const MAX_WAIT_MS: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let served = tokio::task::block_in_place(|| {
        process::serve_with(
            &["--data-dir".as_ref(), data.as_os_str()],
            &[
                ("KMS_FAULT_INJECTION", "true".as_ref()),
                ("KMS_FAULT_LATENCY_MS", LAT.to_string().as_ref()),
                ("KMS_MAX_INFLIGHT_SIGN", UNITS.to_string().as_ref()),
                ("KMS_BLOCKING_THREADS", "32".as_ref()),
                (
                    "KMS_ADMISSION_MAX_WAIT_MS",
                    MAX_WAIT_MS.to_string().as_ref(),
                ),
            ],
            None,
        )
    });
    let token = served.token.clone().unwrap();
    let grpc = served.grpc.clone();
    let http = format!("http://{}", served.http);
    let mut c = Client::connect_to(Front::Grpc, &grpc, &http, &token).await;
    c.create("k", "ed25519").await.unwrap();
    let pid = served.child.id();
    let rss_idle = load::status_kib(pid, "VmRSS");

    let t = Tenant::new("admin", token.clone(), "k", &grpc, 8).await;
    let capacity = UNITS as f64 * 1000.0 / LAT as f64;
    let offered = 5.0 * capacity;
    // while the flood runs, another tenant's normal client is still served
    let probe_token = process::create_token(&data, "probe", "kms:admin,kms:sign");
    // the server picks up new tokens on a miss, at most once a second
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Client::connect_to(Front::Grpc, &grpc, &http, &probe_token)
        .await
        .create("k", "ed25519")
        .await
        .unwrap();
    let probe = {
        let t = Tenant::new("probe", probe_token, "k", &grpc, 1).await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            load::closed_loop(&t, 1, Duration::from_secs(1)).await
        })
    };
    let r = open_loop(&t, offered, Duration::from_secs(4)).await;
    let probe = probe.await.unwrap();
    let rss_peak = load::status_kib(pid, "VmHWM");
    println!("capacity {capacity:.0}/s, offered {offered:.0}/s for 4 s");
    println!("{}", r.line("flood"));
    println!(
        "refusals as the client saw them: p50 {:.2} ms, p99 {:.2} ms",
        ms(r.shed_quantile(0.5)),
        ms(r.shed_quantile(0.99))
    );
    println!("{}", probe.line("another tenant's client during the flood"));
    println!("server RSS: idle {} KiB, peak {} KiB", rss_idle, rss_peak);
    only_admission_answers(&r, "flood");
    // it kept answering, and admitted work kept its bound: device latency
    // plus at most the queue wait, with slack for a debug build
    assert!(
        r.ok() as f64 >= 0.5 * capacity * 4.0,
        "admitted {} of ~{}",
        r.ok(),
        capacity * 4.0
    );
    let bound = Duration::from_millis(LAT + MAX_WAIT_MS + 100);
    assert!(
        r.ok_quantile(0.99) <= bound,
        "admitted p99 {:?}",
        r.ok_quantile(0.99)
    );
    assert!(
        probe.success_rate() >= 0.99,
        "another tenant's client is served"
    );
    // sheds cost well under a millisecond of server time
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (n, fast) = shed_histogram(&text, "grpc", "0.00025");
    let (_, under_1ms) = shed_histogram(&text, "grpc", "0.001");
    println!(
        "server time per shed: {:.1}% ≤ 250 µs, {:.1}% ≤ 1 ms of {n} sheds",
        100.0 * fast / n,
        100.0 * under_1ms / n
    );
    assert!(n > 0.0);
    assert!(under_1ms / n >= 0.99, "sheds ≤ 1 ms: {under_1ms}/{n}");
    assert!(rss_peak < 256 * 1024, "peak RSS {rss_peak} KiB");
    // and it is ready afterwards
    let ready = reqwest::get(format!("{http}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// A request timeout (or a client hanging up) never cuts an operation
/// between its effect and its audit record: the caller is told `timeout`,
/// the operation finishes in its own task, and its record is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_operation_still_finishes_and_is_audited() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut s = TestServer::start_with(|c| {
        c.faults.injection = true;
        c.ingress.request_timeout = Duration::from_millis(300);
    })
    .await;
    for front in common::FRONTS {
        let mut c = s.client(front, &s.admin_token).await;
        let name = format!("slow-{front:?}").to_lowercase();
        s.running()
            .faults
            .as_ref()
            .unwrap()
            .set_latency(Duration::from_millis(800));
        let t0 = std::time::Instant::now();
        let e = c.create(&name, "ed25519").await.unwrap_err();
        e.expect(503, tonic::Code::Unavailable, "timeout");
        assert!(
            t0.elapsed() < Duration::from_millis(700),
            "{:?}",
            t0.elapsed()
        );
        s.running().faults.as_ref().unwrap().clear();
        // the key was created after all, once custody answered
        tokio::time::sleep(Duration::from_millis(900)).await;
        let k = c.get_key(&name, false).await.unwrap();
        assert_eq!(k.primary_version, 1);
    }
    let dir = s.data_dir().join("audit");
    s.stop().await;
    let log: String = ron_kms::audit::chain::segments(&dir)
        .unwrap()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for name in ["slow-grpc", "slow-http"] {
        assert!(
            log.lines().any(|l| l.contains("\"op\":\"create_key\"")
                && l.contains(&format!("\"kid\":\"{name}#v1\""))
                && l.contains("\"result\":\"ok\"")),
            "{name}'s creation is audited"
        );
    }
}

/// Over gRPC a request that admission would refuse is refused from its head:
/// the answer comes while the client is still holding back the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sheds_from_the_request_head_before_the_message_arrives() {
    let _one_at_a_time = SERIAL.lock().await;
    let s = TestServer::start_with(|c| {
        c.faults.injection = true;
        c.blocking_threads = 8;
        c.admission.inflight[0] = 1;
        c.admission.queue = 0;
    })
    .await;
    let mut c = Client::connect(Front::Grpc, s.running(), &s.admin_token).await;
    c.create("k", "ed25519").await.unwrap();
    s.running()
        .faults
        .as_ref()
        .unwrap()
        .set_latency(Duration::from_millis(1500));
    // one sign holds the only unit for 1.5 s
    let busy = tokio::spawn(async move { c.sign("k", b"slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sock = tokio::net::TcpStream::connect(s.running().grpc_addr)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(sock).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let head = http::Request::builder()
        .method("POST")
        .uri("http://localhost/ron.kms.v1.Kms/Sign")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", s.admin_token))
        .body(())
        .unwrap();
    let t0 = std::time::Instant::now();
    // the stream stays open and no message is ever sent on it
    let (resp, _body) = send.send_request(head, false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(1), resp)
        .await
        .expect("answered without the message")
        .unwrap();
    let h = resp.headers();
    assert_eq!(h.get("grpc-status").unwrap(), "14", "{h:?}");
    assert_eq!(h.get("kms-error-code").unwrap(), "saturated");
    assert!(h.contains_key("grpc-retry-pushback-ms"));
    assert!(h.contains_key("x-request-id"));
    println!("shed from the head in {:?}", t0.elapsed());
    assert!(busy.await.unwrap().is_ok());
}
