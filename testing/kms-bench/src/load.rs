//! The load generator: clients for both fronts, the request each operation
//! sends, and the two loops.
//!
//! - Closed loop: `concurrency` workers, each sending its next request when
//!   the previous one answers. Throughput is what the server sustains at that
//!   concurrency.
//! - Open loop: requests are due at a fixed rate (request *i* at
//!   `start + i / rate`) and latency is measured from that due time, not from
//!   when a worker got round to sending it, so a stall shows up in the
//!   latency of every request it delayed (no coordinated omission). Workers
//!   take the next due request from a shared counter; if all of them are busy
//!   the due times slip and the slip is counted as latency.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::{
    RotateKeyRequest, SignBatchRequest, SignBatchResponse, SignRequest, UnwrapBatchRequest,
    UnwrapBatchResponse, UnwrapRequest, VerifyBatchRequest, VerifyBatchResponse, VerifyRequest,
    WrapBatchRequest, WrapBatchResponse, WrapRequest,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::stats::{Items, Tally};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    Sign,
    Verify,
    Wrap,
    Unwrap,
}

impl Op {
    /// The name admission and metrics use for it.
    pub fn as_str(self) -> &'static str {
        use ron_kms::ops::Gate;
        let gate = match self {
            Op::Sign => Gate::Sign,
            Op::Verify => Gate::Verify,
            Op::Wrap => Gate::Wrap,
            Op::Unwrap => Gate::Unwrap,
        };
        gate.as_str()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// The one request a run repeats, prepared once (the verify signature and
/// the unwrap ciphertext are made during set-up). A batch repeats one item.
#[derive(Clone, Debug)]
pub enum Work {
    Sign(SignRequest),
    Verify(VerifyRequest),
    Wrap(WrapRequest),
    Unwrap(UnwrapRequest),
    SignBatch(SignBatchRequest),
    VerifyBatch(VerifyBatchRequest),
    WrapBatch(WrapBatchRequest),
    UnwrapBatch(UnwrapBatchRequest),
    /// The rotate-flood mix's rotations.
    Rotate(RotateKeyRequest),
}

impl Work {
    /// Operations per request.
    pub fn items(&self) -> usize {
        match self {
            Work::SignBatch(r) => r.items.len(),
            Work::VerifyBatch(r) => r.items.len(),
            Work::WrapBatch(r) => r.items.len(),
            Work::UnwrapBatch(r) => r.items.len(),
            _ => 1,
        }
    }

    /// `n` copies of a single request's item in one batch request.
    pub fn batch(self, n: usize) -> Work {
        match self {
            Work::Sign(r) => Work::SignBatch(SignBatchRequest { items: vec![r; n] }),
            Work::Verify(r) => Work::VerifyBatch(VerifyBatchRequest { items: vec![r; n] }),
            Work::Wrap(r) => Work::WrapBatch(WrapBatchRequest { items: vec![r; n] }),
            Work::Unwrap(r) => Work::UnwrapBatch(UnwrapBatchRequest { items: vec![r; n] }),
            batch => batch,
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Work::Sign(_) => "/v1/kms/sign",
            Work::Verify(_) => "/v1/kms/verify",
            Work::Wrap(_) => "/v1/kms/wrap",
            Work::Unwrap(_) => "/v1/kms/unwrap",
            Work::SignBatch(_) => "/v1/kms/batch/sign",
            Work::VerifyBatch(_) => "/v1/kms/batch/verify",
            Work::WrapBatch(_) => "/v1/kms/batch/wrap",
            Work::UnwrapBatch(_) => "/v1/kms/batch/unwrap",
            Work::Rotate(_) => "/v1/kms/rotate",
        }
    }

    fn json(&self) -> Bytes {
        let v = match self {
            Work::Sign(r) => serde_json::to_vec(r),
            Work::Verify(r) => serde_json::to_vec(r),
            Work::Wrap(r) => serde_json::to_vec(r),
            Work::Unwrap(r) => serde_json::to_vec(r),
            Work::SignBatch(r) => serde_json::to_vec(r),
            Work::VerifyBatch(r) => serde_json::to_vec(r),
            Work::WrapBatch(r) => serde_json::to_vec(r),
            Work::UnwrapBatch(r) => serde_json::to_vec(r),
            Work::Rotate(r) => serde_json::to_vec(r),
        };
        Bytes::from(v.expect("proto messages serialise"))
    }

