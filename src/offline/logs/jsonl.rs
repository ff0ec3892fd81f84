//! JSON Lines: one JSON object per line, in the shape of the Parquet schema.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde_json::json;

use super::{FieldError, LogError, LoggedRequest, RawRow};

/// Decodes every non-blank line; the row number is the line number.
pub(super) fn read(path: &Path) -> Result<Vec<(usize, RawRow)>, LogError> {
    let io = |error| LogError::Io {
        path: path.to_owned(),
        error,
    };
    let file = File::open(path).map_err(io)?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let mut deserializer = serde_json::Deserializer::from_str(&line);
        let row: RawRow = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let field = match e.path().to_string() {
                p if p == "." => "(row)".to_string(),
                p => p,
            };
            FieldError {
                field,
                message: e.into_inner().to_string(),
            }
            .at(path, i + 1)
        })?;
        rows.push((i + 1, row));
    }
    Ok(rows)
}

pub(super) fn write(path: &Path, rows: &[LoggedRequest]) -> Result<(), LogError> {
    let io = |error| LogError::Io {
        path: path.to_owned(),
        error,
    };
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    for row in rows {
        let candidates: Vec<_> = row
            .candidates
            .iter()
            .map(|c| {
                json!({
                    "item_id": c.item_id,
                    "dense": c.features.dense,
                    "categorical": c.features.categorical,
                    "ranking_score": c.ranking_score,
                })
            })
            .collect();
        let mut object = json!({
            "request_id": row.request_id,
            "context": row.context,
            "candidates": candidates,
            "exposed": row.exposed,
            "clicks": row.clicks,
        });
        if let Some(values) = &row.values {
            object["values"] = json!(values);
        }
        serde_json::to_writer(&mut out, &object).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)
}
