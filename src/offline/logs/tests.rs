use std::path::Path;

use super::*;

fn row(i: usize, with_values: bool) -> LoggedRequest {
    let candidates = (0..4)
        .map(|c| Candidate {
            item_id: format!("r{i}-item{c}"),
            features: Features {
                dense: vec![c as f32 * 0.5, -1.25, i as f32],
                categorical: vec![c as i64 % 2, 7],
            },
            ranking_score: 1.0 - c as f32 * 0.1,
        })
        .collect();
    LoggedRequest {
        request_id: format!("req-{i}"),
        context: Features {
            dense: vec![0.25, i as f32],
            categorical: vec![3],
        },
        candidates,
        exposed: vec![2, 0, 3],
        clicks: vec![false, true, false],
        values: with_values.then(|| vec![0.0, 12.5, 0.0]),
    }
}

fn rows() -> Vec<LoggedRequest> {
    vec![row(0, true), row(1, false), row(2, true)]
}

#[test]
fn parquet_and_json_lines_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["logs.parquet", "logs.jsonl", "logs.jsonl.gz"] {
        let path = dir.path().join(name);
        write_logs(&path, &rows()).unwrap();
        assert_eq!(read_logs(&path).unwrap(), rows(), "{name}");
    }
    // Gzipped for real, and concatenated as `cat a.gz b.gz` does.
    let all = rows();
    let (a, b) = (dir.path().join("a.jsonl.gz"), dir.path().join("b.jsonl.gz"));
    write_logs(&a, &all[..1]).unwrap();
    write_logs(&b, &all[1..]).unwrap();
    let mut both = std::fs::read(&a).unwrap();
    assert_eq!(both[..2], [0x1f, 0x8b], "a gzip member");
    both.extend(std::fs::read(&b).unwrap());
    let joined = dir.path().join("joined.ndjson.gz");
    std::fs::write(&joined, both).unwrap();
    assert_eq!(read_logs(&joined).unwrap(), all);
}

#[test]
fn shape_reports_widths_and_vocabulary() {
    let shape = LogShape::of(&rows()).unwrap();
    assert_eq!(shape.context_dense, 2);
    assert_eq!(shape.candidate_dense, 3);
    assert_eq!(shape.context_vocab, vec![4]);
    assert_eq!(shape.candidate_vocab, vec![2, 8]);
    assert_eq!((shape.max_candidates, shape.max_exposed), (4, 3));
}

/// Value is the default only where there is a value to learn: every row logs `values`, and
/// not all of them are 0 (an unfilled column).
#[test]
fn the_default_objective_needs_values_that_are_not_all_zero() {
    let objective = |rows: &[LoggedRequest]| LogShape::of(rows).unwrap().default_objective();
    let all = vec![row(0, true), row(1, true)];
    assert_eq!(objective(&all), Objective::VALUE);
    assert_eq!(objective(&rows()), Objective::CLICKS, "row 1 has no values");
    let mut zeros = all.clone();
    for r in &mut zeros {
        r.values = Some(vec![0.0; r.exposed.len()]);
    }
    assert_eq!(objective(&zeros), Objective::CLICKS);
    let shape = LogShape::of(&zeros).unwrap();
    assert!(shape.has_values && !shape.any_value);
}

