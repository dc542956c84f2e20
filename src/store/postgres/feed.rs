//! The change feed's listener: LISTEN on the channel, hand each change to
//! the service, and reconcile in full on an interval and after reconnects.
use super::*;

/// The listener: `LISTEN`, hand every notification to `on_change`, and a
/// `Change::Resync` every `interval` and each time `LISTEN` takes effect,
/// the first time included: whatever changed before it (while
/// disconnected, or between the replica's start-up load and its first
/// `LISTEN`) was never notified to this connection. Reconnects with capped
/// backoff.
pub(super) fn listen_forever(
    config: postgres::Config,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    interval: Duration,
    on_change: ChangeHandler,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        match connect(&config, &tls) {
            Ok(mut c) => {
                if let Err(e) = c.batch_execute(&format!("LISTEN {CHANNEL}")) {
                    tracing::warn!(error = %chain(&e), "store listener: LISTEN failed");
                } else {
                    backoff = Duration::from_millis(100);
                    metrics::gauge!("kms_store_listener_up").set(1.0);
                    if first {
                        tracing::debug!("store listener up; reconciling once");
                    } else {
                        tracing::info!("store listener reconnected; reconciling");
                    }
                    on_change(Change::Resync);
                    first = false;
                    let err = pump(&mut c, interval, &on_change);
                    tracing::warn!(error = %chain(&err), "store listener lost its connection");
                }
            }
            Err(e) => tracing::warn!(error = %chain(&e), "store listener cannot connect"),
        }
        metrics::gauge!("kms_store_listener_up").set(0.0);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

pub(super) fn pump(
    c: &mut Client,
    interval: Duration,
    on_change: &ChangeHandler,
) -> postgres::Error {
    let mut next_resync = std::time::Instant::now() + interval;
    loop {
        let wait = next_resync.saturating_duration_since(std::time::Instant::now());
        {
            let mut n = c.notifications();
            let mut it = n.timeout_iter(wait.max(Duration::from_millis(1)));
            loop {
                use postgres::fallible_iterator::FallibleIterator;
                match it.next() {
                    Ok(Some(note)) => {
                        metrics::counter!("kms_store_notifications_total").increment(1);
                        let due = std::time::Instant::now() >= next_resync;
                        match serde_json::from_str::<Change>(note.payload()) {
                            Ok(ch) => on_change(ch),
                            Err(_) => {
                                tracing::warn!(
                                    payload_len = note.payload().len(),
                                    "store listener: unreadable notification; reconciling"
                                );
                                on_change(Change::Resync);
                            }
                        }
                        if due {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return e,
                }
            }
        }
        if std::time::Instant::now() >= next_resync {
            on_change(Change::Resync);
            next_resync = std::time::Instant::now() + interval;
        }
        // A cheap round trip notices a dead server even when idle.
        if let Err(e) = c.simple_query("SELECT 1") {
            return e;
        }
    }
}
