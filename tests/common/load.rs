//! A small load driver for the admission tests: Sign over gRPC, open loop
//! (a fixed rate, latency measured from each request's *intended* send
//! time, so a stalled server cannot hide behind a slowed client) or closed
//! loop (N in flight). Outcomes are kept per request; the report gives
//! success rates, error counts by `kms-error-code` and latency quantiles.
use std::collections::BTreeMap;
use std::time::Duration;

use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::SignRequest;
use tokio::time::Instant;
use tonic::transport::Channel;

/// One tenant's traffic: its token, its key, and gRPC connections to use.
#[derive(Clone)]
pub struct Tenant {
    pub name: String,
    pub token: String,
    pub key: String,
    pub channels: Vec<Channel>,
}

impl Tenant {
    pub async fn new(name: &str, token: String, key: &str, grpc: &str, conns: usize) -> Self {
        let mut channels = Vec::new();
        for _ in 0..conns {
            channels.push(
                Channel::from_shared(grpc.to_string())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        Tenant {
            name: name.into(),
            token,
            key: key.into(),
            channels,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub latency: Duration,
    /// "ok", a `kms-error-code`, or "transport:<grpc code>" when the answer
    /// carried no code of ours.
    pub code: String,
    pub grpc: tonic::Code,
    pub retry_pushback_ms: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    pub elapsed: Duration,
}

impl Report {
    pub fn total(&self) -> usize {
        self.outcomes.len()
    }
    pub fn ok(&self) -> usize {
        self.outcomes.iter().filter(|o| o.code == "ok").count()
    }
    pub fn success_rate(&self) -> f64 {
        self.ok() as f64 / self.total().max(1) as f64
    }
    pub fn by_code(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for o in &self.outcomes {
            *m.entry(o.code.clone()).or_insert(0) += 1;
        }
        m
    }
    /// Quantile `q` of the successful requests' latency.
    pub fn ok_quantile(&self, q: f64) -> Duration {
        quantile(
            self.outcomes
                .iter()
                .filter(|o| o.code == "ok")
                .map(|o| o.latency)
                .collect(),
            q,
        )
    }
    /// Quantile `q` of the refused requests' latency as the client saw it.
    pub fn shed_quantile(&self, q: f64) -> Duration {
        quantile(
            self.outcomes
                .iter()
                .filter(|o| o.code != "ok")
                .map(|o| o.latency)
                .collect(),
            q,
        )
    }
    pub fn ok_per_sec(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn line(&self, label: &str) -> String {
        format!(
            "{label}: {} sent, {} ok ({:.1}%), {:.0} ok/s, p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, codes {:?}",
            self.total(),
            self.ok(),
            100.0 * self.success_rate(),
            self.ok_per_sec(),
            ms(self.ok_quantile(0.50)),
            ms(self.ok_quantile(0.95)),
            ms(self.ok_quantile(0.99)),
            self.by_code()
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn sign_once(
    ch: Channel,
    token: &str,
    key: &str,
    msg: Vec<u8>,
) -> (String, tonic::Code, Option<u64>) {
    let mut c = KmsClient::new(ch);
    let mut r = tonic::Request::new(SignRequest {
        key: key.to_string(),
        message: msg,
        ..Default::default()
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r.set_timeout(Duration::from_secs(10));
    match c.sign(r).await {
        Ok(_) => ("ok".into(), tonic::Code::Ok, None),
        Err(s) => {
            let md = s.metadata();
            let code = md
                .get("kms-error-code")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("transport:{:?}", s.code()));
            let push = md
                .get("grpc-retry-pushback-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            (code, s.code(), push)
        }
    }
}

/// `rate` requests per second for `dur`, each sent at its intended time
/// (start + i / rate) on the tenant's connections in turn.
pub async fn open_loop(t: &Tenant, rate: f64, dur: Duration) -> Report {
    let start = Instant::now();
    let n = (rate * dur.as_secs_f64()).round() as usize;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
        let ch = t.channels[i % t.channels.len()].clone();
        let (token, key) = (t.token.clone(), t.key.clone());
        tasks.spawn(async move {
            let (code, grpc, push) = sign_once(ch, &token, &key, i.to_le_bytes().to_vec()).await;
            Outcome {
                latency: intended.elapsed(),
                code,
                grpc,
                retry_pushback_ms: push,
            }
        });
    }
    let mut outcomes = Vec::with_capacity(n);
    while let Some(o) = tasks.join_next().await {
        outcomes.push(o.unwrap());
    }
    Report {
        outcomes,
        elapsed: start.elapsed(),
    }
}

/// `inflight` workers, each sending its next request as soon as the last
/// one is answered, for `dur`.
pub async fn closed_loop(t: &Tenant, inflight: usize, dur: Duration) -> Report {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..inflight {
        let ch = t.channels[w % t.channels.len()].clone();
        let (token, key) = (t.token.clone(), t.key.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < dur {
                let t0 = Instant::now();
                let (code, grpc, push) = sign_once(
                    ch.clone(),
                    &token,
                    &key,
                    (w as u64 * 1_000_000 + i).to_le_bytes().to_vec(),
                )
                .await;
                out.push(Outcome {
                    latency: t0.elapsed(),
                    code,
                    grpc,
                    retry_pushback_ms: push,
                });
                i += 1;
            }
            out
        });
    }
    let mut outcomes = Vec::new();
    while let Some(o) = tasks.join_next().await {
        outcomes.extend(o.unwrap());
    }
    Report {
        outcomes,
        elapsed: start.elapsed(),
    }
}

/// A `/proc/PID/status` field in KiB: `VmHWM` (peak resident set) or
/// `VmRSS` (current).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}
