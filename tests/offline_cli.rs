//! The offline commands end to end, as a user runs them: `degre simulate` writes Parquet
//! that pyarrow (a reader nobody here wrote) reads, `degre train-evaluator` trains on it,
//! `degre mine` searches it (in shards, blended with a pointwise evaluator), and `degre
//! eval` compares policies in a JSON report. pyarrow comes from python3; CI installs it and
//! sets DEGRE_REQUIRE_PYARROW=1 so that check cannot be skipped there.
#![cfg(feature = "offline")]

use std::path::Path;
use std::process::Command;

fn degre(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_degre"))
        .args(args)
        .output()
        .expect("degre runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "degre {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs degre expecting it to fail (without a panic); its stderr.
fn degre_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_degre"))
        .args(args)
        .output()
        .expect("degre runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "degre {args:?} succeeded:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

const PYARROW_CHECK: &str = r#"
import json, sys
import pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])
rows = table.to_pylist()
print(json.dumps({
    "rows": table.num_rows,
    "columns": table.column_names,
    "candidates": len(rows[0]["candidates"]),
    "first_item": rows[0]["candidates"][0]["item_id"],
    "exposed": rows[0]["exposed"],
    "clicks": rows[0]["clicks"],
}))
"#;

fn pyarrow_reads(path: &Path) -> Option<serde_json::Value> {
    pyarrow(PYARROW_CHECK, &[path]).map(|stdout| serde_json::from_slice(&stdout).unwrap())
}

/// Runs a python3 script that imports pyarrow; its stdout, or `None` (the check skipped)
/// when pyarrow is missing and DEGRE_REQUIRE_PYARROW is not set.
fn pyarrow(script: &str, args: &[&Path]) -> Option<Vec<u8>> {
    let out = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && stderr.contains("ModuleNotFoundError")
        && std::env::var_os("DEGRE_REQUIRE_PYARROW").is_none()
    {
        eprintln!("pyarrow check not run: {stderr}");
        return None;
    }
    assert!(out.status.success(), "{stderr}");
    Some(out.stdout)
}

/// Rewrites a log the way other writers store it: Polars (`large_list`, `large_string`,
/// zstd pages), a pandas categorical (a dictionary-encoded string, lz4), gzip pages, old
/// Hive (strings as bytes without the UTF-8 annotation), a
/// warehouse table (integer keys, 0/1 clicks, unsigned ids, decimal money, NULL where
/// nothing was bought), and without
/// ranking scores.
const OTHER_WRITERS: &str = r#"
import sys
import pyarrow as pa, pyarrow.parquet as pq
src, out = sys.argv[1], sys.argv[2]
table = pq.read_table(src)
def large(t):
    if pa.types.is_list(t):
        return pa.large_list(pa.field(t.value_field.name, large(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, large(f.type), f.nullable) for f in t])
    return pa.large_string() if pa.types.is_string(t) else t
polars = table.cast(pa.schema([pa.field(f.name, large(f.type), f.nullable) for f in table.schema]))
pq.write_table(polars, f"{out}/polars.parquet", compression="zstd")
i = table.schema.get_field_index("request_id")
categorical = table.set_column(i, "request_id", table.column(i).dictionary_encode())
pq.write_table(categorical, f"{out}/pandas-categorical.parquet", compression="lz4")
pq.write_table(table, f"{out}/gzip.parquet", compression="gzip")
hive = table.set_column(i, "request_id", table.column(i).cast(pa.binary()))
pq.write_table(hive, f"{out}/hive-bytes.parquet")
# A warehouse's: integer request and item keys, clicks as 0/1 bytes, unsigned ids, money
# as decimal (quarters, so that the expected values are exact), NULL where a left join of
# purchases found none.
from decimal import Decimal
rows = table.to_pylist()
for r in rows:
    r["request_id"] = int(r["request_id"].split("-")[-1])
    for c in r["candidates"]:
        c["item_id"] = int(c["item_id"].split("-")[-1])
    r["clicks"] = [int(c) for c in r["clicks"]]
    r["values"] = [Decimal(int(v * 4)) / 4 if v else None for v in r["values"]]
schema = table.schema
for name, t in [("request_id", pa.int64()), ("clicks", pa.list_(pa.int8())),
                ("exposed", pa.list_(pa.uint16())), ("values", pa.list_(pa.decimal128(12, 2)))]:
    schema = schema.set(schema.get_field_index(name), pa.field(name, t))
candidate = schema.field("candidates").type.value_type
def unsigned(f):
    if f.name == "item_id":
        return pa.field(f.name, pa.int64())
    return pa.field(f.name, pa.list_(pa.uint32())) if f.name == "categorical" else f
candidate = pa.struct([unsigned(f) for f in candidate])
schema = schema.set(schema.get_field_index("candidates"), pa.field("candidates", pa.list_(candidate)))
pq.write_table(pa.Table.from_pylist(rows, schema=schema), f"{out}/warehouse.parquet")
# No ranking score logged: the candidates' order stands for the ranking stage's.
rows = table.to_pylist()
for r in rows:
    for c in r["candidates"]:
        del c["ranking_score"]
pq.write_table(pa.Table.from_pylist(rows), f"{out}/unscored.parquet")
"#;

/// Logs from other writers read as the same rows as degre's own (and without a ranking
/// score, in their candidates' order).
#[test]
fn parquet_from_other_writers_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sim.toml");
    std::fs::write(&config, "train_requests = 40\ntest_requests = 10\n").unwrap();
    let sim = dir.path().join("sim");
    let mut args = vec!["simulate", "--out", sim.to_str().unwrap()];
    args.extend(["--config", config.to_str().unwrap()]);
    degre(&args);
    let own = sim.join("train.parquet");
    if pyarrow(OTHER_WRITERS, &[&own, dir.path()]).is_none() {
        return;
    }
    let rows = degre::offline::logs::read_logs(&own).unwrap();
    assert_eq!(rows.len(), 40);
    for name in ["polars", "pandas-categorical", "gzip", "hive-bytes"] {
        let path = dir.path().join(format!("{name}.parquet"));
        let read = degre::offline::logs::read_logs(&path);
        assert!(read.as_ref().is_ok_and(|r| *r == rows), "{name}: {read:?}");
    }
    // Integer keys read as their decimal text, 0/1 clicks as booleans, decimals as floats,
    // NULL values as 0.
    let mut keyed = rows.clone();
    for row in &mut keyed {
        for v in row.values.iter_mut().flatten() {
            *v = (*v * 4.0).trunc() / 4.0;
        }
        row.request_id = row.request_id.rsplit('-').next().unwrap().to_string();
        for c in &mut row.candidates {
            c.item_id = c.item_id.rsplit('-').next().unwrap().to_string();
        }
    }
    let warehouse = degre::offline::logs::read_logs(&dir.path().join("warehouse.parquet"));
    assert_eq!(warehouse.unwrap(), keyed);
    let mut ordered = rows.clone();
    for row in &mut ordered {
        for (i, c) in row.candidates.iter_mut().enumerate() {
            c.ranking_score = -(i as f32);
        }
    }
    let unscored = degre::offline::logs::read_logs(&dir.path().join("unscored.parquet"));
    assert_eq!(unscored.unwrap(), ordered);
}

#[test]
fn simulate_train_and_eval_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sim.toml");
    std::fs::write(
        &config,
        "train_requests = 600\ntest_requests = 100\nitems = 300\ncandidates = 8\n\
         slots = 4\nretrieval_pool = 50\n",
    )
    .unwrap();
    let sim = dir.path().join("sim");
    let sim_arg = sim.to_str().unwrap();
    degre(&[
        "simulate",
        "--out",
        sim_arg,
        "--seed",
        "5",
        "--config",
        config.to_str().unwrap(),
    ]);

    if let Some(table) = pyarrow_reads(&sim.join("train.parquet")) {
        assert_eq!(table["rows"], 600);
        assert_eq!(
            table["columns"],
            serde_json::json!([
                "request_id",
                "context",
                "candidates",
                "exposed",
                "clicks",
                "values"
            ])
        );
        assert_eq!(table["candidates"], 8);
        assert_eq!(table["exposed"].as_array().unwrap().len(), 4);
        assert_eq!(table["clicks"].as_array().unwrap().len(), 4);
        // Our reader agrees with pyarrow on the first row.
        let ours = degre::offline::logs::read_logs(&sim.join("train.parquet")).unwrap();
        assert_eq!(table["first_item"], ours[0].candidates[0].item_id.as_str());
        assert_eq!(table["exposed"], serde_json::json!(ours[0].exposed));
    }

    let evaluator = dir.path().join("evaluator");
    let train = sim.join("train.parquet");
    degre(&[
        "train-evaluator",
        "--logs",
        train.to_str().unwrap(),
        "--out",
        evaluator.to_str().unwrap(),
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--quiet",
    ]);
    assert!(evaluator.join("evaluator.safetensors").exists());
    assert!(evaluator.join("checkpoint/state.json").exists());

    // A pointwise evaluator blended into the teacher, mined in two shards that together
    // hold every request once.
    let pointwise = dir.path().join("pointwise");
    let mut args = vec!["train-evaluator", "--logs", train.to_str().unwrap()];
    args.extend(["--out", pointwise.to_str().unwrap(), "--pointwise"]);
    degre(&[&args[..], &["--epochs", "2", "--hidden", "16", "--quiet"]].concat());
    let mined = dir.path().join("mined");
    let mine = |shard: &str, blend: &[&str], name: &str| {
        let out = mined.join(name);
        let mut args = vec!["mine", "--logs", train.to_str().unwrap(), "--evaluator"];
        args.extend([
            evaluator.to_str().unwrap(),
            "--beam-width",
            "4",
            "--shard",
            shard,
        ]);
        args.extend(["--out", out.to_str().unwrap(), "--quiet"]);
        degre(&[&args[..], blend].concat());
        degre::offline::mine::read_mined(&[&out]).unwrap()
    };
    let blend = [
        "--pointwise",
        pointwise.to_str().unwrap(),
        "--list-weight",
        "0.5",
    ];
    let (first, second) = (
        mine("0/2", &blend, "0.jsonl"),
        mine("1/2", &blend, "1.jsonl"),
    );
    let mut ids: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|m| &*m.request_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 600);
    assert!(first.iter().all(|m| m.list.len() == 4));
    // The blend changes the teacher's values.
    let alone = mine("0/2", &[], "alone.jsonl");
    let moved = first
        .iter()
        .zip(&alone)
        .filter(|(a, b)| (a.value - b.value).abs() > 1e-6);
    assert!(moved.count() > first.len() / 2);
    // A weight needs the evaluator it weighs.
    let mut args = vec![
        "mine",
        "--logs",
        train.to_str().unwrap(),
        "--list-weight",
        "0.5",
    ];
    args.extend(["--evaluator", evaluator.to_str().unwrap()]);
    let lone = degre_fails(
        &[
            &args[..],
            &["--out", mined.join("x.jsonl").to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(lone.contains("--pointwise"), "{lone}");

    let report = dir.path().join("report.json");
    let lists = dir.path().join("lists");
    let test = sim.join("test.parquet");
    let table = degre(&[
        "eval",
        "--logs",
        test.to_str().unwrap(),
        "--world",
        sim_arg,
        "--evaluator",
        evaluator.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
        "--write-lists",
        lists.to_str().unwrap(),
        "--correlation-requests",
        "20",
        "--correlation-lists",
        "10",
    ]);
    assert!(table.contains("% oracle"), "{table}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["requests"], 100);
    let policies = report["policies"].as_array().unwrap();
    let oracle = policies.iter().find(|p| p["name"] == "oracle").unwrap();
    assert!((oracle["percent_of_oracle"].as_f64().unwrap() - 100.0).abs() < 1e-9);
    for p in policies {
        assert!(
            p["percent_of_oracle"].as_f64().unwrap() <= 100.0 + 1e-9,
            "{p}"
        );
    }
    assert!(report["evaluator"]["auc"].as_f64().is_some());

    // Each policy's lists, written as `--lists` reads them, score the same when read back.
    let greedy = lists.join("evaluator-greedy.jsonl");
    let written = std::fs::read_to_string(&greedy).unwrap();
    assert_eq!(written.lines().count(), 100);
    assert!(lists.join("evaluator-beam_16.jsonl").exists());
    let reread = dir.path().join("reread.json");
    degre(&[
        "eval",
        "--logs",
        test.to_str().unwrap(),
        "--world",
        sim_arg,
        "--lists",
        greedy.to_str().unwrap(),
        "--out",
        reread.to_str().unwrap(),
    ]);
    let reread: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reread).unwrap()).unwrap();
    let utility = |report: &serde_json::Value, name: &str| {
        let policies = report["policies"].as_array().unwrap();
        let p = policies.iter().find(|p| p["name"] == name).unwrap();
        p["true_utility"].as_f64().unwrap()
    };
    assert_eq!(
        utility(&reread, "evaluator-greedy"),
        utility(&report, "evaluator-greedy")
    );

    // The value evaluator's click model alone: V reads expected clicks, near the truth's.
    let clicks = dir.path().join("clicks.json");
    let mut args = vec!["eval", "--logs", test.to_str().unwrap(), "--world", sim_arg];
    args.extend(["--evaluator", evaluator.to_str().unwrap()]);
    args.extend(["--policy", "upstream", "--objective", "clicks"]);
    degre(&[&args[..], &["--out", clicks.to_str().unwrap()]].concat());
    let clicks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&clicks).unwrap()).unwrap();
    assert_eq!(clicks["objective"], "clicks");
    let upstream = &clicks["policies"][0];
    let (judged, truth) = (&upstream["evaluator_value"], &upstream["true_clicks"]);
    let ratio = judged.as_f64().unwrap() / truth.as_f64().unwrap();
    assert!(
        (0.7..1.3).contains(&ratio),
        "V {judged}, true clicks {truth}"
    );
    // A clicks evaluator has no value network: it cannot score value.
    let clicks_only = dir.path().join("clicks-evaluator");
    let mut args = vec!["train-evaluator", "--logs", train.to_str().unwrap()];
    args.extend(["--objective", "clicks", "--epochs", "1", "--hidden", "8"]);
    degre(
        &[
            &args[..],
            &["--quiet", "--out", clicks_only.to_str().unwrap()],
        ]
        .concat(),
    );
    let mut args = vec![
        "eval",
        "--logs",
        test.to_str().unwrap(),
        "--objective",
        "value",
    ];
    args.extend(["--evaluator", clicks_only.to_str().unwrap()]);
    let refused = degre_fails(&args);
    assert!(refused.contains("no value network"), "{refused}");
}

