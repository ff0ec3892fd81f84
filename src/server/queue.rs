//! Admission to compute by queueing time: a request that would wait longer than the limit
//! (or than its own deadline) is refused at once, so that under overload the requests that
//! are admitted still answer fast, and the rest learn at once that they should go elsewhere.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::status::ServeError;
use crate::telemetry;

pub struct ComputeQueue {
    permits: Semaphore,
    threads: usize,
    /// Requests waiting for or holding a permit.
    queued: AtomicUsize,
    /// Moving average of one request's compute time, in nanoseconds.
    compute_ns: AtomicU64,
    limit: Duration,
}

/// A request's place in compute: its permit, and its count in the queue until dropped.
pub struct Slot<'a> {
    queue: &'a ComputeQueue,
    _permit: SemaphorePermit<'a>,
    started: Instant,
}

impl ComputeQueue {
    pub fn new(threads: usize, limit: Duration) -> ComputeQueue {
        ComputeQueue {
            permits: Semaphore::new(threads),
            threads,
            queued: AtomicUsize::new(0),
            compute_ns: AtomicU64::new(0),
            limit,
        }
    }

    /// Waits for a compute permit, unless the queue ahead is expected to take longer than
    /// the limit or than `budget` (RESOURCE_EXHAUSTED at once). A wait that reaches the
    /// limit anyway ends the same way, or as DEADLINE_EXCEEDED if `budget` ran out first.
    pub async fn enter(&self, budget: Duration) -> Result<Slot<'_>, ServeError> {
        let arrived = Instant::now();
        let ahead = self.queued.fetch_add(1, Ordering::AcqRel);
        let guard = Leave(self);
        let per_request = Duration::from_nanos(self.compute_ns.load(Ordering::Relaxed));
        // Requests ahead, drained `threads` at a time.
        let expected = per_request.mul_f64(ahead.saturating_sub(self.threads - 1) as f64)
            / self.threads as u32;
        let limit = self.limit.min(budget);
        let full = |expected: Duration| ServeError::QueueFull {
            expected_ms: expected.as_millis() as u64,
            limit_ms: limit.as_millis() as u64,
        };
        if expected > limit {
            return Err(full(expected));
        }
        // Compute runs on this worker without awaiting: before taking the worker, let every
        // request already received reach this point and count itself, so the queue length
        // the estimate reads is the real one, not only who got here first.
        tokio::task::yield_now().await;
        let timed_out = || {
            if budget <= self.limit {
                ServeError::DeadlineExceeded
            } else {
                full(limit)
            }
        };
        let permit = tokio::time::timeout(limit, self.permits.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| ServeError::Task(e.to_string()))?;
        std::mem::forget(guard); // the slot leaves the queue instead
        let started = Instant::now();
        telemetry::queue_wait(started.duration_since(arrived).as_secs_f64());
        Ok(Slot {
            queue: self,
            _permit: permit,
            started,
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let took = self.started.elapsed().as_nanos() as u64;
        let q = self.queue;
        // An exponential moving average over ~8 requests; races lose an update, no more.
        let old = q.compute_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        };
        q.compute_ns.store(new, Ordering::Relaxed);
        q.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a refused or abandoned request out of the queue count.
struct Leave<'a>(&'a ComputeQueue);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_queue_is_refused_at_once_and_a_short_one_waits() {
        let queue = ComputeQueue::new(1, Duration::from_millis(10));
        // Teach it that a request computes for 4 ms.
        let mut slot = queue.enter(Duration::from_secs(1)).await.unwrap();
        slot.started -= Duration::from_millis(4);
        drop(slot);
        // One request computing, two waiting: the third in line expects 8 ms, admitted.
        let computing = queue.enter(Duration::from_secs(1)).await.unwrap();
        let second = queue.enter(Duration::from_secs(1));
        let third = queue.enter(Duration::from_secs(1));
        let (second, third) = (Box::pin(second), Box::pin(third));
        // Poll both once so they take their places in the queue.
        let (second, third) = {
            let mut second = second;
            let mut third = third;
            assert!(futures_poll_once(&mut second).await.is_none());
            assert!(futures_poll_once(&mut third).await.is_none());
            (second, third)
        };
        // The fourth would wait 12 ms: refused on the estimate (a timeout would say 10).
        let err = queue.enter(Duration::from_secs(1)).await.err().unwrap();
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
        drop((second, third));
        let err = queue.enter(Duration::from_millis(2)).await.err().unwrap();
        assert!(
            matches!(err, ServeError::QueueFull { limit_ms: 2, .. }),
            "{err}"
        );
        drop(computing);
        assert_eq!(queue.queued.load(Ordering::Acquire), 0);
    }

    /// Polls a future once: `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
