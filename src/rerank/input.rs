//! One rerank request, validated against the serving model's schema. Every rule for bad
//! input lives here; transport code only converts.

use super::rules::Rules;
use crate::contract::{roles, upstream, Categorical, FeatureSchema};

/// A request checked against the model's schema, with features laid out row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankInput {
    pub context_dense: Vec<f32>,
    /// Categorical ids after mapping out-of-vocabulary ids to the unknown bucket.
    pub context_ids: Vec<i64>,
    /// `N × candidate_dense` values.
    pub candidate_dense: Vec<f32>,
    /// `N × candidate_categorical` ids, mapped like `context_ids`.
    pub candidate_ids: Vec<i64>,
    pub item_ids: Vec<String>,
    /// `N × upstream::WIDTH` values when the model reads the incumbent's order, else empty.
    pub upstream: Vec<f32>,
    /// Slots to fill, `1..=N`.
    pub slots: usize,
    /// Business rules of the request (none by default).
    pub rules: Rules,
    /// Whether each pick carries why it was chosen.
    pub explain: bool,
}

impl RerankInput {
    pub fn candidates(&self) -> usize {
        self.item_ids.len()
    }

    /// The values of an encoder input role (`contract::roles`).
    pub fn feed(&self, role: &str) -> Feed<'_> {
        match role {
            roles::CONTEXT_DENSE => Feed::Dense(&self.context_dense),
            roles::CONTEXT_CATEGORICAL => Feed::Ids(&self.context_ids),
            roles::CANDIDATE_DENSE => Feed::Dense(&self.candidate_dense),
            roles::CANDIDATE_CATEGORICAL => Feed::Ids(&self.candidate_ids),
            roles::UPSTREAM => Feed::Dense(&self.upstream),
            _ => Feed::Dense(&[]),
        }
    }
}

/// One encoder input's values, row-major.
pub enum Feed<'a> {
    Dense(&'a [f32]),
    Ids(&'a [i64]),
}

/// A request field that breaks a rule; becomes `INVALID_ARGUMENT` naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    pub field: String,
    pub problem: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Builds a [`RerankInput`] field by field, checking each against the schema.
pub struct InputBuilder<'a> {
    schema: &'a FeatureSchema,
    input: RerankInput,
    /// The candidates' `ranking_score`s (kept only for a model that reads them), how many
    /// carried one and the first that did not.
    scores: Vec<f32>,
    scored: usize,
    first_unscored: Option<usize>,
}

impl<'a> InputBuilder<'a> {
    /// Starts a request of `candidates` items; `max_candidates` is the effective limit.
    pub fn new(
        schema: &'a FeatureSchema,
        candidates: usize,
        max_candidates: usize,
    ) -> Result<Self, InvalidField> {
        if candidates == 0 {
            return Err(InvalidField::new("candidates", "must not be empty"));
        }
        if candidates > max_candidates {
            return Err(InvalidField::new(
                "candidates",
                format!("{candidates} candidates exceed the limit of {max_candidates}"),
            ));
        }
        let dense = schema.candidate_dense.len();
        let cats = schema.candidate_categorical.len();
        Ok(InputBuilder {
            schema,
            input: RerankInput {
                context_dense: Vec::with_capacity(schema.context_dense.len()),
                context_ids: Vec::with_capacity(schema.context_categorical.len()),
                candidate_dense: Vec::with_capacity(candidates * dense),
                candidate_ids: Vec::with_capacity(candidates * cats),
                item_ids: Vec::with_capacity(candidates),
                upstream: Vec::new(),
                slots: 0,
                rules: Rules::default(),
                explain: false,
            },
            scores: Vec::with_capacity(if schema.ranking_score { candidates } else { 0 }),
            scored: 0,
            first_unscored: None,
        })
    }

    pub fn context(&mut self, dense: &[f32], categorical: &[i64]) -> Result<(), InvalidField> {
        let schema = self.schema;
        push_dense(
            &mut self.input.context_dense,
            || "context.dense".into(),
            dense,
            schema.context_dense.len(),
        )?;
        push_ids(
            &mut self.input.context_ids,
            || "context.categorical".into(),
            categorical,
            &schema.context_categorical,
        )
    }

    pub fn candidate(
        &mut self,
        index: usize,
        item_id: String,
        dense: &[f32],
        categorical: &[i64],
        ranking_score: Option<f32>,
    ) -> Result<(), InvalidField> {
        let schema = self.schema;
        // Field names are formatted only for an error: this runs for every candidate.
        let at = |field: &'static str| move || format!("candidates[{index}].{field}");
        if item_id.is_empty() {
            return Err(InvalidField::new(at("item_id")(), "must not be empty"));
        }
        push_dense(
            &mut self.input.candidate_dense,
            at("features.dense"),
            dense,
            schema.candidate_dense.len(),
        )?;
        push_ids(
            &mut self.input.candidate_ids,
            at("features.categorical"),
            categorical,
            &schema.candidate_categorical,
        )?;
        if let Some(score) = ranking_score {
            if !score.is_finite() {
                return Err(InvalidField::new(
                    at("ranking_score")(),
                    format!("{score} is not a finite number"),
                ));
            }
            self.scored += 1;
        } else {
            self.first_unscored.get_or_insert(index);
        }
        if self.schema.ranking_score {
            self.scores.push(ranking_score.unwrap_or(0.0));
        }
        self.input.item_ids.push(item_id);
        Ok(())
    }