/// Writes `rows` as JSON Lines with `edit` applied to the JSON of the second row, and
/// returns the error of reading it back.
fn json_error(edit: impl Fn(&mut serde_json::Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.jsonl");
    write_logs(&path, &rows()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    edit(&mut lines[1]);
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    let err = read_logs(&path).unwrap_err().to_string();
    let prefix = format!("{}: row 2: ", path.display());
    assert!(err.starts_with(&prefix), "{err}");
    err[prefix.len()..].to_string()
}

#[test]
fn every_malformed_row_names_its_field() {
    use serde_json::json;
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "field `request_id`: missing or null",
            Box::new(|r| r["request_id"] = json!(null)),
        ),
        (
            "field `request_id`: empty",
            Box::new(|r| r["request_id"] = json!("")),
        ),
        (
            "field `request_id`: \"req-0\" repeats row 1",
            Box::new(|r| r["request_id"] = json!("req-0")),
        ),
        (
            "field `context.dense`: missing or null",
            Box::new(|r| {
                r["context"].as_object_mut().unwrap().remove("dense");
            }),
        ),
        (
            "field `context.dense`: 1 values, but the first row has 2",
            Box::new(|r| {
                r["context"]["dense"] = json!([1.0]);
            }),
        ),
        (
            "field `candidates`: empty",
            Box::new(|r| r["candidates"] = json!([])),
        ),
        (
            "field `candidates[1].item_id`: duplicate item id \"r1-item0\"",
            Box::new(|r| {
                r["candidates"][1]["item_id"] = json!("r1-item0");
            }),
        ),
        (
            "field `candidates[2].categorical[0]`: id -3 is negative",
            Box::new(|r| {
                r["candidates"][2]["categorical"][0] = json!(-3);
            }),
        ),
        (
            "field `candidates[3].dense`: 2 values, but the first row has 3",
            Box::new(|r| {
                r["candidates"][3]["dense"] = json!([1.0, 2.0]);
            }),
        ),
        (
            "field `candidates[0].ranking_score`: missing, and other candidates of the row have one",
            Box::new(|r| {
                r["candidates"][0]["ranking_score"] = json!(null);
            }),
        ),
        (
            "field `candidates[0].dense[1]`: invalid type: string \"x\", expected f32",
            Box::new(|r| {
                r["candidates"][0]["dense"][1] = json!("x");
            }),
        ),
        (
            "field `exposed`: empty: a row logs a shown list",
            Box::new(|r| r["exposed"] = json!([])),
        ),
        (
            "field `exposed[1]`: index 9 is not a candidate (0..4)",
            Box::new(|r| {
                r["exposed"][1] = json!(9);
            }),
        ),
        (
            "field `exposed[2]`: index 2 shown twice",
            Box::new(|r| r["exposed"][2] = json!(2)),
        ),
        (
            "field `clicks`: 2 values for 3 exposed slots",
            Box::new(|r| {
                r["clicks"] = json!([true, false]);
            }),
        ),
        (
            "field `values`: 4 values for 3 exposed slots",
            Box::new(|r| {
                r["values"] = json!([0.0, 0.0, 0.0, 1.0]);
            }),
        ),
        (
            "field `shown`: unknown field `shown`",
            Box::new(|r| r["shown"] = json!([0])),
        ),
    ];
    for (want, edit) in cases {
        let got = json_error(edit);
        assert!(got.starts_with(want), "want {want:?}, got {got:?}");
    }
}

#[test]
fn parquet_rows_are_validated_like_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.parquet");
    let mut bad = rows();
    bad[2].candidates[1].features.dense[0] = f32::NAN;
    write_logs(&path, &bad).unwrap();
    let err = read_logs(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: row 3: field `candidates[1].dense[0]`: NaN is not finite",
            path.display()
        )
    );
}

/// `array` with every float (at any depth of lists and structs) widened to double and
/// passed through `edit`.
fn widened(array: &arrow_array::ArrayRef, edit: &dyn Fn(f64) -> f64) -> arrow_array::ArrayRef {
    use arrow_array::StructArray;
    use arrow_array::{cast::AsArray, types::Float32Type, Array, Float64Array, ListArray};
    use arrow_schema::{DataType, Field};
    use std::sync::Arc;
    match array.data_type() {
        DataType::Float32 => Arc::new(
            (array.as_primitive::<Float32Type>().iter())
                .map(|x| x.map(|x| edit(f64::from(x))))
                .collect::<Float64Array>(),
        ),
        DataType::List(item) => {
            let list = array.as_list::<i32>();
            let values = widened(list.values(), edit);
            let field = Field::new(item.name(), values.data_type().clone(), item.is_nullable());
            let (offsets, nulls) = (list.offsets().clone(), list.nulls().cloned());
            Arc::new(ListArray::new(Arc::new(field), offsets, values, nulls))
        }
        DataType::Struct(fields) => {
            let parts = array.as_struct();
            let columns: Vec<_> = parts.columns().iter().map(|c| widened(c, edit)).collect();
            let fields: Vec<Field> = (fields.iter().zip(&columns))
                .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
                .collect();
            Arc::new(StructArray::new(
                fields.into(),
                columns,
                parts.nulls().cloned(),
            ))
        }
        _ => array.clone(),
    }
}

