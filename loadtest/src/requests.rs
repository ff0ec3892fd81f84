//! Requests to send, built once before the clock starts: random features sized by the
//! served model's schema (asked of the server, else read from a manifest), or the rows of a
//! log replayed as they were logged.

use std::path::{Path, PathBuf};

use anyhow::Context;
use degre::api::v1;
use degre::contract::manifest::{Categorical, FeatureSchema, Manifest};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::RunArgs;

/// Distinct requests cycled through while load runs.
const POOL: usize = 64;

pub async fn pool(args: &RunArgs) -> anyhow::Result<Vec<v1::RerankRequest>> {
    if let Some(path) = &args.replay {
        return replay(path, args.top_k);
    }
    let schema = match &args.manifest {
        Some(path) => read_schema(path)?,
        None => match served_schema(&args.addr).await {
            Some(schema) => schema,
            // The echo server has no model: size requests like the bundled one.
            None => read_schema(&newest_manifest(Path::new("models"))?)?,
        },
    };
    let schema = &schema;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let features = |dense: usize, vocabs: &[u64], rng: &mut StdRng| v1::Features {
        dense: (0..dense).map(|_| rng.random_range(-1.0..1.0)).collect(),
        // Up to 10% beyond the vocabulary: unseen ids are part of real traffic.
        categorical: vocabs
            .iter()
            .map(|&v| rng.random_range(0..=v + v / 10) as i64)
            .collect(),
    };
    let ctx_vocab: Vec<u64> = schema
        .context_categorical
        .iter()
        .map(|c| c.vocab_size)
        .collect();
    let cand_vocab: Vec<u64> = schema
        .candidate_categorical
        .iter()
        .map(|c| c.vocab_size)
        .collect();
    Ok((0..POOL)
        .map(|r| v1::RerankRequest {
            request_id: format!("load-{r}"),
            context: Some(features(schema.context_dense.len(), &ctx_vocab, &mut rng)),
            candidates: (0..args.candidates)
                .map(|i| v1::Candidate {
                    item_id: format!("item-{i}"),
                    features: Some(features(
                        schema.candidate_dense.len(),
                        &cand_vocab,
                        &mut rng,
                    )),
                    ranking_score: Some(rng.random_range(-3.0..3.0)),
                })
                .collect(),
            top_k: args.top_k,
            model_version: None,
            constraints: None,
            explain: false,
            routing_key: String::new(),
        })
        .collect())
}

/// The serving version's schema, by `GetModelInfo`; `None` if the server cannot say.
async fn served_schema(addr: &str) -> Option<FeatureSchema> {
    let mut client = v1::reranker_client::RerankerClient::connect(addr.to_string())
        .await
        .ok()?;
    let info = client
        .get_model_info(v1::GetModelInfoRequest::default())
        .await
        .ok()?
        .into_inner();
    let s = info.schema?;
    let categorical = |c: Vec<v1::CategoricalFeature>| {
        c.into_iter()
            .map(|c| Categorical {
                name: c.name,
                vocab_size: c.vocab_size,
                hashed: c.hashed,
            })
            .collect()
    };
    Some(FeatureSchema {
        context_dense: s.context_dense,
        context_categorical: categorical(s.context_categorical),
        candidate_dense: s.candidate_dense,
        candidate_categorical: categorical(s.candidate_categorical),
        ranking_score: s.ranking_score,
    })
}

fn read_schema(path: &Path) -> anyhow::Result<FeatureSchema> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a model manifest", path.display()))?;
    Ok(manifest.schema)
}

/// `<root>/<only model>/<newest version>/manifest.json`.
fn newest_manifest(root: &Path) -> anyhow::Result<PathBuf> {
    let repo = degre::repository::Repository::open(root, None).map_err(anyhow::Error::msg)?;
    let version = *repo
        .versions()?
        .first()
        .with_context(|| format!("no version under {}", repo.model_dir().display()))?;
    Ok(repo
        .version_dir(version)
        .join(degre::contract::manifest::MANIFEST_FILE))
}

/// Every row of a log as a request, in log order (the driver cycles through them).
fn replay(path: &Path, top_k: u32) -> anyhow::Result<Vec<v1::RerankRequest>> {
    let rows = degre::offline::logs::read_logs(path)?;
    let features = |f: &degre::offline::logs::Features| v1::Features {
        dense: f.dense.clone(),
        categorical: f.categorical.clone(),
    };
    Ok(rows
        .iter()
        .map(|row| v1::RerankRequest {
            request_id: row.request_id.clone(),
            context: Some(features(&row.context)),
            candidates: row
                .candidates
                .iter()
                .map(|c| v1::Candidate {
                    item_id: c.item_id.clone(),
                    features: Some(features(&c.features)),
                    ranking_score: Some(c.ranking_score),
                })
                .collect(),
            top_k: if top_k == 0 {
                row.exposed.len() as u32
            } else {
                top_k
            },
            model_version: None,
            constraints: None,
            explain: false,
            routing_key: String::new(),
        })
        .collect())
}