    /// Checks that item ids are unique and that every candidate or none has a
    /// `ranking_score` (none: the request's order is the ranking stage's). `top_k` 0 ranks
    /// every candidate; a `top_k` above N returns all N.
    pub fn finish(mut self, top_k: u32) -> Result<RerankInput, InvalidField> {
        let n = self.input.item_ids.len();
        if let (1.., Some(missing)) = (self.scored, self.first_unscored) {
            return Err(InvalidField::new(
                format!("candidates[{missing}].ranking_score"),
                format!(
                    "missing: {} of {n} candidates carry one; send it for all or none",
                    self.scored
                ),
            ));
        }
        if self.schema.ranking_score {
            if self.scored == 0 {
                self.scores = upstream::scores_of_request_order(n);
            }
            self.input.upstream.reserve_exact(n * upstream::WIDTH);
            upstream::features(&self.scores, &mut self.input.upstream);
        }
        let ids = &self.input.item_ids;
        // Seeded per process, and N is bounded by the candidate limit: a client that finds
        // colliding ids slows only its own request.
        let hasher = foldhash::fast::RandomState::default();
        let mut seen = std::collections::HashSet::with_capacity_and_hasher(ids.len(), hasher);
        if let Some((index, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| !seen.insert(id.as_str()))
        {
            return Err(InvalidField::new(
                format!("candidates[{index}].item_id"),
                format!("duplicate item id {:?}", clip(id)),
            ));
        }
        self.input.slots = if top_k == 0 {
            n
        } else {
            (top_k as usize).min(n)
        };
        Ok(self.input)
    }
}

/// The embedding row of a non-negative categorical id. New items arrive every day: an id
/// the model never saw uses the feature's unknown bucket, row `vocab_size`. A hashed
/// feature (ids of any size, [`Categorical::hashed`]) folds every id into its
/// `vocab_size` rows: `mix(id) mod vocab_size`. The only place this rule is written;
/// training, evaluation and serving all call it.
pub fn vocab_id(id: i64, vocab_size: u64, hashed: bool) -> i64 {
    match vocab_size {
        1.. if hashed => (mix(id as u64) % vocab_size) as i64,
        _ => id.min(i64::try_from(vocab_size).unwrap_or(i64::MAX)),
    }
}

/// splitmix64's finaliser, a bijection of `u64` whose low bits depend on all of the id's:
/// ids with a common stride (snowflake keys whose low 12 bits are a sequence number that is
/// mostly 0, multiples of a shard count) would otherwise share a few rows of a table whose
/// size is a power of two.
fn mix(id: u64) -> u64 {
    let z = (id ^ (id >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// At most 64 characters of a client's string, so an error message (sent back in a
/// `grpc-message` header and logged) stays small whatever the client sent.
pub(super) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

fn push_dense(
    out: &mut Vec<f32>,
    field: impl Fn() -> String,
    values: &[f32],
    expected: usize,
) -> Result<(), InvalidField> {
    if values.len() != expected {
        return Err(InvalidField::new(
            field(),
            format!("expected {expected} values, got {}", values.len()),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(InvalidField::new(
            format!("{}[{i}]", field()),
            format!("{} is not a finite number", values[i]),
        ));
    }
    out.extend_from_slice(values);
    Ok(())
}

fn push_ids(
    out: &mut Vec<i64>,
    field: impl Fn() -> String,
    ids: &[i64],
    features: &[Categorical],
) -> Result<(), InvalidField> {
    if ids.len() != features.len() {
        return Err(InvalidField::new(
            field(),
            format!("expected {} ids, got {}", features.len(), ids.len()),
        ));
    }
    for (i, (&id, feature)) in ids.iter().zip(features).enumerate() {
        if id < 0 {
            return Err(InvalidField::new(
                format!("{}[{i}]", field()),
                format!("id {id} is negative"),
            ));
        }
        out.push(vocab_id(id, feature.vocab_size, feature.hashed));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_ids_fold_into_the_table_and_others_clamp_to_the_unknown_row() {
        assert_eq!(vocab_id(3, 8, false), 3);
        assert_eq!(vocab_id(9, 8, false), 8);
        assert_eq!(vocab_id(i64::MAX, 8, false), 8);
        for id in [0, 9, i64::MAX, i64::MIN] {
            assert!((0..8).contains(&vocab_id(id, 8, true)));
        }
        // A hashed feature of no rows (a hostile manifest) still answers, with the only row.
        assert_eq!(vocab_id(5, 0, true), 0);
    }

    /// Snowflake-like keys, multiples of 4,096, would all fold to row 0 by `id mod rows`.
    #[test]
    fn hashed_ids_with_a_common_stride_spread_over_the_rows() {
        let rows = 4096;
        let used: std::collections::HashSet<i64> = (1..=1000i64)
            .map(|k| vocab_id(k << 12, rows, true))
            .collect();
        // 1,000 ids thrown at random into 4,096 rows fill ~884 of them.
        assert!(used.len() > 850, "{} rows", used.len());
    }

    #[test]
    fn a_duplicate_id_is_named_in_at_most_64_characters() {
        let schema = FeatureSchema {
            context_dense: vec![],
            context_categorical: vec![],
            candidate_dense: vec![],
            candidate_categorical: vec![Categorical {
                name: "brand".into(),
                vocab_size: 4,
                hashed: false,
            }],
            ranking_score: false,
        };
        let huge = "é".repeat(100_000);
        let mut b = InputBuilder::new(&schema, 2, 2).unwrap();
        b.context(&[], &[]).unwrap();
        for i in 0..2 {
            b.candidate(i, huge.clone(), &[], &[9], None).unwrap();
        }
        let err = b.finish(0).unwrap_err();
        assert_eq!(err.field, "candidates[1].item_id");
        assert!(err.problem.len() < 200, "{}", err.problem.len());
        assert!(err.problem.ends_with("…\""), "{}", err.problem);
    }
}