/// Spark and pandas write `double` where degre writes `float`: read the same, and a double
/// too large for a float is refused by name rather than read as infinity.
#[test]
fn double_columns_read_as_floats() {
    use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use arrow_array::RecordBatch;
    let dir = tempfile::tempdir().unwrap();
    let write_widened = |rows: &[LoggedRequest], name: &str, edit: &dyn Fn(f64) -> f64| {
        let floats = dir.path().join(format!("{name}-float.parquet"));
        write_logs(&floats, rows).unwrap();
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&floats).unwrap())
                .unwrap()
                .build()
                .unwrap();
        let path = dir.path().join(format!("{name}.parquet"));
        let mut writer = None;
        for batch in reader {
            let batch = batch.unwrap();
            let columns: Vec<_> = batch.columns().iter().map(|c| widened(c, edit)).collect();
            let fields: Vec<arrow_schema::Field> = (batch.schema().fields().iter().zip(&columns))
                .map(|(f, c)| {
                    arrow_schema::Field::new(f.name(), c.data_type().clone(), f.is_nullable())
                })
                .collect();
            let schema = std::sync::Arc::new(arrow_schema::Schema::new(fields));
            let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
            let file = std::fs::File::create(&path).unwrap();
            let w = writer.get_or_insert_with(|| {
                ::parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap()
            });
            w.write(&batch).unwrap();
        }
        writer.unwrap().close().unwrap();
        path
    };
    let doubles = write_widened(&rows(), "doubles", &|x| x);
    let schema = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&doubles).unwrap())
        .unwrap()
        .schema()
        .clone();
    assert!(format!("{schema:?}").contains("Float64"), "{schema:?}");
    assert!(!format!("{schema:?}").contains("Float32"), "{schema:?}");
    assert_eq!(read_logs(&doubles).unwrap(), rows());

    // One ranking score marked, and written as a double no float can hold.
    let mut huge = rows();
    huge[1].candidates[2].ranking_score = 123.0;
    let path = write_widened(&huge, "huge", &|x| if x == 123.0 { 1e39 } else { x });
    let err = read_logs(&path).unwrap_err().to_string();
    assert!(
        err.contains("row 2: field `candidates[2].ranking_score`") && err.contains("not finite"),
        "{err}"
    );
}

#[test]
fn a_parquet_file_without_a_column_is_rejected_by_name() {
    use arrow_array::{RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new(
        "request_id",
        DataType::Utf8,
        false,
    )]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["a"]))]).unwrap();
    let mut writer =
        ::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let err = read_logs(&path).unwrap_err().to_string();
    assert_eq!(err, format!("{}: missing column `context`", path.display()));
}

#[test]
fn unreadable_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.parquet");
    std::fs::write(&garbage, b"not parquet").unwrap();
    let err = read_logs(&garbage).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}: not a readable Parquet file",
            garbage.display()
        )),
        "{err}"
    );
    let csv = Path::new("logs.csv");
    let err = read_logs(csv).unwrap_err().to_string();
    assert_eq!(
        err,
        "logs.csv: unknown log encoding: use a .parquet, .jsonl or .jsonl.gz file"
    );
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let err = read_logs(&empty).unwrap_err().to_string();
    assert_eq!(err, format!("{}: the log has no rows", empty.display()));
}

#[test]
fn a_directory_of_part_files_is_one_log() {
    let dir = tempfile::tempdir().unwrap();
    let all = rows();
    write_logs(&dir.path().join("part-0.parquet"), &all[..2]).unwrap();
    write_logs(&dir.path().join("part-1.jsonl"), &all[2..]).unwrap();
    std::fs::write(dir.path().join("_SUCCESS"), "").unwrap();
    assert_eq!(read_logs(dir.path()).unwrap(), all);
    // Hive partitions are read too, in path order; Spark's temporary files are not.
    let partition = dir.path().join("dt=2026-12-01");
    std::fs::create_dir_all(partition.join("_temporary")).unwrap();
    write_logs(&partition.join("part-0.jsonl"), &all[2..]).unwrap();
    write_logs(&partition.join("_temporary/part-9.jsonl"), &all[..1]).unwrap();
    std::fs::remove_file(dir.path().join("part-1.jsonl")).unwrap();
    // `dt=…/part-0.jsonl` sorts before `part-0.parquet`.
    let in_path_order = [&all[2..], &all[..2]].concat();
    assert_eq!(read_logs(dir.path()).unwrap(), in_path_order);
    std::fs::remove_dir_all(&partition).unwrap();
    write_logs(&dir.path().join("part-1.jsonl"), &all[2..]).unwrap();

    let mut narrow = row(3, false);
    narrow.context.dense.pop();
    write_logs(&dir.path().join("part-2.jsonl"), &[narrow]).unwrap();
    let err = read_logs(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("part-2.jsonl: its feature widths differ"),
        "{err}"
    );

    // A request id is unique across the parts too.
    write_logs(&dir.path().join("part-2.jsonl"), &all[..1]).unwrap();
    let err = read_logs(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("part-2.jsonl: request_id \"req-0\" is in")
            && err.contains("part-0.parquet too"),
        "{err}"
    );
}

