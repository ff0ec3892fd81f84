//! `manifest.json`: what a model version promises (feature schema, limits, tensor names) and
//! the sha256 of every file it ships. The contract is documented in `models/README.md`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::LoadError;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT_VERSION: u32 = 1;

/// A file modified this recently whose checksum does not match is taken for a copy in
/// progress (`incomplete`), not for corruption (`checksum`).
const STILL_COPYING: std::time::Duration = std::time::Duration::from_secs(10);

fn modified_within(path: &Path, window: std::time::Duration) -> bool {
    let modified = std::fs::metadata(path).and_then(|m| m.modified());
    modified.is_ok_and(|t| t.elapsed().is_ok_and(|age| age < window))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub model_name: String,
    pub schema: FeatureSchema,
    pub limits: Limits,
    /// Width of the decoder state, of `keys` and of `values`.
    pub hidden_size: usize,
    pub encoder: GraphSpec,
    pub decoder: GraphSpec,
    /// Free-form training provenance (data, seed, metrics); the server only logs it.
    #[serde(default)]
    pub provenance: serde_json::Value,
    /// sha256 (lowercase hex) of every file of the version except the manifest itself.
    pub files: BTreeMap<String, String>,
}

/// Names and sizes of the features a request must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSchema {
    pub context_dense: Vec<String>,
    pub context_categorical: Vec<Categorical>,
    pub candidate_dense: Vec<String>,
    pub candidate_categorical: Vec<Categorical>,
    /// The encoder reads the incumbent's order: the `upstream` input, derived from the
    /// candidates' `ranking_score` (see `contract::upstream`). Optional for callers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ranking_score: bool,
}

impl FeatureSchema {
    /// A schema of positional names (`context_dense_0`, …, `candidate_categorical_1`), for
    /// features known only by their sizes, as in logs.
    pub fn positional(
        context_dense: usize,
        context_vocab: &[u64],
        candidate_dense: usize,
        candidate_vocab: &[u64],
    ) -> FeatureSchema {
        let names = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}_{i}")).collect();
        let categorical = |prefix: &str, vocab: &[u64]| {
            let named = |(i, &vocab_size)| Categorical {
                name: format!("{prefix}_{i}"),
                vocab_size,
                hashed: false,
            };
            vocab.iter().enumerate().map(named).collect()
        };
        FeatureSchema {
            context_dense: names("context_dense", context_dense),
            context_categorical: categorical("context_categorical", context_vocab),
            candidate_dense: names("candidate_dense", candidate_dense),
            candidate_categorical: categorical("candidate_categorical", candidate_vocab),
            ranking_score: false,
        }
    }

    /// Whether callers send the same features to both: `ranking_score` is optional in a
    /// request, so a version may start or stop reading it.
    pub fn same_features(&self, other: &FeatureSchema) -> bool {
        let features = |s: &FeatureSchema| FeatureSchema {
            ranking_score: false,
            ..s.clone()
        };
        features(self) == features(other)
    }
}

/// A categorical feature. Known ids are `0..vocab_size`; any larger id is looked up in the
/// reserved unknown bucket, row `vocab_size` of the feature's embedding table. A `hashed`
/// feature's ids are of any size (hashes, 64-bit keys), folded into its rows by
/// `rerank::vocab_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Categorical {
    pub name: String,
    pub vocab_size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hashed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most candidates the model accepts in one request.
    pub max_candidates: usize,
}

