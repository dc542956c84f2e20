//! One accepted connection: the socket (plain or TLS), what is known about
//! the peer, the connection slot it holds, and the timers that close it.
//!
//! Two deadlines close a connection from the inside, so no task or front
//! has to remember to do it:
//! - *first request*: a connection that has not delivered one complete
//!   request within the header timeout of being accepted (TLS handshake
//!   included) is closed — a client trickling its first headers, or one that
//!   connects and sends nothing, cannot keep a slot;
//! - *idle*: no byte read or written for the idle timeout closes it —
//!   half-open peers, and peers that stop reading their responses.
//!
//! Both are checked only when the socket would block, against the time of
//! the last progress, so the hot path pays an `Instant::now()` per ready
//! read or write and never re-arms a timer.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use crate::ingress::tls::PeerInfo;

/// What a front learns about the connection a request came on. Both fronts
/// find it in the request's extensions.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub peer: PeerInfo,
    /// Set by the fronts when a request arrives: the first-request deadline
    /// no longer applies.
    pub seen: Arc<AtomicBool>,
}

impl ConnInfo {
    /// Note that this connection delivered a request.
    pub fn mark_seen(&self) {
        if !self.seen.load(Ordering::Relaxed) {
            self.seen.store(true, Ordering::Relaxed);
        }
    }
}

/// The byte stream under a connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection with its slot and its two deadlines (module docs).
pub struct Guarded<IO> {
    io: IO,
    info: ConnInfo,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    last: Instant,
    /// The first-request deadline, until a request is seen.
    first_by: Option<Instant>,
    expired: bool,
    _slot: Option<OwnedSemaphorePermit>,
}

impl<IO> Guarded<IO> {
    /// `accepted`: when the socket was accepted; the first request must
    /// arrive within `header_timeout` of it.
    pub fn new(
        io: IO,
        info: ConnInfo,
        accepted: Instant,
        header_timeout: Duration,
        idle: Duration,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let now = Instant::now();
        Guarded {
            io,
            info,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            idle,
            last: now,
            first_by: Some(accepted + header_timeout),
            expired: false,
            _slot: slot,
        }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// `Ready(err)` once a deadline has passed; else arms the timer for the
    /// nearer deadline and returns `Pending`.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self
                .first_by
                .is_some_and(|_| self.info.seen.load(Ordering::Relaxed))
            {
                self.first_by = None;
            }
            let idle_at = self.last + self.idle;
            let (deadline, why) = match self.first_by {
                Some(f) if f < idle_at => (f, "no complete request within the header timeout"),
                _ => (idle_at, "idle timeout"),
            };
            if Instant::now() >= deadline {
                if !self.expired {
                    self.expired = true;
                    crate::telemetry::reject("timeout");
                    tracing::debug!(reason = why, "closing connection");
                }
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn progressed(&mut self) {
        self.last = Instant::now();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            r => r,
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO> tonic::transport::server::Connected for Guarded<IO> {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guarded(
        io: tokio::io::DuplexStream,
        header: Duration,
        idle: Duration,
    ) -> Guarded<tokio::io::DuplexStream> {
        Guarded::new(io, ConnInfo::default(), Instant::now(), header, idle, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_closed_at_the_first_request_deadline() {
        let (a, _b) = tokio::io::duplex(64);
        let mut g = guarded(a, Duration::from_secs(2), Duration::from_secs(60));
        let t0 = Instant::now();
        let mut buf = [0u8; 8];
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn trickled_bytes_do_not_extend_the_first_request_deadline() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut g = guarded(a, Duration::from_secs(3), Duration::from_secs(60));
        let t0 = Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if b.write_all(b"G").await.is_err() {
                    break;
                }
            }
        });
        let mut buf = [0u8; 8];
        let err = loop {
            match g.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_request_only_idleness_closes() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut g = guarded(a, Duration::from_secs(1), Duration::from_secs(10));
        g.info().mark_seen();
        b.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        let t0 = Instant::now();
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_closed_when_writes_stall() {
        let (a, _b) = tokio::io::duplex(16);
        let mut g = guarded(a, Duration::from_secs(1), Duration::from_secs(5));
        g.info().mark_seen();
        let t0 = Instant::now();
        let e = g.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
    }
}
