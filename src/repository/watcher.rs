//! Polls the repository and hot-swaps to the newest valid version (or the pinned one).
//! A version is loaded and warmed up in full before it is swapped in; a version that fails
//! is logged, counted, and not retried until its files change.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use super::{Fingerprint, ModelStore, Repository};
use crate::contract::LoadError;
use crate::runtime::LoadedModel;
use crate::telemetry;

/// At ~5 ms each, bounds the extra load time of a version to well under a second.
const MAX_PREPARED_SIZES: usize = 64;

pub struct Watcher {
    repo: Repository,
    store: Arc<ModelStore>,
    pin: Option<u64>,
    failed: HashMap<u64, Fingerprint>,
    /// Whether the removal of the serving version's folder was already reported.
    warned_removed: bool,
    /// Misnamed version folders already reported.
    warned_misnamed: Vec<String>,
    on_swap: Box<dyn Fn(u64) + Send>,
    load_timeout: Duration,
    /// A load given up on at its timeout, perhaps still running: no other starts until it
    /// ends, so slow versions cannot pile up loads in memory.
    abandoned: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    pub fn new(
        repo: Repository,
        store: Arc<ModelStore>,
        pin: Option<u64>,
        load_timeout: Duration,
        on_swap: impl Fn(u64) + Send + 'static,
    ) -> Watcher {
        telemetry::model_load_reasons(&LoadError::REASONS);
        Watcher {
            repo,
            store,
            pin,
            failed: HashMap::new(),
            warned_removed: false,
            warned_misnamed: Vec::new(),
            on_swap: Box::new(on_swap),
            load_timeout,
            abandoned: None,
        }
    }