/// One ONNX graph of the version and the graph's tensor name for each role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    pub file: String,
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads and checks a version directory's manifest, including every file's checksum.
    pub fn load_verified(dir: &Path) -> Result<Manifest, LoadError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| missing_or(e, &path, LoadError::Manifest))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| LoadError::Manifest(format!("{}: {e}", path.display())))?;
        manifest.validate()?;
        // A listed file not there yet is a copy under way, whatever the others hold: say so
        // before judging any checksum (a copy that keeps modification times, `cp -p` or
        // rsync, would otherwise count as corrupt once, then be judged again when complete).
        for file in manifest.files.keys() {
            let path = dir.join(file);
            std::fs::metadata(&path).map_err(|e| missing_or(e, &path, LoadError::Checksum))?;
        }
        for (file, expected) in &manifest.files {
            let path = dir.join(file);
            let actual =
                sha256_file(&path).map_err(|e| missing_or(e, &path, LoadError::Checksum))?;
            if &actual != expected {
                let why = format!("{file}: sha256 is {actual}, manifest says {expected}");
                // A file written in the last seconds is most likely a copy still under way
                // (not atomic): not corrupt yet, and retried once it changes.
                if modified_within(&path, STILL_COPYING) {
                    return Err(LoadError::Incomplete(format!(
                        "{why} (modified just now: still being copied?)"
                    )));
                }
                return Err(LoadError::Checksum(why));
            }
        }
        Ok(manifest)
    }

    /// Internal consistency: format, sizes, and every graph file covered by a checksum.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |msg: String| Err(LoadError::Manifest(msg));
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "format_version {} is not supported (expected {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.hidden_size == 0 {
            return bad("hidden_size must be > 0".into());
        }
        if self.limits.max_candidates == 0 {
            return bad("limits.max_candidates must be > 0".into());
        }
        if self.schema.candidate_dense.is_empty() && self.schema.candidate_categorical.is_empty() {
            return bad("schema: candidates need at least one feature".into());
        }
        for graph in [&self.encoder, &self.decoder] {
            if !self.files.contains_key(&graph.file) {
                return bad(format!("graph {} has no entry in files", graph.file));
            }
        }
        for file in self.files.keys() {
            let plain = Path::new(file).components().count() == 1 && file != MANIFEST_FILE;
            if !plain {
                return bad(format!("files: {file:?} must be a plain file name"));
            }
        }
        Ok(())
    }
}

/// A missing file means a partial publish; anything else is `other`.
fn missing_or(e: std::io::Error, path: &Path, other: fn(String) -> LoadError) -> LoadError {
    let msg = format!("{}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::Incomplete(msg),
        _ => other(msg),
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version dir whose one file does not match its checksum, written `age` ago, and
    /// whose manifest also lists `missing` files that are not there.
    fn mismatched(age: std::time::Duration, missing: &[&str]) -> Result<Manifest, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = serde_json::json!({
            "format_version": FORMAT_VERSION, "model_name": "m", "hidden_size": 4,
            "schema": {"context_dense": [], "context_categorical": [],
                       "candidate_dense": ["x"], "candidate_categorical": []},
            "limits": {"max_candidates": 8},
            "encoder": {"file": "e.onnx", "inputs": {}, "outputs": {}},
            "decoder": {"file": "e.onnx", "inputs": {}, "outputs": {}},
            "files": {"e.onnx": sha256_hex(b"all of it")},
        });
        for file in missing {
            manifest["files"][file] = sha256_hex(b"later").into();
        }
        std::fs::write(dir.path().join(MANIFEST_FILE), manifest.to_string()).unwrap();
        let graph = dir.path().join("e.onnx");
        std::fs::write(&graph, b"all of").unwrap();
        let file = std::fs::File::options().write(true).open(&graph).unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
        Manifest::load_verified(dir.path())
    }

    #[test]
    fn a_mismatch_in_a_file_written_just_now_is_a_copy_in_progress() {
        let fresh = mismatched(std::time::Duration::ZERO, &[]).unwrap_err();
        assert_eq!(fresh.reason(), "incomplete", "{fresh}");
        let old = mismatched(std::time::Duration::from_secs(60), &[]).unwrap_err();
        assert_eq!(old.reason(), "checksum", "{old}");
    }

    #[test]
    fn a_listed_file_still_missing_makes_the_version_incomplete_before_any_checksum() {
        // "z.onnx" sorts after the old, mismatched "e.onnx": it is looked for first anyway.
        let partial = mismatched(std::time::Duration::from_secs(60), &["z.onnx"]).unwrap_err();
        assert_eq!(partial.reason(), "incomplete", "{partial}");
        assert!(partial.to_string().contains("z.onnx"), "{partial}");
    }
}