    /// A successful HTTP answer's items (single calls: none to look at
    /// except a verify's `valid`).
    fn http_items(&self, body: &[u8]) -> Result<Items, String> {
        fn parse<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
            serde_json::from_slice(b).map_err(|_| "bad_response".to_string())
        }
        match self {
            Work::Verify(_) => {
                let v: serde_json::Value = parse(body)?;
                if v["valid"] != serde_json::Value::Bool(true) {
                    return Err("invalid_signature".into());
                }
                Ok(Items::one())
            }
            Work::SignBatch(_) => Ok(items_of(&parse::<SignBatchResponse>(body)?.items)),
            Work::VerifyBatch(_) => Ok(items_of(&parse::<VerifyBatchResponse>(body)?.items)),
            Work::WrapBatch(_) => Ok(items_of(&parse::<WrapBatchResponse>(body)?.items)),
            Work::UnwrapBatch(_) => Ok(items_of(&parse::<UnwrapBatchResponse>(body)?.items)),
            _ => Ok(Items::one()),
        }
    }
}

/// The `Items` of a batch's answers.
fn items_of<T: BatchItem>(items: &[T]) -> Items {
    Items::from_failures(items.iter().map(BatchItem::failure))
}

/// One answer in a batch: `None` when it succeeded.
trait BatchItem {
    fn failure(&self) -> Option<String>;
}

macro_rules! batch_item {
    ($($t:ident),*) => {$(
        impl BatchItem for ron_kms::proto::$t {
            fn failure(&self) -> Option<String> {
                match (&self.ok, &self.error) {
                    (_, Some(e)) => Some(e.code.clone()),
                    (Some(_), None) => None,
                    (None, None) => Some("bad_response".into()),
                }
            }
        }
    )*};
}
batch_item!(SignBatchItem, WrapBatchItem, UnwrapBatchItem);

impl BatchItem for ron_kms::proto::VerifyBatchItem {
    fn failure(&self) -> Option<String> {
        match (&self.ok, &self.error) {
            (_, Some(e)) => Some(e.code.clone()),
            (Some(v), None) if v.valid => None,
            (Some(_), None) => Some("invalid_signature".into()),
            (None, None) => Some("bad_response".into()),
        }
    }
}

/// Where the load goes.
#[derive(Clone)]
pub struct Endpoint {
    pub transport: Transport,
    pub grpc: String,
    pub http: String,
    pub token: String,
    /// A second tenant's token (the service only).
    pub token_b: Option<String>,
}

/// gRPC channels, one per connection, shared round-robin by the workers.
pub async fn grpc_clients(
    ep: &Endpoint,
    connections: usize,
) -> Result<Vec<KmsClient<Channel>>, String> {
    let mut v = Vec::new();
    for _ in 0..connections.max(1) {
        let ch = Channel::from_shared(ep.grpc.clone())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{}: {e}", ep.grpc))?;
        v.push(KmsClient::new(ch).max_decoding_message_size(16 << 20));
    }
    Ok(v)
}

/// One client a worker owns: a gRPC client (cloned from a shared channel)
/// or an HTTP/1.1 connection of its own (keep-alive, one request at a time,
/// as wrk does).
pub enum Client {
    Grpc(KmsClient<Channel>, MetadataValue<tonic::metadata::Ascii>),
    Http {
        send: http1::SendRequest<Full<Bytes>>,
        auth: String,
        authority: String,
    },
    /// Another client with a deadline on each call, as a careful caller
    /// keeps: past it the call is abandoned (`client_deadline`), whatever
    /// the transport is doing (a reconnect included).
    Deadline(Box<Client>, Duration),
}

