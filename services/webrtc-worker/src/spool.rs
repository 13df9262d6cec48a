//! The worker's writes to the store (link samples, audit records), queued and written by one
//! task, so that a slow or unreachable store never holds up a link's driver (its probes are
//! what the peer's failure detector listens to) and nothing is lost while the store is away.
//!
//! [`SpoolQueue`] is the policy, sans-IO: writes kept in order, at most `capacity` of them; when
//! full, the oldest goes and is counted (a figure in `GET /status`, a warning in the log), never
//! silently. The writer task takes the oldest write, tries it with a time-out, and on
//! `Unavailable` (or a time-out: a store that hangs) waits with backoff and tries the same write
//! again, so order is kept. A write the store refuses for good (invalid, corrupt) is logged and
//! dropped, counted apart.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use mesh_store::{ErrorKind, SharedStore};
use mesh_types::transfer::TransferRecord;
use mesh_types::{AuditRecord, Link};
use serde::Serialize;
use tokio::sync::Notify;

use crate::lock;

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Link(Link),
    Audit(AuditRecord),
    /// A sender's transfer record (boxed: it is the largest write).
    Transfer(Box<TransferRecord>),
}

/// What the spool has done, for `GET /status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoolStats {
    /// Waiting to be written.
    pub pending: usize,
    pub written: u64,
    /// Dropped because the queue was full (oldest first).
    pub dropped: u64,
    /// Refused by the store for good.
    pub rejected: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// The store is failing writes right now.
    pub store_down: bool,
}

/// The queue policy.
#[derive(Debug)]
pub struct SpoolQueue {
    capacity: usize,
    queue: VecDeque<Write>,
    /// The front write is being tried: a full queue must not drop it from under the writer.
    in_flight: bool,
    stats: SpoolStats,
}

impl SpoolQueue {
    pub fn new(capacity: usize) -> Self {
        SpoolQueue {
            // Room for the write being tried and one more.
            capacity: capacity.max(2),
            queue: VecDeque::new(),
            in_flight: false,
            stats: SpoolStats::default(),
        }
    }

    /// Queues `w`; returns the write dropped to make room, if one was: the oldest not being
    /// tried.
    pub fn push(&mut self, w: Write) -> Option<Write> {
        let dropped = if self.queue.len() >= self.capacity {
            self.stats.dropped += 1;
            self.queue.remove(usize::from(self.in_flight))
        } else {
            None
        };
        self.queue.push_back(w);
        dropped
    }

    /// The write to try next (it stays queued until [`done`](Self::done)).
    pub fn next(&self) -> Option<&Write> {
        self.queue.front()
    }

    /// The writer starts trying the front write.
    pub fn begin(&mut self) -> Option<Write> {
        let front = self.queue.front().cloned();
        self.in_flight = front.is_some();
        front
    }

    /// The front write is settled: written, or refused for good.
    pub fn done(&mut self, written: bool) {
        self.in_flight = false;
        if self.queue.pop_front().is_some() {
            if written {
                self.stats.written += 1;
                self.stats.store_down = false;
            } else {
                self.stats.rejected += 1;
            }
        }
    }

    /// The front write failed and will be tried again.
    pub fn failed(&mut self) {
        self.in_flight = false;
        self.stats.retries += 1;
        self.stats.store_down = true;
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            pending: self.queue.len(),
            ..self.stats
        }
    }
}

/// The queue and the writer task's wake-up.
#[derive(Debug)]
pub struct Spool {
    queue: std::sync::Mutex<SpoolQueue>,
    wake: Notify,
    /// Woken whenever the queue empties (flush waits on it).
    drained: Notify,
}

