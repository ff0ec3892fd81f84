//! Admission to compute by queueing time. Compute runs on the tokio worker that received
//! the request, so the queue is every request received and not yet computed: each is
//! counted on arrival, before its body is read, and one that would wait longer than the
//! limit (or than its own deadline) is refused there at once, before it costs a decode.
//! Under overload the requests that are admitted still answer fast, and the rest learn at
//! once that they should go elsewhere.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::status::ServeError;
use crate::telemetry;

pub struct ComputeQueue {
    permits: Semaphore,
    threads: usize,
    /// Requests received and not yet computed (or refused, or abandoned).
    pending: AtomicUsize,
    /// Moving average of one request's compute time, in nanoseconds; 0 until one computed.
    compute_ns: AtomicU64,
    limit: Duration,
    /// Whether the runtime has other workers that could read sockets while one computes.
    other_workers: bool,
}

/// A request's place in the queue, from its arrival until its compute ends or it is
/// dropped unanswered. It travels in the request's extensions, hence the `Arc`.
pub struct Ticket {
    queue: Arc<ComputeQueue>,
    arrived: Instant,
}

/// A request's compute turn: its permit, and its ticket until dropped.
pub struct Slot<'a> {
    ticket: Arc<Ticket>,
    _permit: SemaphorePermit<'a>,
    started: Instant,
}

impl ComputeQueue {
    /// A queue for the current tokio runtime (its worker count decides [`Self::enter`]'s yield).
    pub fn new(threads: usize, limit: Duration) -> ComputeQueue {
        let workers =
            tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
        ComputeQueue {
            other_workers: workers > 1,
            permits: Semaphore::new(threads),
            threads,
            pending: AtomicUsize::new(0),
            compute_ns: AtomicU64::new(0),
            limit,
        }
    }

    /// Counts a request that `arrived` just now, unless the requests ahead of it are
    /// expected to take longer than the limit or than `budget` to compute
    /// (RESOURCE_EXHAUSTED).
    pub fn admit(
        self: &Arc<Self>,
        arrived: Instant,
        budget: Duration,
    ) -> Result<Ticket, ServeError> {
        let ahead = self.pending.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket {
            queue: self.clone(),
            arrived,
        };
        let per_request = Duration::from_nanos(self.compute_ns.load(Ordering::Relaxed));
        // Requests ahead, drained `threads` at a time.
        let expected = per_request.mul_f64(ahead.saturating_sub(self.threads - 1) as f64)
            / self.threads as u32;
        let limit = self.limit.min(budget);
        if expected > limit {
            return Err(ServeError::QueueFull {
                expected_ms: expected.as_millis() as u64,
                limit_ms: limit.as_millis() as u64,
            });
        }
        Ok(ticket)
    }

    /// Takes a compute permit for an admitted request. With fewer permits than workers a
    /// request may wait for one: a wait that reaches the limit ends as RESOURCE_EXHAUSTED,
    /// or as DEADLINE_EXCEEDED if `budget` ran out first.
    pub async fn enter(
        &self,
        ticket: Arc<Ticket>,
        budget: Duration,
    ) -> Result<Slot<'_>, ServeError> {
        // Compute holds this worker without awaiting, so a yield first lets the sockets be
        // read: requests that arrived meanwhile are counted (and refused if the queue is
        // long) instead of waiting unseen in the kernel's buffers, and with other workers
        // their work is queued where an idle one is woken to take it (a worker parked on
        // its condvar, not the socket poller, slept through a 9 s debug-build compute).
        // On one worker with nobody else received the yield only delays this request
        // behind a socket poll: skipped (docs/performance.md, eighth round).
        if self.other_workers || self.pending.load(Ordering::Acquire) > 1 {
            tokio::task::yield_now().await;
        }
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let limit = self.limit.min(budget);
                tokio::time::timeout(limit, self.permits.acquire())
                    .await
                    .map_err(|_| {
                        if budget <= self.limit {
                            ServeError::DeadlineExceeded
                        } else {
                            ServeError::QueueFull {
                                expected_ms: limit.as_millis() as u64,
                                limit_ms: limit.as_millis() as u64,
                            }
                        }
                    })?
                    .map_err(|e| ServeError::Task(e.to_string()))?
            }
        };
        let started = Instant::now();
        telemetry::queue_wait(started.duration_since(ticket.arrived).as_secs_f64());
        Ok(Slot {
            ticket,
            _permit: permit,
            started,
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let took = self.started.elapsed().as_nanos() as u64;
        let q = &self.ticket.queue;
        // An exponential moving average over ~8 requests; races lose an update, no more.
        let old = q.compute_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        };
        q.compute_ns.store(new, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queue.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admits a request arriving now.
    fn admit(queue: &Arc<ComputeQueue>, budget: Duration) -> Result<Ticket, ServeError> {
        queue.admit(Instant::now(), budget)
    }

    #[tokio::test]
    async fn a_long_queue_is_refused_on_arrival_and_a_short_one_admitted() {
        let queue = Arc::new(ComputeQueue::new(1, Duration::from_millis(10)));
        let second = Duration::from_secs(1);
        // Nothing computed yet: nothing to estimate, every request is admitted.
        let early: Vec<_> = (0..50).map(|_| admit(&queue, second).unwrap()).collect();
        drop(early);
        // Teach it that a request computes for 4 ms.
        let ticket = Arc::new(admit(&queue, second).unwrap());
        let mut slot = queue.enter(ticket, second).await.unwrap();
        slot.started -= Duration::from_millis(4);
        drop(slot);
        // One request computing, two waiting: the third in line expects 8 ms, admitted.
        let computing = admit(&queue, second).unwrap();
        let waiting = [
            admit(&queue, second).unwrap(),
            admit(&queue, second).unwrap(),
        ];
        // The fourth would wait 12 ms: refused on the estimate.
        let err = admit(&queue, second).err().unwrap();
        assert!(
            matches!(
                err,
                ServeError::QueueFull {
                    expected_ms: 12,
                    limit_ms: 10
                }
            ),
            "{err}"
        );
        // A tighter budget of the request's own is a tighter limit.
        drop(waiting);
        let err = admit(&queue, Duration::from_millis(2)).err().unwrap();
        assert!(
            matches!(err, ServeError::QueueFull { limit_ms: 2, .. }),
            "{err}"
        );
        // Refused and finished requests leave the queue.
        drop(computing);
        assert_eq!(queue.pending.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_request_waits_for_a_permit_until_the_limit_or_its_budget() {
        let queue = Arc::new(ComputeQueue::new(1, Duration::from_millis(20)));
        let budget = Duration::from_secs(1);
        let first = queue
            .enter(Arc::new(admit(&queue, budget).unwrap()), budget)
            .await;
        let _first = first.unwrap();
        // The only permit is held: the next waits out the queue limit, then is refused.
        let late = queue
            .enter(Arc::new(admit(&queue, budget).unwrap()), budget)
            .await;
        assert!(matches!(
            late,
            Err(ServeError::QueueFull { limit_ms: 20, .. })
        ));
        // Its own deadline, shorter than the limit, ends it as DEADLINE_EXCEEDED.
        let short = Duration::from_millis(5);
        let late = queue
            .enter(Arc::new(admit(&queue, short).unwrap()), short)
            .await;
        assert!(matches!(late, Err(ServeError::DeadlineExceeded)));
        assert_eq!(queue.pending.load(Ordering::Acquire), 1);
    }
}
