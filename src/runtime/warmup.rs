//! The checks a version passes before it may serve: synthetic requests that reach every
//! embedding row (up to a budget), the unknown buckets, and several candidate counts, each
//! decoded to the end with every logit finite; and, for the native engine, agreement with
//! tract on the same requests.

use super::{Engine, LoadedModel};
use crate::contract::golden::{self, Golden};
use crate::contract::LoadError;
use crate::rerank::{synthetic, RerankInput};

pub fn check(model: &mut LoadedModel) -> Result<(), LoadError> {
    let manifest = &model.manifest;
    let requests = synthetic::requests(&manifest.schema, manifest.limits.max_candidates);
    if model.native.is_some() {
        // Agreement decodes every request natively to the end, finite: the whole warm-up.
        match agreement(model, &requests) {
            Ok(()) => return Ok(()),
            Err(why) => {
                tracing::warn!(version = model.version, %why, "served by tract: the native engine disagrees with it");
                model.native = None;
            }
        }
    }
    for input in &requests {
        model
            .rerank(input)
            .map_err(|e| LoadError::Warmup(format!("{} candidates: {e}", input.candidates())))?;
    }
    Ok(())
}

/// Whether the engine that will serve reproduces the exporter's reference logits on the
/// version's golden set.
pub fn reproduce(model: &LoadedModel, golden: &Golden) -> Result<(), LoadError> {
    let engine = model.engine();
    for (case_no, case) in golden.cases.iter().enumerate() {
        let n = case.candidates;
        let wrong =
            |why: String| LoadError::Golden(format!("case {case_no} ({n} candidates): {why}"));
        let input = RerankInput {
            context_dense: case.context_dense.clone(),
            context_ids: case.context_ids.clone(),
            candidate_dense: case.candidate_dense.clone(),
            candidate_ids: case.candidate_ids.clone(),
            item_ids: (0..n).map(|i| i.to_string()).collect(),
            upstream: case.upstream.clone(),
            slots: case.path.len(),
            rules: Default::default(),
            explain: false,
        };
        let shapes = [
            (
                input.candidate_dense.len(),
                n * model.manifest.schema.candidate_dense.len(),
            ),
            (
                input.candidate_ids.len(),
                n * model.manifest.schema.candidate_categorical.len(),
            ),
        ];
        if shapes.iter().any(|(got, want)| got != want) || case.logits.len() != case.path.len() {
            return Err(wrong("does not match the version's schema".into()));
        }
        let logits = model
            .logits_along(&input, &case.path, engine)
            .map_err(|e| wrong(e.to_string()))?;
        for (slot, (got, want)) in logits.iter().zip(&case.logits).enumerate() {
            if got.len() != want.len() {
                return Err(wrong(format!(
                    "slot {slot}: {} logits, expected {}",
                    got.len(),
                    want.len()
                )));
            }
            for (index, (x, y)) in got.iter().zip(want).enumerate() {
                // Written so that NaN is never within.
                let within = (x - y).abs() <= golden::TOLERANCE * (1.0 + y.abs());
                if !within {
                    return Err(wrong(format!(
                        "slot {slot}, candidate {index}: {} gives {x}, the exporter's reference {y}",
                        engine.name()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Whether the native engine's logits match tract's along the native greedy path.
fn agreement(model: &LoadedModel, requests: &[RerankInput]) -> Result<(), String> {
    for input in requests {
        let n = input.candidates();
        let picks = model
            .rerank_with(Engine::Native, input)
            .map_err(|e| format!("{n} candidates: {e}"))?;
        let path: Vec<usize> = picks.iter().map(|p| p.index).collect();
        let native = model.logits_along(input, &path, Engine::Native);
        let tract = model.logits_along(input, &path, Engine::TractGeneric);
        let (native, tract) = match (native, tract) {
            (Ok(native), Ok(tract)) => (native, tract),
            (Err(e), _) | (_, Err(e)) => return Err(format!("{n} candidates: {e}")),
        };
        for (slot, (a, b)) in native.iter().zip(&tract).enumerate() {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                if (x - y).abs() > golden::TOLERANCE * (1.0 + y.abs()) {
                    return Err(format!(
                        "{n} candidates, slot {slot}, candidate {index}: native {x}, tract {y}"
                    ));
                }
            }
        }
    }
    Ok(())
}