#[test]
fn a_bad_log_fails_with_file_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("bad.jsonl");
    std::fs::write(
        &logs,
        r#"{"request_id":"a","context":{"dense":[1.0],"categorical":[0]},"candidates":[{"item_id":"x","dense":[0.5],"categorical":[1],"ranking_score":0.1}],"exposed":[3],"clicks":[true]}"#,
    )
    .unwrap();
    let out = dir.path().join("e");
    let logs = logs.to_str().unwrap();
    let stderr = degre_fails(&[
        "train-evaluator",
        "--logs",
        logs,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stderr.contains(&format!(
            "{logs}: row 1: field `exposed[0]`: index 3 is not a candidate (0..1)"
        )),
        "{stderr}"
    );
}

/// A log that is not there: named once, with the system's reason once.
#[test]
fn a_missing_log_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("absent.parquet");
    let stderr = degre_fails(&["check-logs", logs.to_str().unwrap()]);
    assert!(
        stderr.starts_with(&format!("degre: {}: ", logs.display())),
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

/// `degre check-logs … | head`: when the reader of its output goes away, it ends as a Unix
/// tool does (128 + SIGPIPE), without a panic's message.
#[test]
fn a_closed_stdout_ends_quietly() {
    let logs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/logs.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_degre"))
        .arg("check-logs")
        .arg(&logs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the child has read its file, so before its first line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Categorical ids that are 64-bit hashes: the evaluator hashes them into a bounded table
/// (a table of the largest id would not fit in memory) and the mapping is recorded.
#[test]
fn hashed_categorical_ids_train_in_a_bounded_table() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("hashed.jsonl");
    let mut text = String::new();
    for r in 0..60u64 {
        let hash = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 2;
        let candidates: Vec<String> = (0..6u64)
            .map(|j| {
                format!(
                    r#"{{"item_id":"i{j}","dense":[{}],"categorical":[{}],"ranking_score":{}}}"#,
                    j as f32 / 6.0,
                    hash((r * 6 + j) % 40),
                    j
                )
            })
            .collect();
        text += &format!(
            r#"{{"request_id":"r{r}","context":{{"dense":[0.5],"categorical":[{}]}},"candidates":[{}],"exposed":[0,1,2],"clicks":[{},false,true]}}"#,
            hash(1000 + r),
            candidates.join(","),
            r % 2 == 0
        );
        text.push('\n');
    }
    std::fs::write(&logs, text).unwrap();
    degre(&[
        "train-evaluator",
        "--logs",
        logs.to_str().unwrap(),
        "--epochs",
        "2",
        "--out",
        dir.path().join("e").to_str().unwrap(),
    ]);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("e/evaluator.json")).unwrap())
            .unwrap();
    let features = &saved["features"];
    assert_eq!(features["candidate_hashed"], serde_json::json!([true]));
    // 40 distinct ids: 4 × 40 rounded up to a power of two.
    assert_eq!(features["candidate_vocab"], serde_json::json!([256]));
}

/// Logs without a single click (a broken join) teach nothing: the pipeline says so, by
/// file, instead of publishing a model trained on them.
#[test]
fn logs_without_a_click_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("unclicked.jsonl");
    let row = |r: usize| {
        format!(
            r#"{{"request_id":"r{r}","context":{{"dense":[0.5],"categorical":[]}},"candidates":[{{"item_id":"a","dense":[1],"categorical":[],"ranking_score":1}},{{"item_id":"b","dense":[0],"categorical":[],"ranking_score":0}}],"exposed":[0,1],"clicks":[false,false]}}"#
        )
    };
    let text: Vec<String> = (0..20).map(row).collect();
    std::fs::write(&logs, text.join("\n")).unwrap();
    let run = dir.path().join("run");
    let (logs, run) = (logs.to_str().unwrap(), run.to_str().unwrap());
    let stderr = degre_fails(&["pipeline", "--logs", logs, "--out", run]);
    assert!(
        stderr.contains("unclicked.jsonl: no click in its 20 requests"),
        "{stderr}"
    );
}
