//! Atomic publish: a version is written into a staging directory next to the versions and
//! renamed into place, so a watcher sees it complete or not at all.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::Repository;

/// Publishes `files` (name, bytes) as the next version of `<root>/<name>`; returns it.
pub fn publish_files(root: &Path, name: &str, files: &[(String, Vec<u8>)]) -> io::Result<u64> {
    let model_dir = root.join(name);
    fs::create_dir_all(&model_dir)?;
    let staging = staging_dir(&model_dir);
    fs::create_dir(&staging)?;
    let result = write_all(&staging, files).and_then(|()| rename_as_next(root, name, &staging));
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Writes `files` into `dir` (created if missing), each synced to disk: a version
/// directory outside any repository, e.g. an exporter's output, ready to `publish`.
pub fn write_version_dir(dir: &Path, files: &[(String, Vec<u8>)]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    write_all(dir, files)
}

fn write_all(dir: &Path, files: &[(String, Vec<u8>)]) -> io::Result<()> {
    for (file, bytes) in files {
        let mut f = fs::File::create(dir.join(file))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    Ok(())
}

/// The highest version ever published here, kept beside the versions: a number is never
/// given twice, even after its folder was removed (a server may still serve it from memory
/// and would never load other files under the same number). Advisory: publishers racing
/// may lower it, never below what is on disk.
const LAST_PUBLISHED: &str = ".last-published";

/// Renames the staged directory to the next free version; retries if a concurrent
/// publisher took that number first.
fn rename_as_next(root: &Path, name: &str, staging: &Path) -> io::Result<u64> {
    let repo = Repository::open(root, Some(name)).map_err(io::Error::other)?;
    let marker = repo.model_dir().join(LAST_PUBLISHED);
    let last_published = || -> u64 {
        fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    for _ in 0..16 {
        let on_disk = repo.versions()?.first().copied().unwrap_or(0);
        let next = on_disk.max(last_published()) + 1;
        let target = repo.version_dir(next);
        if target.exists() {
            continue;
        }
        match fs::rename(staging, &target) {
            Ok(()) => {
                let staged = marker.with_extension(format!("{}", std::process::id()));
                fs::write(&staged, next.to_string()).and_then(|()| fs::rename(&staged, &marker))?;
                return Ok(next);
            }
            Err(e) if target.exists() => tracing::debug!(%e, next, "version taken, retrying"),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "could not claim a version number after 16 attempts",
    ))
}

fn staging_dir(model_dir: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    model_dir.join(format!(".staging-{}-{nanos}", std::process::id()))
}
