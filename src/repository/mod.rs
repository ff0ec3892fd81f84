//! A model repository on disk: `<root>/<model_name>/<version>/`, integer versions, newest
//! wins. Anything that is not an integer directory (a publisher's staging dir) is ignored.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub mod publish;
pub mod store;
pub mod watcher;

pub use store::ModelStore;

use crate::contract::{LoadError, Manifest};
use crate::runtime::LoadedModel;

#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    name: String,
}

/// What a version directory looks like on disk; a version that failed to load is retried
/// only once this changes.
pub type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

impl Repository {
    /// Opens `<root>/<name>`; without a name, the root must hold exactly one model.
    pub fn open(root: &Path, name: Option<&str>) -> Result<Repository, String> {
        if !root.is_dir() {
            return Err(format!(
                "model repository {} is not a directory",
                root.display()
            ));
        }
        let name = match name {
            Some(name) => name.to_string(),
            None => {
                let mut names: Vec<String> = fs::read_dir(root)
                    .map_err(|e| format!("{}: {e}", root.display()))?
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .collect();
                names.sort();
                match names.as_slice() {
                    [one] => one.clone(),
                    [] => return Err(format!("no model under {}", root.display())),
                    many => {
                        return Err(format!(
                            "{} holds several models ({}): choose one with --model-name",
                            root.display(),
                            many.join(", ")
                        ))
                    }
                }
            }
        };
        Ok(Repository {
            root: root.to_path_buf(),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn model_dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    pub fn version_dir(&self, version: u64) -> PathBuf {
        self.model_dir().join(version.to_string())
    }

    /// Published versions, newest first. A missing model directory has none yet.
    pub fn versions(&self) -> io::Result<Vec<u64>> {
        let entries = match fs::read_dir(self.model_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut versions: Vec<u64> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| version_of(e.file_name().to_str()?))
            .collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        Ok(versions)
    }

    /// Folders named like a version but not as one (`0018`, `+7`): never loaded, so worth
    /// a warning rather than silence.
    pub fn misnamed_versions(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.model_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.parse::<u64>().is_ok() && version_of(name).is_none())
            .collect();
        names.sort();
        names
    }

    pub fn fingerprint(&self, version: u64) -> io::Result<Fingerprint> {
        let mut files = Vec::new();
        for entry in fs::read_dir(self.version_dir(version))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, meta.len(), meta.modified().ok()));
        }
        files.sort();
        Ok(files)
    }

    /// Verifies, loads and warms up one version.
    pub fn load(&self, version: u64) -> Result<LoadedModel, LoadError> {
        let dir = self.version_dir(version);
        // A version is what the model folder holds: not a link to anywhere else.
        let inside = |d: &Path| {
            d.canonicalize()
                .map_err(|e| format!("{}: {e}", d.display()))
        };
        let (real, folder) = (inside(&dir), inside(&self.model_dir()));
        match (real, folder) {
            (Ok(real), Ok(folder)) if real.parent() == Some(folder.as_path()) => {}
            (Ok(real), Ok(_)) => {
                return Err(LoadError::Manifest(format!(
                    "{} resolves to {}, outside the model folder",
                    dir.display(),
                    real.display()
                )))
            }
            (Err(e), _) | (_, Err(e)) => return Err(LoadError::Incomplete(e)),
        }
        let manifest = Manifest::load_verified(&dir)?;
        if manifest.model_name != self.name {
            return Err(LoadError::Manifest(format!(
                "model_name {:?} does not match the directory {:?}",
                manifest.model_name, self.name
            )));
        }
        LoadedModel::load(&dir, version, manifest)
    }
}

/// The version a folder name denotes: a decimal integer written without leading zeros or
/// sign, the one way `degre publish` writes it (so `18` and `0018` cannot both be 18).
fn version_of(name: &str) -> Option<u64> {
    let version: u64 = name.parse().ok()?;
    (version.to_string() == name).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_names_are_versions() {
        assert_eq!(version_of("18"), Some(18));
        assert_eq!(version_of("0"), Some(0));
        for name in ["0018", "+18", "18 ", "", "v18", "-1", ".staging-18"] {
            assert_eq!(version_of(name), None, "{name:?}");
        }
    }

    #[test]
    fn misnamed_version_folders_are_listed_and_not_served() {
        let root = tempfile::tempdir().unwrap();
        for name in ["3", "0018", ".staging-x", "notes"] {
            fs::create_dir_all(root.path().join("m").join(name)).unwrap();
        }
        let repo = Repository::open(root.path(), Some("m")).unwrap();
        assert_eq!(repo.versions().unwrap(), [3]);
        assert_eq!(repo.misnamed_versions(), ["0018"]);
    }
}
