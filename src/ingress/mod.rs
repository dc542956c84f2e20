//! Ingress: the accept loop both fronts share, and the limits that hold
//! before a request reaches a front.
//!
//! - **Connection cap** (`KMS_MAX_CONNECTIONS`): a slot is taken at accept
//!   and held by the connection; past the cap a new socket is closed at once
//!   (`kms_reject_total{reason="overload"}`), so a flood of connections costs
//!   an accept and a close, never a task or a buffer.
//! - **TLS** (rustls, optional per deployment): the handshake runs in its own
//!   task under the header timeout, so a client that stalls its handshake
//!   holds neither the accept loop nor, for long, a slot. A verified client
//!   certificate becomes the connection's [`crate::ingress::tls::PeerInfo`].
//! - **Timers** ([`conn`]): a connection must deliver a complete first
//!   request within `KMS_HEADER_TIMEOUT_MS` of being accepted, and is closed
//!   after `KMS_IDLE_TIMEOUT_MS` without a byte either way. On HTTP/1.1,
//!   hyper's header-read timeout, set to the idle timeout, bounds every later
//!   request head on a kept-alive connection and closes idle ones.
//! - **HTTP/2** (both fronts): at most `KMS_H2_MAX_STREAMS` concurrent
//!   streams per connection, header lists capped at 64 KiB, and hyper/h2's
//!   limits on streams reset before they are accepted (the rapid-reset
//!   attack), which end the connection with `ENHANCE_YOUR_CALM`.
//!
//! The request timeout (`KMS_REQUEST_TIMEOUT_MS`) and body limits live in
//! the fronts, which know where a request starts and ends.
pub mod conn;
pub mod crl;
pub mod decompress;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::ingress::tls::{identity_from_chain, MtlsRule, PeerInfo};
use conn::{ConnInfo, Guarded, Stream};

/// Connection-level limits (docs/admission.md lists them with defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub h2_max_streams: u32,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_H2_MAX_STREAMS: u32 = 256;
/// Largest header block either front reads (HTTP/1 buffer, HTTP/2 list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
        }
    }
}

/// One front's listener with its limits and optional TLS.
pub struct Ingress {
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mtls: Option<MtlsRule>,
    slots: Arc<Semaphore>,
}

/// Accepted connections, ready for a front (TLS done, slot held).
pub type Accepted = mpsc::Receiver<std::io::Result<Guarded<Stream>>>;

impl Ingress {
    pub fn new(
        limits: Limits,
        tls: Option<Arc<rustls::ServerConfig>>,
        mtls: Option<MtlsRule>,
    ) -> Self {
        Ingress {
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            mtls,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections currently holding a slot.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections.max(1) - self.slots.available_permits()
    }

    /// Accept on `listener` until `stop` turns true; connections come out
    /// of the returned channel once their TLS handshake is done.
    pub fn accept(
        self: &Arc<Self>,
        listener: TcpListener,
        mut stop: watch::Receiver<bool>,
    ) -> Accepted {
        let (tx, rx) = mpsc::channel(256);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = stop.wait_for(|s| *s) => break,
                };
                let (tcp, remote) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = me.slots.clone().try_acquire_owned() else {
                    crate::telemetry::reject("overload");
                    tracing::debug!(%remote, "connection cap reached; closing new connection");
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let accepted = Instant::now();
                let me2 = me.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let limits = &me2.limits;
                    let mut peer = PeerInfo {
                        remote: Some(remote),
                        ..PeerInfo::default()
                    };
                    let stream = match &me2.tls {
                        None => Stream::Plain(tcp),
                        Some(acceptor) => {
                            match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp))
                                .await
                            {
                                Ok(Ok(s)) => {
                                    peer.tls = true;
                                    peer.cert = identity_from_chain(
                                        s.get_ref().1.peer_certificates(),
                                        me2.mtls.as_ref(),
                                    );
                                    Stream::Tls(Box::new(s))
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    crate::telemetry::reject("timeout");
                                    tracing::debug!(%remote, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    let info = ConnInfo {
                        peer,
                        ..ConnInfo::default()
                    };
                    let g = Guarded::new(
                        stream,
                        info,
                        accepted,
                        limits.header_timeout,
                        limits.idle_timeout,
                        Some(slot),
                    );
                    let _ = tx.send(Ok(g)).await;
                });
            }
        });
        rx
    }

    /// Serve HTTP (1.1 and 2) with `router` on every accepted connection
    /// until `stop`; then finish the open connections gracefully.
    pub async fn serve_http(
        self: Arc<Self>,
        mut accepted: Accepted,
        router: axum::Router,
        mut stop: watch::Receiver<bool>,
    ) {
        use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // hyper starts this timer whenever it waits for a request head,
            // so it is also the keep-alive idle timeout: the idle timeout.
            // The first request's deadline is the header timeout (conn.rs).
            .header_read_timeout(self.limits.idle_timeout)
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.limits.h2_max_streams)
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024);
        let builder = Arc::new(builder);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let conn = tokio::select! {
                c = accepted.recv() => match c {
                    Some(Ok(c)) => c,
                    Some(Err(_)) => continue,
                    None => break,
                },
                _ = stop.wait_for(|s| *s) => break,
            };
            let info = conn.info().clone();
            let router = router.clone();
            let builder = builder.clone();
            let mut stop = stop.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| {
                        info.mark_seen();
                        req.extensions_mut().insert(info.clone());
                        let mut router = router.clone();
                        async move {
                            let r = tower::Service::call(&mut router, req).await;
                            Ok::<_, Infallible>(match r {
                                Ok(r) => r,
                                Err(e) => match e {},
                            })
                        }
                    },
                );
                let served = builder.serve_connection_with_upgrades(TokioIo::new(conn), svc);
                tokio::pin!(served);
                tokio::select! {
                    _ = served.as_mut() => return,
                    _ = stop.wait_for(|s| *s) => {}
                }
                served.as_mut().graceful_shutdown();
                let _ = served.await;
            });
            // reap finished connections as we go
            while conns.try_join_next().is_some() {}
        }
        drop(accepted);
        while conns.join_next().await.is_some() {}
    }
}
