//! Reranking policies the harness compares: by name, or as lists read from a file.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::index;
use rand::SeedableRng;
use serde::Deserialize;

use crate::offline::distill::TrainedGenerator;
use crate::offline::evaluator::EnsembleScorer;
use crate::offline::logs::LoggedRequest;
use crate::offline::rules;
use crate::offline::search::{self, ListModel};
use crate::offline::sim::Truth;

#[derive(Clone)]
pub enum Policy {
    /// The list the logging policy showed.
    Logged,
    /// The ranking stage's order (`ranking_score`, descending).
    Upstream,
    /// A uniformly random list.
    Random,
    /// Sorted by the true base attractiveness, ignoring context effects (simulator only).
    TruePointwise,
    /// The best list under the true model (simulator only).
    Oracle,
    /// Sorted by the evaluator's value of each candidate alone in the first slot.
    EvaluatorPointwise,
    /// Step-wise greedy on the evaluator: the largest immediate gain at every slot.
    EvaluatorGreedy,
    /// Beam search on the evaluator (the offline teacher).
    EvaluatorBeam(usize),
    /// A trained generator's greedy pass, exactly as the server decodes.
    Generator {
        name: String,
        generator: Arc<TrainedGenerator>,
    },
    /// A generator under the simulated business rules (`offline::rules`): enforced inside
    /// its decoding pass, or (`after`) by a rule engine on its unconstrained ranking.
    Ruled {
        name: String,
        generator: Arc<TrainedGenerator>,
        after: bool,
    },
    /// An exported model version (ONNX graphs + manifest) run by the server's runtime.
    Served {
        name: String,
        model: Arc<crate::runtime::LoadedModel>,
    },
    /// Lists given per request id, read from a JSON Lines file.
    Lists {
        name: String,
        lists: HashMap<String, Vec<usize>>,
    },
}

pub const NAMES: &str = "logged, upstream, random, true-pointwise, oracle, evaluator-pointwise, \
                         evaluator-greedy, evaluator-beam[:WIDTH]";

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Policy, String> {
        Ok(match s {
            "logged" => Policy::Logged,
            "upstream" => Policy::Upstream,
            "random" => Policy::Random,
            "true-pointwise" => Policy::TruePointwise,
            "oracle" => Policy::Oracle,
            "evaluator-pointwise" => Policy::EvaluatorPointwise,
            "evaluator-greedy" => Policy::EvaluatorGreedy,
            "evaluator-beam" => Policy::EvaluatorBeam(16),
            other => match other.strip_prefix("evaluator-beam:").map(str::parse) {
                Some(Ok(width)) if width > 0 => Policy::EvaluatorBeam(width),
                _ => return Err(format!("unknown policy {other:?}; known: {NAMES}")),
            },
        })
    }
}

/// What a policy may look at for one request.
pub struct RequestContext<'a> {
    pub request: &'a LoggedRequest,
    /// Slots to fill.
    pub k: usize,
    pub truth: Option<&'a Truth<'a>>,
    pub scorer: Option<&'a EnsembleScorer>,
    /// Seeds the random policy; fixed per request so results repeat.
    pub seed: u64,
}

impl Policy {
    pub fn name(&self) -> String {
        match self {
            Policy::Logged => "logged".into(),
            Policy::Upstream => "upstream".into(),
            Policy::Random => "random".into(),
            Policy::TruePointwise => "true-pointwise".into(),
            Policy::Oracle => "oracle".into(),
            Policy::EvaluatorPointwise => "evaluator-pointwise".into(),
            Policy::EvaluatorGreedy => "evaluator-greedy".into(),
            Policy::EvaluatorBeam(width) => format!("evaluator-beam:{width}"),
            Policy::Generator { name, .. }
            | Policy::Ruled { name, .. }
            | Policy::Served { name, .. }
            | Policy::Lists { name, .. } => name.clone(),
        }
    }

    pub fn needs_simulator(&self) -> bool {
        matches!(self, Policy::TruePointwise | Policy::Oracle)
    }

    pub fn needs_evaluator(&self) -> bool {
        matches!(
            self,
            Policy::EvaluatorPointwise | Policy::EvaluatorGreedy | Policy::EvaluatorBeam(_)
        )
    }

