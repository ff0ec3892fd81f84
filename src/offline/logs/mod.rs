//! Logged requests: what the reranker showed and what users did, one row per request.
//!
//! Two encodings of the same shape: Parquet (what Spark/Hive jobs export) and JSON Lines (for
//! small and hand-written data). Both decode into [`RawRow`] and go through one validation,
//! so a bad row gets the same error from either: file, row (or line) and field. The format is
//! documented in `docs/data.md`.

mod jsonl;
mod lenient;
mod parquet;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::contract::{upstream, FeatureSchema};
use crate::offline::objective::Objective;
use crate::rerank::{InputBuilder, InvalidField, RerankInput};

/// Dense and categorical features of a context or a candidate, as on the wire (`Features`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    pub dense: Vec<f32>,
    pub categorical: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub item_id: String,
    pub features: Features,
    /// The ranking stage's score; the upstream order sorts by it, descending.
    pub ranking_score: f32,
}

/// One logged request, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    pub request_id: String,
    pub context: Features,
    pub candidates: Vec<Candidate>,
    /// Candidate indices in display order: slot `t` showed `candidates[exposed[t]]`.
    pub exposed: Vec<usize>,
    /// One per exposed slot.
    pub clicks: Vec<bool>,
    /// Optional value per exposed slot (e.g. GMV); zero where there was no click.
    pub values: Option<Vec<f32>>,
}

impl LoggedRequest {
    /// This request as the server sees it, through the server's own validation: the one
    /// mapping from logs to model input (unknown ids to the unknown bucket included).
    pub fn rerank_input(
        &self,
        schema: &FeatureSchema,
        slots: usize,
    ) -> Result<RerankInput, InvalidField> {
        let n = self.candidates.len();
        let mut input = InputBuilder::new(schema, n, n)?;
        input.context(&self.context.dense, &self.context.categorical)?;
        for (i, c) in self.candidates.iter().enumerate() {
            input.candidate(
                i,
                c.item_id.clone(),
                &c.features.dense,
                &c.features.categorical,
                Some(c.ranking_score),
            )?;
        }
        input.finish(u32::try_from(slots.clamp(1, n)).unwrap_or(u32::MAX))
    }

    /// The ranking stage's list: the first `k` candidates by `ranking_score`, descending
    /// (ties by position).
    pub fn upstream_list(&self, k: usize) -> Vec<usize> {
        let scores: Vec<f64> = self
            .candidates
            .iter()
            .map(|c| f64::from(c.ranking_score))
            .collect();
        crate::offline::search::sort_by_score(&scores, k)
    }

    /// What the logged list earned under `objective`: its slots' rewards summed.
    pub fn logged_reward(&self, objective: &Objective) -> f64 {
        (0..self.clicks.len())
            .map(|t| objective.reward(self.clicks[t], self.values.as_ref().map(|v| v[t])))
            .sum()
    }
}

/// Feature widths shared by every row of a log, and the vocabulary seen in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogShape {
    pub context_dense: usize,
    pub candidate_dense: usize,
    /// Per categorical feature: largest id seen plus one.
    pub context_vocab: Vec<u64>,
    pub candidate_vocab: Vec<u64>,
    pub max_candidates: usize,
    pub max_exposed: usize,
    /// Every row carries the `values` column.
    pub has_values: bool,
    /// Some logged value is not 0: there is a value to learn.
    pub any_value: bool,
}

impl LogShape {
    /// The shape of a non-empty set of rows whose widths were validated as equal.
    pub fn of(rows: &[LoggedRequest]) -> Option<LogShape> {
        let first = rows.first()?;
        let first_candidate = &first.candidates[0].features;
        let mut shape = LogShape {
            context_dense: first.context.dense.len(),
            candidate_dense: first_candidate.dense.len(),
            context_vocab: vec![0; first.context.categorical.len()],
            candidate_vocab: vec![0; first_candidate.categorical.len()],
            max_candidates: 0,
            max_exposed: 0,
            has_values: true,
            any_value: false,
        };
        for row in rows {
            grow_vocab(&mut shape.context_vocab, &row.context.categorical);
            for candidate in &row.candidates {
                grow_vocab(&mut shape.candidate_vocab, &candidate.features.categorical);
            }
            shape.max_candidates = shape.max_candidates.max(row.candidates.len());
            shape.max_exposed = shape.max_exposed.max(row.exposed.len());
            shape.has_values &= row.values.is_some();
            shape.any_value |= (row.values.iter().flatten()).any(|&v| v != 0.0);
        }
        Some(shape)
    }