impl Client {
    pub async fn http(ep: &Endpoint, token: &str) -> Result<Client, String> {
        let authority = ep
            .http
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Client::Http {
            send,
            auth: format!("Bearer {token}"),
            authority,
        })
    }

    pub fn grpc(c: KmsClient<Channel>, token: &str) -> Result<Client, String> {
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        Ok(Client::Grpc(c, auth))
    }

    /// Send `w` once; `Err(code)` names a whole request's failure.
    pub async fn call(&mut self, w: &Work) -> Result<Items, String> {
        match self {
            Client::Deadline(c, d) => tokio::time::timeout(*d, Box::pin(c.call(w)))
                .await
                .unwrap_or_else(|_| Err("client_deadline".into())),
            Client::Grpc(c, auth) => {
                fn req<T>(m: T, auth: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
                    let mut r = tonic::Request::new(m);
                    r.metadata_mut().insert("authorization", auth.clone());
                    r
                }
                let r = match w {
                    Work::Sign(m) => c.sign(req(m.clone(), auth)).await.map(|_| Items::one()),
                    Work::Verify(m) => match c.verify(req(m.clone(), auth)).await {
                        Ok(v) if v.get_ref().valid => Ok(Items::one()),
                        Ok(_) => return Err("invalid_signature".into()),
                        Err(e) => Err(e),
                    },
                    Work::Wrap(m) => c.wrap(req(m.clone(), auth)).await.map(|_| Items::one()),
                    Work::Unwrap(m) => c.unwrap(req(m.clone(), auth)).await.map(|_| Items::one()),
                    Work::Rotate(m) => c
                        .rotate_key(req(m.clone(), auth))
                        .await
                        .map(|_| Items::one()),
                    Work::SignBatch(m) => c
                        .sign_batch(req(m.clone(), auth))
                        .await
                        .map(|r| items_of(&r.get_ref().items)),
                    Work::VerifyBatch(m) => c
                        .verify_batch(req(m.clone(), auth))
                        .await
                        .map(|r| items_of(&r.get_ref().items)),
                    Work::WrapBatch(m) => c
                        .wrap_batch(req(m.clone(), auth))
                        .await
                        .map(|r| items_of(&r.get_ref().items)),
                    Work::UnwrapBatch(m) => c
                        .unwrap_batch(req(m.clone(), auth))
                        .await
                        .map(|r| items_of(&r.get_ref().items)),
                };
                r.map_err(|s| grpc_code(&s))
            }
            Client::Http {
                send,
                auth,
                authority,
            } => {
                send.ready()
                    .await
                    .map_err(|_| "connection_closed".to_string())?;
                let req = http::Request::post(w.path())
                    .header(http::header::HOST, authority.as_str())
                    .header(http::header::AUTHORIZATION, auth.as_str())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(w.json()))
                    .map_err(|e| e.to_string())?;
                let resp = send
                    .send_request(req)
                    .await
                    .map_err(|_| "connection_closed".to_string())?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|_| "connection_closed".to_string())?
                    .to_bytes();
                if status.is_success() {
                    w.http_items(&body)
                } else {
                    Err(http_code(status, &body))
                }
            }
        }
    }
}

/// The KMS error code from `kms-error-code`, else the gRPC status name.
pub fn grpc_code(s: &tonic::Status) -> String {
    s.metadata()
        .get("kms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("grpc_{:?}", s.code()).to_lowercase())
}

/// The KMS error code from the JSON error body, else `http_<status>`.
fn http_code(status: http::StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("http_{}", status.as_u16()))
}

/// A weighted choice of requests; each entry's label names its part of the
/// report (`sign`, `tenant-b:sign`, …).
pub struct Mix {
    entries: Vec<(String, Work, u32)>,
    total: u32,
    /// Every weight the same: pick by index (10,000 keys).
    uniform: bool,
    /// The distinct labels, and each entry's index among them: workers keep
    /// one tally per label, not per entry (10,000 keys share one).
    labels: Vec<String>,
    label_of: Vec<usize>,
}

impl Mix {
    pub fn new(entries: Vec<(String, Work, u32)>) -> Mix {
        let total = entries.iter().map(|e| e.2).sum::<u32>().max(1);
        let uniform = entries.windows(2).all(|w| w[0].2 == w[1].2);
        let mut labels: Vec<String> = Vec::new();
        let label_of = entries
            .iter()
            .map(|e| match labels.iter().position(|l| *l == e.0) {
                Some(i) => i,
                None => {
                    labels.push(e.0.clone());
                    labels.len() - 1
                }
            })
            .collect();
        Mix {
            entries,
            total,
            uniform,
            labels,
            label_of,
        }
    }

    /// The entry a uniform `roll` picks, by weight.
    fn pick(&self, roll: u64) -> usize {
        if self.uniform {
            return (roll % self.entries.len().max(1) as u64) as usize;
        }
        let mut r = (roll % u64::from(self.total)) as u32;
        for (i, e) in self.entries.iter().enumerate() {
            if r < e.2 {
                return i;
            }
            r -= e.2;
        }
        self.entries.len() - 1
    }
}

/// xorshift64*: a worker's own cheap, reproducible choice of entries.
fn next_roll(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// How a group paces its requests.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    Closed,
    /// Requests due on a fixed schedule.
    Open(Schedule),
}

/// An open loop's schedule: `rate` requests a second, and during the burst
/// window `factor` times that.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub rate: f64,
    pub burst: Option<Burst>,
}

/// A window of the run (seconds from the start of the warm-up).
#[derive(Clone, Copy, Debug)]
pub struct Burst {
    pub start: f64,
    pub len: f64,
    pub factor: f64,
}

