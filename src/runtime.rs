//! The Tokio runtime every ron-kms process runs on (the service, and
//! `kms-bench`'s client and service children), built in one place.
//!
//! **The LIFO slot is disabled** (in builds with `--cfg tokio_unstable`,
//! which `.cargo/config.toml` sets). Tokio runs a task woken by the task
//! that just ran next, from a one-task "LIFO slot". Under load that slot
//! defeats HTTP/2 write coalescing: when the audit writer answers a batch of
//! callers, each caller's response wakes its connection task, the connection
//! task takes the slot, runs right after that one caller and writes one
//! response per `writev`, instead of writing the batch's responses together
//! once all the callers have run. Measured on this project's 2-vCPU host
//! (PERFORMANCE.md, "The LIFO slot and the audit log"), for Ed25519 sign with
//! 256 in flight: 16.7k `writev`/s with the slot and 1.0k/s without, and an
//! audit on/off ratio of 0.80–0.81 with the slot and 0.83–0.89 without.
//! Audit-off throughput did not change.
//!
//! A build without the cfg (say, under a `RUSTFLAGS` of its own) keeps the
//! slot; [`LIFO_SLOT_DISABLED`] says which, and the service logs it at
//! start-up.

/// Whether [`builder`] disables Tokio's LIFO slot in this build.
pub const LIFO_SLOT_DISABLED: bool = cfg!(tokio_unstable);

/// A multi-thread runtime builder with the I/O and time drivers on and the
/// LIFO slot off (see the module docs); worker count is Tokio's default
/// (`TOKIO_WORKER_THREADS`, else one per CPU).
pub fn builder() -> tokio::runtime::Builder {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    #[cfg(tokio_unstable)]
    b.disable_lifo_slot();
    b
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// With the LIFO slot, the last task a task spawns runs first; without
    /// it, spawned tasks run in the order they were spawned.
    fn spawn_order(mut b: tokio::runtime::Builder) -> Vec<u32> {
        let rt = b.worker_threads(1).build().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        rt.block_on(async move {
            tokio::spawn(async move {
                let mut hs = Vec::new();
                for i in 1..=3u32 {
                    let o = o.clone();
                    hs.push(tokio::spawn(async move { o.lock().unwrap().push(i) }));
                }
                for h in hs {
                    h.await.unwrap();
                }
            })
            .await
            .unwrap();
        });
        let v = order.lock().unwrap().clone();
        v
    }

    #[test]
    fn spawned_tasks_run_in_order_only_without_the_lifo_slot() {
        let ours = spawn_order(super::builder());
        let mut stock = tokio::runtime::Builder::new_multi_thread();
        stock.enable_all();
        let stock = spawn_order(stock);
        assert_eq!(stock.len(), 3);
        assert_ne!(
            stock,
            vec![1, 2, 3],
            "tokio's default runs the last spawned task first"
        );
        if super::LIFO_SLOT_DISABLED {
            assert_eq!(ours, vec![1, 2, 3]);
        } else {
            assert_eq!(ours, stock);
        }
    }
}
