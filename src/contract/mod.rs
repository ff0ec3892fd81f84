//! The model contract: what a version directory must hold (`manifest.json` with the
//! feature schema, limits and checksums) and which tensors each graph takes and gives
//! (`roles`). It imports nothing else of degre; everything that reads or writes a model
//! version depends on it. Documented for producers in `models/README.md`.

pub mod golden;
pub mod manifest;
pub mod roles;
pub mod upstream;

pub use manifest::{Categorical, FeatureSchema, Limits, Manifest};

/// Why a model version was refused: it breaks the contract, or its graphs do not run. `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("incomplete: {0}")]
    Incomplete(String),
    #[error("checksum: {0}")]
    Checksum(String),
    #[error("graph: {0}")]
    Graph(String),
    #[error("schema: {0}")]
    Schema(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("warm-up: {0}")]
    Warmup(String),
    #[error("golden set: {0}")]
    Golden(String),
    #[error("timeout: {0}")]
    Timeout(String),
}

impl LoadError {
    /// Every `reason()`, so each failure counter can start at 0.
    pub const REASONS: [&'static str; 9] = [
        "manifest",
        "incomplete",
        "checksum",
        "graph",
        "schema",
        "weights",
        "warmup",
        "golden",
        "timeout",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            LoadError::Manifest(_) => "manifest",
            LoadError::Incomplete(_) => "incomplete",
            LoadError::Checksum(_) => "checksum",
            LoadError::Graph(_) => "graph",
            LoadError::Schema(_) => "schema",
            LoadError::Weights(_) => "weights",
            LoadError::Warmup(_) => "warmup",
            LoadError::Golden(_) => "golden",
            LoadError::Timeout(_) => "timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LoadError;

    #[test]
    fn every_reason_is_listed() {
        let all = [
            LoadError::Manifest(String::new()),
            LoadError::Incomplete(String::new()),
            LoadError::Checksum(String::new()),
            LoadError::Graph(String::new()),
            LoadError::Schema(String::new()),
            LoadError::Weights(String::new()),
            LoadError::Warmup(String::new()),
            LoadError::Golden(String::new()),
            LoadError::Timeout(String::new()),
        ];
        let reasons: Vec<_> = all.iter().map(LoadError::reason).collect();
        assert_eq!(reasons, LoadError::REASONS);
    }
}