impl Schedule {
    /// When request `i` is due, in seconds from the start.
    pub fn due(&self, i: u64) -> f64 {
        let i = i as f64;
        let r = self.rate;
        let Some(b) = self.burst else {
            return i / r;
        };
        let before = r * b.start;
        let during = r * b.factor * b.len;
        if i < before {
            i / r
        } else if i < before + during {
            b.start + (i - before) / (r * b.factor)
        } else {
            b.start + b.len + (i - before - during) / r
        }
    }
}

/// Workers that share a mix and a pace (an open loop's workers share its
/// schedule).
pub struct Group {
    pub clients: Vec<Client>,
    pub mix: Mix,
    pub pace: Pace,
}

/// A run's tallies: all requests, and per mix label.
pub struct Outcome {
    pub total: Tally,
    pub parts: std::collections::BTreeMap<String, Tally>,
}

/// Run every group's workers for `warmup + duration`; only requests due
/// after the warm-up are counted.
pub async fn run(
    groups: Vec<Group>,
    warmup: Duration,
    duration: Duration,
    progress: bool,
) -> (Outcome, Duration) {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for g in groups {
        let mix = Arc::new(g.mix);
        let next = Arc::new(AtomicU64::new(0));
        for mut c in g.clients {
            let (mix, next, done, stop) = (mix.clone(), next.clone(), done.clone(), stop.clone());
            let pace = g.pace;
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut roll = seed | 1;
            tasks.push(tokio::spawn(async move {
                let mut tallies: Vec<Tally> = mix.labels.iter().map(|_| Tally::new()).collect();
                loop {
                    let due = match pace {
                        Pace::Closed => Instant::now(),
                        Pace::Open(sched) => {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let due = start + Duration::from_secs_f64(sched.due(i));
                            if due >= end {
                                break;
                            }
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                    };
                    if due >= end || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let e = if mix.entries.len() == 1 {
                        0
                    } else {
                        mix.pick(next_roll(&mut roll))
                    };
                    let work = &mix.entries[e].1;
                    let r = c.call(work).await;
                    if due >= measure_from {
                        let items = work.items() as u64;
                        tallies[mix.label_of[e]].record(due.elapsed().as_micros() as u64, r, items);
                        done.fetch_add(items, Ordering::Relaxed);
                    }
                }
                mix.labels.iter().cloned().zip(tallies).collect::<Vec<_>>()
            }));
        }
    }
    let ticker = progress.then(|| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                let now = done.load(Ordering::Relaxed);
                let phase = if Instant::now() < measure_from {
                    "warm-up"
                } else {
                    "measuring"
                };
                eprint!("\r  {phase}: {:>8} ops/s, {:>9} done   ", now - last, now);
                last = now;
            }
        })
    });
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut out = Outcome {
        total: Tally::new(),
        parts: Default::default(),
    };
    for t in tasks {
        if let Ok(parts) = t.await {
            for (label, tally) in parts {
                out.parts
                    .entry(label)
                    .or_insert_with(Tally::new)
                    .merge(tally);
            }
        }
    }
    for t in out.parts.values() {
        out.total.merge_ref(t);
    }
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r{:70}\r", "");
    }
    (out, duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_schedule_is_dense_inside_its_window_only() {
        let s = Schedule {
            rate: 100.0,
            burst: Some(Burst {
                start: 1.0,
                len: 1.0,
                factor: 10.0,
            }),
        };
        assert_eq!(s.due(50), 0.5);
        assert_eq!(s.due(100), 1.0);
        // 1000 requests in the window: the 500th is half-way through it
        assert!((s.due(600) - 1.5).abs() < 1e-9);
        assert!((s.due(1100) - 2.0).abs() < 1e-9);
        assert!((s.due(1150) - 2.5).abs() < 1e-9);
        let flat = Schedule {
            rate: 10.0,
            burst: None,
        };
        assert_eq!(flat.due(25), 2.5);
    }

    #[test]
    fn a_mix_picks_by_weight() {
        let w = Work::Sign(SignRequest::default());
        let m = Mix::new(vec![
            ("a".into(), w.clone(), 70),
            ("b".into(), w.clone(), 20),
            ("c".into(), w, 10),
        ]);
        let mut counts = [0u32; 3];
        let mut roll = 12345u64;
        for _ in 0..100_000 {
            counts[m.pick(next_roll(&mut roll))] += 1;
        }
        for (n, want) in counts.iter().zip([70_000, 20_000, 10_000]) {
            assert!((*n as i64 - want).abs() < 1500, "{counts:?}");
        }
    }
}