    /// The objective a run on these logs has unless told otherwise: value when every row
    /// carries `values` and some are not 0 (a column of zeros is an unfilled column, not a
    /// business that earns nothing), else clicks.
    pub fn default_objective(&self) -> Objective {
        Objective::default_for(self.has_values && self.any_value)
    }
}

fn grow_vocab(vocab: &mut [u64], ids: &[i64]) {
    for (size, &id) in vocab.iter_mut().zip(ids) {
        *size = (*size).max(id as u64 + 1);
    }
}

/// A row as decoded from either encoding, before validation. `None` is a missing or null field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRow {
    #[serde(default, deserialize_with = "lenient::id")]
    pub request_id: Option<String>,
    pub context: Option<RawFeatures>,
    pub candidates: Option<Vec<RawCandidate>>,
    pub exposed: Option<Vec<i64>>,
    #[serde(default, deserialize_with = "lenient::flags")]
    pub clicks: Option<Vec<bool>>,
    #[serde(default, deserialize_with = "lenient::amounts")]
    pub values: Option<Vec<f32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFeatures {
    pub dense: Option<Vec<f32>>,
    pub categorical: Option<Vec<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCandidate {
    #[serde(default, deserialize_with = "lenient::id")]
    pub item_id: Option<String>,
    pub dense: Option<Vec<f32>>,
    pub categorical: Option<Vec<i64>>,
    pub ranking_score: Option<f32>,
}

/// Where a log is bad. `row` counts from 1 (for JSON Lines it is the line number).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{}: row {row}: field `{field}`: {message}", path.display())]
    Row {
        path: PathBuf,
        row: usize,
        field: String,
        message: String,
    },
}

/// A validation failure inside one row, before the file and row are known.
#[derive(Debug, PartialEq)]
pub(crate) struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl fmt::Display, message: impl fmt::Display) -> FieldError {
        FieldError {
            field: field.to_string(),
            message: message.to_string(),
        }
    }

    pub fn at(self, path: &Path, row: usize) -> LogError {
        LogError::Row {
            path: path.to_owned(),
            row,
            field: self.field,
            message: self.message,
        }
    }
}

