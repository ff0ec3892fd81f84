//! The rooms of `src/` import each other only along the arrows of docs/architecture.md:
//! the serving core never reaches up into `network/` or `offline/`, and nothing imports in a
//! cycle. Read from the source, so a new `use crate::…` that breaks the layout fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each room and the rooms it may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("contract", &[]),
    ("telemetry", &[]),
    ("config", &[]),
    ("rerank", &["contract"]),
    ("runtime", &["contract", "rerank"]),
    ("repository", &["contract", "runtime", "telemetry"]),
    ("api", &["contract", "rerank"]),
    (
        "server",
        &[
            "api",
            "config",
            "repository",
            "rerank",
            "runtime",
            "telemetry",
        ],
    ),
    ("network", &["contract", "rerank"]),
    ("offline", &["contract", "network", "rerank", "runtime"]),
];

fn room_of(src: &Path, file: &Path) -> String {
    let first = file.strip_prefix(src).unwrap().components().next().unwrap();
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `room -> rooms it names as crate::<room>` over every file of `src/`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let room = room_of(&src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        let used = graph.entry(room.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != room {
                used.insert(name);
            }
        }
    }
    graph
}

#[test]
fn rooms_import_only_along_the_documented_arrows() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut broken = Vec::new();
    for (room, used) in imports() {
        let Some(may) = allowed.get(room.as_str()) else {
            continue; // lib.rs, main.rs, cli/: the top, free to use any room
        };
        for target in used {
            if !may.contains(&target.as_str()) {
                broken.push(format!("{room} -> {target}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against docs/architecture.md: {broken:?}"
    );
}

#[test]
fn the_serving_core_is_listed_and_reads_real_files() {
    let graph = imports();
    for room in [
        "contract",
        "rerank",
        "runtime",
        "repository",
        "server",
        "offline",
    ] {
        assert!(graph.contains_key(room), "no files found for {room}");
    }
    // The scan sees real arrows: the runtime does import the request domain.
    assert!(graph["runtime"].contains("rerank"));
}
