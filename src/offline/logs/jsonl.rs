//! JSON Lines: one JSON object per line, in the shape of the Parquet schema.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde_json::json;

use super::{FieldError, LogError, LoggedRequest, RawRow};

/// Decodes every non-blank line; the row number is the line number. `gzip`: the file is
/// gzipped (one member or several concatenated, as `cat a.gz b.gz` makes).
pub(super) fn read(path: &Path, gzip: bool) -> Result<Vec<(usize, RawRow)>, LogError> {
    let io = |error| LogError::Io {
        path: path.to_owned(),
        error,
    };
    let file = File::open(path).map_err(io)?;
    let lines: Box<dyn BufRead> = match gzip {
        true => Box::new(BufReader::new(MultiGzDecoder::new(file))),
        false => Box::new(BufReader::new(file)),
    };
    let mut rows = Vec::new();
    for (i, line) in lines.lines().enumerate() {
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

pub(super) fn write(path: &Path, rows: &[LoggedRequest], gzip: bool) -> Result<(), LogError> {
    let io = |error| LogError::Io {
        path: path.to_owned(),
        error,
    };
    let file = File::create(path).map_err(io)?;
    if gzip {
        let zipped = write_lines(GzEncoder::new(file, Default::default()), rows).map_err(io)?;
        zipped.finish().map_err(io)?;
    } else {
        write_lines(file, rows).map_err(io)?;
    }
    Ok(())
}

/// Every row as one line of JSON; the writer back, flushed.
fn write_lines<W: Write>(out: W, rows: &[LoggedRequest]) -> std::io::Result<W> {
    let mut out = BufWriter::new(out);
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
        serde_json::to_writer(&mut out, &object)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())
}
