//! Canary and shadow traffic between the two newest loaded versions, without a separate
//! deployment (docs/operations in README, "Canary and shadow").
//!
//! - **Canary**: with `canary_share` below 1, a newly served version answers that share of
//!   the requests that do not pin a version, and the version it replaced (kept loaded)
//!   answers the rest. The split hashes the request's `routing_key` (else its
//!   `request_id`), so one key always lands on the same version.
//! - **Shadow**: a `shadow_share` of requests is also decoded by the other of the two
//!   versions, off the request's path (one at a time; skipped, and counted, when one is
//!   already running), and how the two lists differ is exported by version.
//!
//! Promotion and rollback stay file-based: publish a version, or pin one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::api::v1;
use crate::repository::store::StoreError;
use crate::repository::ModelStore;
use crate::rerank::{Pick, RerankInput};
use crate::runtime::LoadedModel;
use crate::telemetry;

/// Independent draws for the canary split and the shadow sample.
const CANARY_SALT: u64 = 0x243f_6a88_85a3_08d3;
const SHADOW_SALT: u64 = 0x1319_8a2e_0370_7344;

pub struct Routing {
    canary_share: f64,
    shadow_share: f64,
    /// One shadow decode at a time: shadow traffic never competes with more than one core.
    shadow_slot: Arc<Semaphore>,
    /// Requests without any key are spread by arrival instead.
    arrivals: AtomicU64,
}

/// Which side of a split a request falls on.
pub struct Draw {
    canary: f64,
    shadow: f64,
}

impl Routing {
    pub fn new(canary_share: f64, shadow_share: f64) -> Routing {
        Routing {
            canary_share,
            shadow_share,
            shadow_slot: Arc::new(Semaphore::new(1)),
            arrivals: AtomicU64::new(0),
        }
    }

    /// The request's place in `[0, 1)` for each split.
    pub fn draw(&self, request: &v1::RerankRequest) -> Draw {
        if self.canary_share >= 1.0 && self.shadow_share <= 0.0 {
            // Neither split is on (the default): nothing to hash on the request path.
            return Draw {
                canary: 0.0,
                shadow: 1.0,
            };
        }
        let key = match (&request.routing_key, &request.request_id) {
            (k, _) if !k.is_empty() => fnv1a(k.as_bytes()),
            (_, id) if !id.is_empty() => fnv1a(id.as_bytes()),
            _ => fnv1a(&self.arrivals.fetch_add(1, Ordering::Relaxed).to_le_bytes()),
        };
        Draw {
            canary: unit(mix(key ^ CANARY_SALT)),
            shadow: unit(mix(key ^ SHADOW_SALT)),
        }
    }

    /// The version that answers: the pinned one, else the newest for the canary share and
    /// the one it replaced for the rest.
    pub fn answering(
        &self,
        store: &ModelStore,
        pinned: Option<u64>,
        draw: &Draw,
    ) -> Result<Arc<LoadedModel>, StoreError> {
        if pinned.is_some() || draw.canary < self.canary_share {
            return store.get(pinned);
        }
        match store.previous() {
            Some(previous) => Ok(previous),
            None => store.get(None),
        }
    }

    /// Decodes `input` with the other of the two newest versions, off the request's path,
    /// when the request is in the shadow sample.
    pub fn shadow(
        &self,
        store: &ModelStore,
        draw: &Draw,
        answered_by: u64,
        input: &RerankInput,
        answered: &[Pick],
    ) {
        if draw.shadow >= self.shadow_share {
            return;
        }
        let Some(other) = store.other_than(answered_by) else {
            return;
        };
        let Ok(slot) = self.shadow_slot.clone().try_acquire_owned() else {
            telemetry::shadow_skipped();
            return;
        };
        let input = input.clone();
        let answered: Vec<usize> = answered.iter().map(|p| p.index).collect();
        tokio::spawn(async move {
            let _slot = slot;
            let started = Instant::now();
            let Ok(picks) = other.rerank(&input) else {
                telemetry::shadow_failed(other.version);
                return;
            };
            let seconds = started.elapsed().as_secs_f64();
            let shadow: Vec<usize> = picks.iter().map(|p| p.index).collect();
            telemetry::shadow_compared(
                other.version,
                answered_by,
                overlap(&answered, &shadow),
                kendall_tau(&answered, &shadow),
                seconds,
            );
        });
    }
}

/// Share of the answered list's items the shadow list also holds.
pub fn overlap(answered: &[usize], shadow: &[usize]) -> f64 {
    let shared = answered.iter().filter(|a| shadow.contains(a)).count();
    shared as f64 / answered.len().max(1) as f64
}

/// Kendall's tau of the order both lists give their common items; `None` with fewer
/// than two in common.
pub fn kendall_tau(answered: &[usize], shadow: &[usize]) -> Option<f64> {
    let common: Vec<(usize, usize)> = answered
        .iter()
        .enumerate()
        .filter_map(|(i, a)| Some((i, shadow.iter().position(|s| s == a)?)))
        .collect();
    let pairs = common.len() * common.len().saturating_sub(1) / 2;
    if pairs == 0 {
        return None;
    }
    let mut score = 0i64;
    for (x, &(i, p)) in common.iter().enumerate() {
        for &(j, q) in &common[x + 1..] {
            score += if (i < j) == (p < q) { 1 } else { -1 };
        }
    }
    Some(score as f64 / pairs as f64)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A 64-bit finaliser (splitmix64): FNV's low bits alone split poorly.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_and_rank_agreement() {
        assert_eq!(overlap(&[1, 2, 3, 4], &[4, 3, 9, 8]), 0.5);
        assert_eq!(kendall_tau(&[1, 2, 3], &[1, 2, 3]), Some(1.0));
        assert_eq!(kendall_tau(&[1, 2, 3], &[3, 2, 1]), Some(-1.0));
        assert_eq!(kendall_tau(&[1, 2, 3], &[2, 1, 3]), Some(1.0 / 3.0));
        assert_eq!(kendall_tau(&[1, 2], &[2, 5]), None);
    }

    #[test]
    fn a_key_always_draws_the_same_and_shares_are_uniform() {
        let routing = Routing::new(0.2, 0.0);
        let request = |key: String| v1::RerankRequest {
            request_id: key,
            ..v1::RerankRequest::default()
        };
        let draws: Vec<f64> = (0..20_000)
            .map(|i| routing.draw(&request(format!("r{i}"))).canary)
            .collect();
        let share = draws.iter().filter(|&&d| d < 0.2).count() as f64 / draws.len() as f64;
        // 4 standard errors of a binomial share of 0.2 over 20,000 draws.
        assert!(
            (share - 0.2).abs() < 4.0 * (0.2f64 * 0.8 / 20_000.0).sqrt(),
            "{share}"
        );
        assert_eq!(routing.draw(&request("r7".into())).canary, draws[7]);
    }
}
