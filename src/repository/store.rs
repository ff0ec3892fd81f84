//! The serving models. Readers take an `Arc` of a version and keep it for their whole
//! request, so a swap never disturbs a request in flight; one writer (the watcher) swaps.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::runtime::LoadedModel;

/// Why no model can serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no model is loaded yet")]
    NoModel,
    #[error("model_version {requested} is not loaded (loaded: {loaded:?})")]
    VersionNotLoaded { requested: u64, loaded: Vec<u64> },
}

struct Snapshot {
    current: Arc<LoadedModel>,
    /// Versions served before `current`, newest first, kept for requests that pin them.
    previous: Vec<Arc<LoadedModel>>,
}

impl Snapshot {
    /// Every loaded version, the serving one first.
    fn all(&self) -> impl Iterator<Item = &Arc<LoadedModel>> {
        std::iter::once(&self.current).chain(&self.previous)
    }
}

pub struct ModelStore {
    snapshot: ArcSwapOption<Snapshot>,
    keep_previous: usize,
}

impl ModelStore {
    /// `keep_previous` older versions stay loaded for requests that pin a version.
    pub fn new(keep_previous: usize) -> ModelStore {
        ModelStore {
            snapshot: ArcSwapOption::empty(),
            keep_previous,
        }
    }

    pub fn current(&self) -> Option<Arc<LoadedModel>> {
        self.snapshot.load().as_ref().map(|s| s.current.clone())
    }

    /// The current model, or the pinned version if it is loaded.
    pub fn get(&self, version: Option<u64>) -> Result<Arc<LoadedModel>, StoreError> {
        let guard = self.snapshot.load();
        let snapshot = guard.as_ref().ok_or(StoreError::NoModel)?;
        let Some(requested) = version else {
            return Ok(snapshot.current.clone());
        };
        let found = snapshot.all().find(|g| g.version == requested).cloned();
        found.ok_or_else(|| StoreError::VersionNotLoaded {
            requested,
            loaded: snapshot.all().map(|g| g.version).collect(),
        })
    }

    /// The version the serving one replaced, if it is still loaded.
    pub fn previous(&self) -> Option<Arc<LoadedModel>> {
        self.snapshot.load().as_ref()?.previous.first().cloned()
    }

    /// The other of the two newest loaded versions: the serving one, or for the serving
    /// one the version it replaced.
    pub fn other_than(&self, version: u64) -> Option<Arc<LoadedModel>> {
        let guard = self.snapshot.load();
        let snapshot = guard.as_ref()?;
        if snapshot.current.version != version {
            return Some(snapshot.current.clone());
        }
        snapshot.previous.first().cloned()
    }

    /// The serving version and every loaded one, the serving one first.
    pub fn versions(&self) -> Option<(u64, Vec<u64>)> {
        let guard = self.snapshot.load();
        let snapshot = guard.as_ref()?;
        Some((
            snapshot.current.version,
            snapshot.all().map(|g| g.version).collect(),
        ))
    }

    /// Makes a fully validated model the serving one.
    pub fn swap_in(&self, model: Arc<LoadedModel>) {
        let old = self.snapshot.load_full();
        let previous = old.map_or_else(Vec::new, |s| {
            s.all()
                .filter(|g| g.version != model.version)
                .take(self.keep_previous)
                .cloned()
                .collect()
        });
        self.snapshot.store(Some(Arc::new(Snapshot {
            current: model,
            previous,
        })));
    }
}