/// Reads and validates a whole log; the encoding follows the extension (`.parquet`,
/// `.jsonl`/`.ndjson`). A directory (e.g. a Spark job's output) is read as its log files in
/// path order, its subdirectories (Hive partitions) too; other files, and names starting
/// with `_` or `.`, are skipped. Every row must have the widths of the first.
pub fn read_logs(path: &Path) -> Result<Vec<LoggedRequest>, LogError> {
    if path.is_dir() {
        let mut rows: Vec<LoggedRequest> = Vec::new();
        let files = log_files(path)?;
        // Request ids are unique across the parts too: each id's file.
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (f, file) in files.iter().enumerate() {
            let part = read_logs(file)?;
            for row in &part {
                if let Some(other) = ids.insert(row.request_id.clone(), f) {
                    return Err(LogError::File {
                        path: file.clone(),
                        message: format!(
                            "request_id {:?} is in {} too",
                            row.request_id,
                            files[other].display()
                        ),
                    });
                }
            }
            if let (Some(first), Some(next)) = (rows.first(), part.first()) {
                let (want, got) = (Widths::of(first), Widths::of(next));
                if (
                    want.context_dense,
                    want.context_categorical,
                    want.candidate_dense,
                    want.candidate_categorical,
                ) != (
                    got.context_dense,
                    got.context_categorical,
                    got.candidate_dense,
                    got.candidate_categorical,
                ) {
                    return Err(LogError::File {
                        path: file.clone(),
                        message: "its feature widths differ from the directory's first file".into(),
                    });
                }
            }
            rows.extend(part);
        }
        if rows.is_empty() {
            return Err(LogError::File {
                path: path.to_owned(),
                message: "no .parquet or .jsonl files in the directory".into(),
            });
        }
        return Ok(rows);
    }
    let raw = match Encoding::of(path)? {
        Encoding::Parquet => parquet::read(path)?,
        Encoding::JsonLines { gzip } => jsonl::read(path, gzip)?,
    };
    let mut rows = Vec::with_capacity(raw.len());
    let mut widths = None;
    // Each request id's row: mined lists, `--lists` files and resumed mining find a request
    // by its id, so a repeated one would be joined to the wrong candidates.
    let mut ids: HashMap<String, usize> = HashMap::with_capacity(raw.len());
    for (i, (row_number, raw)) in raw.into_iter().enumerate() {
        let row = validate(raw, widths.as_ref()).map_err(|e| e.at(path, row_number))?;
        if let Some(first) = ids.insert(row.request_id.clone(), row_number) {
            let message = format!("{:?} repeats row {first}", row.request_id);
            return Err(FieldError::new("request_id", message).at(path, row_number));
        }
        if i == 0 {
            widths = Some(Widths::of(&row));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(LogError::File {
            path: path.to_owned(),
            message: "the log has no rows".into(),
        });
    }
    Ok(rows)
}

/// The log files of a directory, in name order.
fn log_files(dir: &Path) -> Result<Vec<PathBuf>, LogError> {
    let io = |error| LogError::Io {
        path: dir.to_owned(),
        error,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        // Spark's bookkeeping (`_SUCCESS`, `_temporary/`, `.crc` files) is not data.
        if file_name(&path).starts_with(['_', '.']) {
            continue;
        }
        if path.is_dir() {
            // Hive partitions: `logs/dt=2026-12-01/part-0.parquet`.
            files.extend(log_files(&path)?);
        } else if path.is_file() && Encoding::of(&path).is_ok() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> std::borrow::Cow<'_, str> {
    path.file_name().map_or("".into(), |n| n.to_string_lossy())
}

/// Logs to learn from: at least one logged click (logs without any are usually a broken
/// join, and every model trained on them predicts nothing).
pub fn read_training_logs(path: &Path) -> Result<Vec<LoggedRequest>, LogError> {
    let rows = read_logs(path)?;
    if !rows.iter().any(|r| r.clicks.contains(&true)) {
        return Err(LogError::File {
            path: path.to_owned(),
            message: format!(
                "no click in its {} requests: there is nothing to learn from (is the `clicks` \
                 column joined right?)",
                rows.len()
            ),
        });
    }
    Ok(rows)
}

/// What `check-logs` and `pipeline` say of a log on stderr: [`unscored_note`] and
/// [`exploration_note`], where they apply.
pub fn notes(rows: &[LoggedRequest]) -> impl Iterator<Item = String> {
    [unscored_note(rows), exploration_note(rows)]
        .into_iter()
        .flatten()
}

/// A note when some rows carry no ranking score: each one's candidate order then stands
/// for the ranking stage's (the reader's scores 0, −1, −2, …), which the `upstream`
/// baseline and the publish gate compare with, so it had better be the real one.
pub fn unscored_note(rows: &[LoggedRequest]) -> Option<String> {
    let by_order = |r: &&LoggedRequest| {
        let order = upstream::scores_of_request_order(r.candidates.len());
        r.candidates
            .iter()
            .zip(order)
            .all(|(c, s)| c.ranking_score == s)
    };
    let n = rows.iter().filter(by_order).count();
    (n > 0).then(|| {
        format!(
            "note: {n} of {} requests log no ranking_score: their candidates' order stands for \
             the ranking stage's (the upstream baseline and the publish gate compare with it)",
            rows.len()
        )
    })
}

/// From this share of logged slots holding the ranking stage's item for the slot, the logs
/// are said to show little but the upstream order ([`exploration_note`]).
const MOSTLY_UPSTREAM: f64 = 0.5;

/// A note when most logged slots hold the item the `ranking_score` order puts there: the
/// logs then show few other orders, so what the evaluator says of the lists DeGRe makes is
/// extrapolation, and a judged gain a guess that only the gate's interval guards
/// (docs/offline.md, "logs that never leave the upstream order").
pub fn exploration_note(rows: &[LoggedRequest]) -> Option<String> {
    let (mut same, mut slots) = (0usize, 0usize);
    for r in rows {
        let upstream = r.upstream_list(r.exposed.len());
        same += r
            .exposed
            .iter()
            .zip(&upstream)
            .filter(|(a, b)| a == b)
            .count();
        slots += r.exposed.len();
    }
    let share = same as f64 / slots.max(1) as f64;
    (share >= MOSTLY_UPSTREAM).then(|| {
        format!(
            "note: {:.0}% of logged slots hold the item the ranking_score order puts there: \
             the logs show few other orders, so the evaluator's values of other lists are \
             extrapolation and a judged gain over upstream is uncertain beyond its interval",
            100.0 * share
        )
    })
}

/// Writes rows in the encoding the extension names.
pub fn write_logs(path: &Path, rows: &[LoggedRequest]) -> Result<(), LogError> {
    match Encoding::of(path)? {
        Encoding::Parquet => parquet::write(path, rows),
        Encoding::JsonLines { gzip } => jsonl::write(path, rows, gzip),
    }
}

enum Encoding {
    Parquet,
    /// Gzipped (`.jsonl.gz`): how line logs are kept and shipped.
    JsonLines {
        gzip: bool,
    },
}

impl Encoding {
    fn of(path: &Path) -> Result<Encoding, LogError> {
        let name = file_name(path);
        let (stem, gzip) = match name.strip_suffix(".gz") {
            Some(stem) => (stem, true),
            None => (&*name, false),
        };
        match stem.rsplit_once('.').map(|(_, extension)| extension) {
            Some("parquet") if !gzip => Ok(Encoding::Parquet),
            Some("jsonl" | "ndjson") => Ok(Encoding::JsonLines { gzip }),
            _ => Err(LogError::File {
                path: path.to_owned(),
                message: "unknown log encoding: use a .parquet, .jsonl or .jsonl.gz file".into(),
            }),
        }
    }
}

/// The widths the first row fixes for all others.
struct Widths {
    context_dense: usize,
    context_categorical: usize,
    candidate_dense: usize,
    candidate_categorical: usize,
}

impl Widths {
    fn of(row: &LoggedRequest) -> Widths {
        let candidate = &row.candidates[0].features;
        Widths {
            context_dense: row.context.dense.len(),
            context_categorical: row.context.categorical.len(),
            candidate_dense: candidate.dense.len(),
            candidate_categorical: candidate.categorical.len(),
        }
    }
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, FieldError> {
    value.ok_or_else(|| FieldError::new(field, "missing or null"))
}

fn features(
    dense: Option<Vec<f32>>,
    categorical: Option<Vec<i64>>,
    prefix: &str,
    widths: Option<(usize, usize)>,
) -> Result<Features, FieldError> {
    let dense = required(dense, &format!("{prefix}.dense"))?;
    let categorical = required(categorical, &format!("{prefix}.categorical"))?;
    if let Some(i) = dense.iter().position(|v| !v.is_finite()) {
        return Err(FieldError::new(
            format!("{prefix}.dense[{i}]"),
            format!("{} is not finite", dense[i]),
        ));
    }
    if let Some(i) = categorical.iter().position(|&id| id < 0) {
        return Err(FieldError::new(
            format!("{prefix}.categorical[{i}]"),
            format!("id {} is negative", categorical[i]),
        ));
    }
    if let Some((want_dense, want_categorical)) = widths {
        for (name, want, got) in [
            ("dense", want_dense, dense.len()),
            ("categorical", want_categorical, categorical.len()),
        ] {
            if want != got {
                return Err(FieldError::new(
                    format!("{prefix}.{name}"),
                    format!("{got} values, but the first row has {want}"),
                ));
            }
        }
    }
    Ok(Features { dense, categorical })
}

fn validate(raw: RawRow, widths: Option<&Widths>) -> Result<LoggedRequest, FieldError> {
    let request_id = required(raw.request_id, "request_id")?;
    if request_id.is_empty() {
        return Err(FieldError::new("request_id", "empty"));
    }
    let context = required(raw.context, "context")?;
    let context = features(
        context.dense,
        context.categorical,
        "context",
        widths.map(|w| (w.context_dense, w.context_categorical)),
    )?;
    let raw_candidates = required(raw.candidates, "candidates")?;
    if raw_candidates.is_empty() {
        return Err(FieldError::new("candidates", "empty"));
    }
    // Without any ranking score the candidates' order is the ranking stage's, as for a Rerank
    // request.
    let unscored = (raw_candidates.iter().all(|c| c.ranking_score.is_none()))
        .then(|| upstream::scores_of_request_order(raw_candidates.len()));
    let mut candidates: Vec<Candidate> = Vec::with_capacity(raw_candidates.len());
    let mut ids = HashSet::with_capacity(raw_candidates.len());
    for (i, raw) in raw_candidates.into_iter().enumerate() {
        let prefix = format!("candidates[{i}]");
        // Every candidate must match the first: of this row, or of the first row.
        let want = widths
            .map(|w| (w.candidate_dense, w.candidate_categorical))
            .or_else(|| {
                candidates
                    .first()
                    .map(|c| (c.features.dense.len(), c.features.categorical.len()))
            });
        let features = features(raw.dense, raw.categorical, &prefix, want)?;
        let item_id = required(raw.item_id, &format!("{prefix}.item_id"))?;
        if item_id.is_empty() {
            return Err(FieldError::new(format!("{prefix}.item_id"), "empty"));
        }
        if !ids.insert(item_id.clone()) {
            return Err(FieldError::new(
                format!("{prefix}.item_id"),
                format!("duplicate item id {item_id:?}"),
            ));
        }
        let field = || format!("{prefix}.ranking_score");
        let ranking_score = match (raw.ranking_score, &unscored) {
            (Some(score), _) => score,
            (None, Some(order)) => order[i],
            (None, None) => {
                let others = "missing, and other candidates of the row have one";
                return Err(FieldError::new(field(), others));
            }
        };
        if !ranking_score.is_finite() {
            let message = format!("{ranking_score} is not finite");
            return Err(FieldError::new(field(), message));
        }
        candidates.push(Candidate {
            item_id,
            features,
            ranking_score,
        });
    }
    let raw_exposed = required(raw.exposed, "exposed")?;
    if raw_exposed.is_empty() {
        return Err(FieldError::new("exposed", "empty: a row logs a shown list"));
    }
    let mut shown = vec![false; candidates.len()];
    let mut exposed = Vec::with_capacity(raw_exposed.len());
    for (t, &index) in raw_exposed.iter().enumerate() {
        let field = format!("exposed[{t}]");
        let Some(seen) = usize::try_from(index).ok().and_then(|i| shown.get_mut(i)) else {
            return Err(FieldError::new(
                field,
                format!("index {index} is not a candidate (0..{})", candidates.len()),
            ));
        };
        if std::mem::replace(seen, true) {
            return Err(FieldError::new(field, format!("index {index} shown twice")));
        }
        exposed.push(index as usize);
    }
    let clicks = required(raw.clicks, "clicks")?;
    if clicks.len() != exposed.len() {
        return Err(FieldError::new(
            "clicks",
            format!(
                "{} values for {} exposed slots",
                clicks.len(),
                exposed.len()
            ),
        ));
    }
    if let Some(values) = &raw.values {
        if values.len() != exposed.len() {
            return Err(FieldError::new(
                "values",
                format!(
                    "{} values for {} exposed slots",
                    values.len(),
                    exposed.len()
                ),
            ));
        }
        if let Some(t) = values.iter().position(|v| !v.is_finite()) {
            return Err(FieldError::new(
                format!("values[{t}]"),
                format!("{} is not finite", values[t]),
            ));
        }
    }
    Ok(LoggedRequest {
        request_id,
        context,
        candidates,
        exposed,
        clicks,
        values: raw.values,
    })
}

#[cfg(test)]
mod tests;