    /// The policy's list for one request. The oracle's list comes from the harness, which
    /// computes it once for every policy's "% of oracle".
    pub fn rank(&self, cx: &RequestContext<'_>) -> Result<Vec<usize>, String> {
        let n = cx.request.candidates.len();
        let k = cx.k.min(n);
        let missing = |what: &str| format!("policy {} needs {what}", self.name());
        Ok(match self {
            Policy::Logged => cx.request.exposed.clone(),
            Policy::Upstream => cx.request.upstream_list(k),
            Policy::Random => index::sample(&mut StdRng::seed_from_u64(cx.seed), n, k).into_vec(),
            Policy::TruePointwise => {
                let truth = cx.truth.ok_or_else(|| missing("the simulator's world"))?;
                search::sort_by_score(&truth.pointwise_scores(), k)
            }
            Policy::Oracle => return Err("the oracle is computed by the harness".into()),
            Policy::EvaluatorPointwise => {
                let scorer = cx.scorer.ok_or_else(|| missing("an evaluator"))?;
                let initial = scorer.initial();
                let scores: Vec<f64> = (0..n).map(|a| scorer.gain(&initial, a)).collect();
                search::sort_by_score(&scores, k)
            }
            Policy::EvaluatorGreedy => {
                search::greedy(cx.scorer.ok_or_else(|| missing("an evaluator"))?, k).list
            }
            Policy::EvaluatorBeam(width) => {
                let scorer = cx.scorer.ok_or_else(|| missing("an evaluator"))?;
                search::beam(scorer, k, *width).swap_remove(0).list
            }
            Policy::Generator { generator, .. } => generator.rerank(cx.request, k)?,
            Policy::Ruled {
                generator, after, ..
            } => {
                let (rules, slots) = rules::of(cx.request, k)?;
                if *after {
                    let ranking = generator.rerank(cx.request, n)?;
                    rules::applied_after(&ranking, &rules, slots)
                } else {
                    generator.rerank_under(cx.request, slots, &rules)?
                }
            }
            Policy::Served { model, .. } => {
                let input = cx
                    .request
                    .rerank_input(&model.manifest.schema, k)
                    .map_err(|e| e.to_string())?;
                let picks = model.rerank(&input).map_err(|e| e.to_string())?;
                picks.iter().map(|p| p.index).collect()
            }
            Policy::Lists { name, lists } => {
                let list = lists.get(&cx.request.request_id).ok_or_else(|| {
                    format!("{name}: no list for request {:?}", cx.request.request_id)
                })?;
                check_list(list, n)
                    .map_err(|e| format!("{name}: request {:?}: {e}", cx.request.request_id))?;
                list.clone()
            }
        })
    }

    /// Reads `{"request_id": "...", "list": [candidate indices]}` lines; the policy is named
    /// after the file.
    pub fn from_lists_file(path: &Path) -> anyhow::Result<Policy> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Line {
            request_id: String,
            list: Vec<usize>,
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut lists = HashMap::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let line: Line = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}: line {}: {e}", path.display(), i + 1))?;
            if lists.insert(line.request_id.clone(), line.list).is_some() {
                anyhow::bail!(
                    "{}: line {}: request {:?} listed twice",
                    path.display(),
                    i + 1,
                    line.request_id
                );
            }
        }
        let name = path
            .file_stem()
            .map_or_else(|| "lists".into(), |s| s.to_string_lossy().into_owned());
        Ok(Policy::Lists { name, lists })
    }
}

fn check_list(list: &[usize], n: usize) -> Result<(), String> {
    let mut seen = vec![false; n];
    for &a in list {
        match seen.get_mut(a) {
            None => return Err(format!("index {a} is not a candidate (0..{n})")),
            Some(true) => return Err(format!("index {a} listed twice")),
            Some(s) => *s = true,
        }
    }
    Ok(())
}

impl Policy {
    /// Loads a model version directory (as written by `degre distill` or published) with
    /// the server's runtime; the policy is named after the directory.
    pub fn from_model_dir(dir: &Path) -> anyhow::Result<Policy> {
        let manifest = crate::contract::manifest::Manifest::load_verified(dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let model = crate::runtime::LoadedModel::load(dir, 0, manifest)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let name = dir
            .file_name()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Ok(Policy::Served {
            name,
            model: Arc::new(model),
        })
    }
}