/// A store call that does not answer within this is treated as the store being away.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Spool {
    pub fn new(capacity: usize) -> Self {
        Spool {
            queue: std::sync::Mutex::new(SpoolQueue::new(capacity)),
            wake: Notify::new(),
            drained: Notify::new(),
        }
    }

    pub fn push(&self, w: Write) {
        if let Some(dropped) = lock(&self.queue).push(w) {
            tracing::warn!(
                write = describe(&dropped),
                "store write dropped: the spool is full (the store has been away too long)"
            );
        }
        self.wake.notify_one();
    }

    pub fn stats(&self) -> SpoolStats {
        lock(&self.queue).stats()
    }

    /// Waits, at most `within`, until every queued write is settled.
    pub async fn flush(&self, within: Duration) -> bool {
        let drained = async {
            loop {
                let notified = self.drained.notified();
                if lock(&self.queue).next().is_none() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, drained).await.is_ok()
    }

    /// The writer: runs for the life of the worker.
    pub async fn run(self: Arc<Self>, store: SharedStore) {
        let mut retry = RETRY_MIN;
        loop {
            let next = lock(&self.queue).begin();
            let Some(write) = next else {
                self.drained.notify_waiters();
                self.wake.notified().await;
                continue;
            };
            let outcome = tokio::time::timeout(WRITE_TIMEOUT, apply(&store, &write)).await;
            match outcome {
                Ok(Ok(())) => {
                    let recovered = lock(&self.queue).stats().store_down;
                    lock(&self.queue).done(true);
                    if recovered {
                        tracing::info!(
                            pending = self.stats().pending,
                            "store back; writing the spooled writes"
                        );
                    }
                    retry = RETRY_MIN;
                }
                // An audit record that exists already landed on an attempt that timed out.
                Ok(Err(e))
                    if e.kind() == ErrorKind::Conflict && matches!(write, Write::Audit(_)) =>
                {
                    lock(&self.queue).done(true);
                }
                // Invalid or corrupt: trying again will not help. (A link write's conflict is a
                // lost transaction race, worth another try, so it falls through to a retry.)
                Ok(Err(e)) if !matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Conflict) => {
                    tracing::error!(write = describe(&write), "store refused a write: {e}");
                    lock(&self.queue).done(false);
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {WRITE_TIMEOUT:?}"),
                    };
                    let first = !lock(&self.queue).stats().store_down;
                    lock(&self.queue).failed();
                    if first {
                        tracing::warn!(
                            pending = self.stats().pending,
                            "store writes failing; spooling: {why}"
                        );
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

async fn apply(store: &SharedStore, write: &Write) -> Result<(), mesh_store::StoreError> {
    match write {
        // An older observation losing to a newer one is the store doing its job.
        Write::Link(link) => store.upsert_link(link).await.map(|_| ()),
        Write::Audit(record) => store.append_audit(record).await,
        Write::Transfer(record) => store.put_transfer(record).await.map(|_| ()),
    }
}

fn describe(w: &Write) -> String {
    match w {
        Write::Link(l) => format!("link {} ({})", l.id, l.health.as_str()),
        Write::Audit(r) => format!("audit {}", r.id),
        Write::Transfer(t) => format!("transfer {} ({:?})", t.id, t.state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_types::{Health, LinkQos, PeerId};

    fn link(ts: u64) -> Write {
        let a = PeerId::new("a").unwrap();
        let b = PeerId::new("b").unwrap();
        Write::Link(
            Link::new(
                &a,
                &b,
                Health::Up,
                LinkQos {
                    last_ts: ts,
                    ..LinkQos::default()
                },
                1,
            )
            .unwrap(),
        )
    }

    #[test]
    fn writes_leave_in_the_order_they_came() {
        let mut q = SpoolQueue::new(10);
        for ts in 1..=3 {
            assert_eq!(q.push(link(ts)), None);
        }
        for ts in 1..=3 {
            assert_eq!(q.next(), Some(&link(ts)));
            q.done(true);
        }
        assert_eq!(q.next(), None);
        assert_eq!(q.stats().written, 3);
    }

    #[test]
    fn a_failed_write_stays_first_until_it_succeeds() {
        let mut q = SpoolQueue::new(10);
        q.push(link(1));
        q.push(link(2));
        q.failed();
        q.failed();
        assert!(q.stats().store_down);
        assert_eq!(q.next(), Some(&link(1)));
        q.done(true);
        assert!(!q.stats().store_down);
        assert_eq!(q.next(), Some(&link(2)));
        assert_eq!(q.stats().retries, 2);
    }

    #[test]
    fn when_full_the_oldest_is_dropped_and_counted() {
        let mut q = SpoolQueue::new(2);
        q.push(link(1));
        q.push(link(2));
        assert_eq!(q.push(link(3)), Some(link(1)));
        let s = q.stats();
        assert_eq!((s.pending, s.dropped), (2, 1));
        assert_eq!(q.next(), Some(&link(2)));
    }

    #[test]
    fn a_full_queue_never_drops_the_write_being_tried() {
        let mut q = SpoolQueue::new(2);
        q.push(link(1));
        q.push(link(2));
        assert_eq!(q.begin(), Some(link(1)));
        // Full while 1 is being written: 2 goes, not 1.
        assert_eq!(q.push(link(3)), Some(link(2)));
        q.done(true);
        assert_eq!(q.next(), Some(&link(3)));
        let s = q.stats();
        assert_eq!((s.written, s.dropped, s.pending), (1, 1, 1));
    }

    #[test]
    fn a_refused_write_is_counted_apart() {
        let mut q = SpoolQueue::new(2);
        q.push(link(1));
        q.done(false);
        let s = q.stats();
        assert_eq!((s.written, s.rejected, s.pending), (0, 1, 0));
    }
}