/// Integer request and item ids read as their decimal text and 0/1 clicks as booleans;
/// any other number is not a click.
#[test]
fn json_ids_may_be_integers_and_clicks_0_or_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.jsonl");
    let line = |clicks: &str| {
        format!(
            r#"{{"request_id": 17, "context": {{"dense": [], "categorical": []}}, "candidates": [{{"item_id": 4, "dense": [], "categorical": [], "ranking_score": 1}}, {{"item_id": "x", "dense": [], "categorical": [], "ranking_score": 0}}], "exposed": [1, 0], "clicks": {clicks}}}"#
        )
    };
    std::fs::write(&path, line("[0, 1]") + "\n").unwrap();
    let rows = read_logs(&path).unwrap();
    assert_eq!(rows[0].request_id, "17");
    assert_eq!(rows[0].candidates[0].item_id, "4");
    assert_eq!(rows[0].clicks, [false, true]);
    std::fs::write(&path, line("[0, 2]") + "\n").unwrap();
    let err = read_logs(&path).unwrap_err().to_string();
    assert!(err.contains("row 1: field `clicks[1]`"), "{err}");
    assert!(err.contains("expected a boolean, 0 or 1"), "{err}");
    // A value left null (no purchase joined) is 0.
    let valued = line("[0, 1]").replace(r#""clicks""#, r#""values": [null, 2.5], "clicks""#);
    std::fs::write(&path, valued + "\n").unwrap();
    assert_eq!(read_logs(&path).unwrap()[0].values, Some(vec![0.0, 2.5]));
}

/// Rows without any ranking score stand for their candidates' order, as a Rerank request
/// does (scores 0, −1, −2, …); Parquet without the column: tests/offline_cli.rs.
#[test]
fn unscored_candidates_are_in_the_ranking_order() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("unscored.jsonl");
    let mut text = String::new();
    for r in rows() {
        let mut v = serde_json::to_value(&r).unwrap();
        for c in v["candidates"].as_array_mut().unwrap() {
            let c = c.as_object_mut().unwrap();
            c.remove("ranking_score");
            let features = c.remove("features").unwrap();
            c.insert("dense".into(), features["dense"].clone());
            c.insert("categorical".into(), features["categorical"].clone());
        }
        if v["values"].is_null() {
            v.as_object_mut().unwrap().remove("values");
        }
        text += &format!("{v}\n");
    }
    std::fs::write(&json, text).unwrap();
    let read = read_logs(&json).unwrap();
    let scores: Vec<f32> = read[0].candidates.iter().map(|c| c.ranking_score).collect();
    assert_eq!(scores, [0.0, -1.0, -2.0, -3.0]);
    let note = unscored_note(&read).unwrap();
    assert!(
        note.starts_with("note: 3 of 3 requests log no ranking_score"),
        "{note}"
    );
    assert_eq!(unscored_note(&rows()), None);
}

#[test]
fn logs_that_mostly_show_the_upstream_order_are_noted() {
    // Shown [2, 0, 3] where upstream puts [0, 1, 2]: no slot agrees.
    assert_eq!(exploration_note(&rows()), None);
    let mut mostly = rows();
    for r in &mut mostly[..2] {
        r.exposed = vec![0, 1, 3]; // two of three slots as upstream
    }
    assert_eq!(exploration_note(&mostly), None, "4 of 9 slots");
    mostly[2].exposed = vec![0, 1, 3];
    let note = exploration_note(&mostly).unwrap();
    assert!(note.starts_with("note: 67% of logged slots hold"), "{note}");
}