    /// Polls now and then every `interval` until `stop` is signalled or dropped; warns
    /// every 30 s while no version serves.
    pub fn run(mut self, interval: Duration, stop: Receiver<()>) {
        const WARN_EVERY: Duration = Duration::from_secs(30);
        let started = std::time::Instant::now();
        let mut warned = started;
        loop {
            self.poll();
            if self.store.current().is_none() && warned.elapsed() >= WARN_EVERY {
                warned = std::time::Instant::now();
                tracing::warn!(
                    dir = %self.repo.model_dir().display(),
                    waited_s = started.elapsed().as_secs(),
                    rejected = self.failed.len(),
                    "no valid model version to serve yet: answering UNAVAILABLE"
                );
            }
            match stop.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => continue,
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// One pass: the newest version not known to be bad, unless it already serves.
    pub fn poll(&mut self) {
        if self
            .abandoned
            .as_ref()
            .is_some_and(|load| !load.is_finished())
        {
            return;
        }
        self.abandoned = None;
        let versions = match self.repo.versions() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%e, dir = %self.repo.model_dir().display(), "cannot list model versions");
                return;
            }
        };
        let misnamed = self.repo.misnamed_versions();
        for name in misnamed
            .iter()
            .filter(|n| !self.warned_misnamed.contains(n))
        {
            tracing::warn!(
                folder = %self.repo.model_dir().join(name).display(),
                "not a version folder name (versions are written without leading zeros or sign): ignored"
            );
        }
        self.warned_misnamed = misnamed;
        // Forget failures of versions that are gone, so the map stays bounded.
        self.failed.retain(|v, _| versions.contains(v));
        let current = self.store.current().map(|g| g.version);
        // The serving version's folder was removed: keep serving it (it is in memory) rather
        // than fall back to an older one unasked; rolling back is what a pin is for.
        if let Some(c) = current {
            let newest = versions
                .iter()
                .copied()
                .filter(|v| self.pin.is_none_or(|p| p == *v))
                .max();
            if !versions.contains(&c) && newest.is_none_or(|v| v < c) {
                if !self.warned_removed {
                    self.warned_removed = true;
                    tracing::warn!(
                        version = c,
                        dir = %self.repo.version_dir(c).display(),
                        "the serving version was removed from disk; it keeps serving from memory (pin a version to roll back)"
                    );
                }
                return;
            }
        }
        self.warned_removed = false;
        let pin = self.pin;
        let wanted = versions.into_iter().filter(|v| pin.is_none_or(|p| p == *v));
        for version in wanted {
            if Some(version) == current {
                return;
            }
            let Ok(fingerprint) = self.repo.fingerprint(version) else {
                continue; // removed while we looked
            };
            if self.failed.get(&version) == Some(&fingerprint) {
                continue;
            }
            if self.try_load(version) {
                self.failed.remove(&version);
                return;
            }
            self.failed.insert(version, fingerprint);
        }
    }

    fn try_load(&mut self, version: u64) -> bool {
        let started = std::time::Instant::now();
        let result = self.load_in_time(version).and_then(|model| {
            self.check_schema(&model)?;
            self.prepare_like_serving(&model);
            Ok(model)
        });
        match result {
            Ok(model) => {
                let model = Arc::new(model);
                tracing::info!(
                    model = %model.name, version, load_ms = started.elapsed().as_millis() as u64,
                    engine = ?model.engine(), provenance = %model.manifest.provenance,
                    "serving model version"
                );
                telemetry::model_loaded(&model.name, version, started.elapsed().as_secs_f64());
                self.store.swap_in(model);
                (self.on_swap)(version);
                true
            }
            Err(e) => {
                tracing::warn!(model = %self.repo.name(), version, err = %e, "model version rejected, keeping the serving one");
                telemetry::model_load_failed(e.reason());
                false
            }
        }
    }

    /// Loads `version` on its own thread, given up on after the load timeout (the thread
    /// then runs on to its end, its result dropped). A graph that makes tract panic is one
    /// more bad version, not a dead watcher.
    fn load_in_time(&mut self, version: u64) -> Result<LoadedModel, LoadError> {
        let panicked = || LoadError::Graph("loading panicked".into());
        let (done, loaded) = std::sync::mpsc::sync_channel(1);
        let repo = self.repo.clone();
        let load = std::thread::Builder::new()
            .name("model-load".into())
            .spawn(move || {
                let load =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.load(version)));
                let _ = done.send(load.unwrap_or_else(|_| Err(panicked())));
            })
            .map_err(|e| LoadError::Graph(format!("cannot start a loading thread: {e}")))?;
        match loaded.recv_timeout(self.load_timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Disconnected) => Err(panicked()),
            Err(RecvTimeoutError::Timeout) => {
                self.abandoned = Some(load);
                Err(LoadError::Timeout(format!(
                    "not loaded and warmed up within {} ms",
                    self.load_timeout.as_millis()
                )))
            }
        }
    }

    /// Specialises the new version's encoder to the candidate counts the serving version
    /// sees, so the swap does not send traffic back to the slower generic plan.
    fn prepare_like_serving(&self, model: &LoadedModel) {
        let Some(serving) = self.store.current() else {
            return;
        };
        let mut sizes = serving.prepared_sizes();
        sizes.sort_unstable();
        for n in sizes.into_iter().take(MAX_PREPARED_SIZES) {
            model.prepare(n);
        }
    }

    /// Callers code against the serving schema and limits: a version that changes the
    /// schema, or accepts fewer candidates than the serving one, is rejected.
    fn check_schema(&self, model: &LoadedModel) -> Result<(), LoadError> {
        let Some(serving) = self.store.current() else {
            return Ok(());
        };
        let restart = |what: String| {
            Err(LoadError::Schema(format!(
                "{what} serving version {}; restart the server to change it",
                serving.version
            )))
        };
        let (old, new) = (&serving.manifest, &model.manifest);
        if !old.schema.same_features(&new.schema) {
            return restart("feature schema differs from".into());
        }
        if new.limits.max_candidates < old.limits.max_candidates {
            return restart(format!(
                "limits.max_candidates {} is below the {} of",
                new.limits.max_candidates, old.limits.max_candidates
            ));
        }
        Ok(())
    }
}
