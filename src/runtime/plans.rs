//! tract plans of a version's graphs. The encoder's plan generic in the candidate count N
//! serves any request; plans specialised to an exact N skip tract's per-run shape
//! resolution, so each N seen is compiled once, in the background, and used from then on.
//! A request never waits for a compilation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tract_onnx::prelude::*;

use crate::contract::manifest::GraphSpec;
use crate::contract::LoadError;

pub type Plan = Arc<TypedRunnableModel>;

/// The symbolic candidate count in the graphs' input facts.
pub const N: &str = "N";

/// A graph bound to its roles, typed and decluttered but not yet optimised.
pub struct Bound {
    model: TypedModel,
}

impl Bound {
    /// Binds the graph's tensors to roles (in the given order), declares the input shapes
    /// the schema implies, types it, and checks the output shapes. Shapes may use [`N`].
    pub fn new(
        mut model: InferenceModel,
        spec: &GraphSpec,
        inputs: &[(&str, DatumType, TVec<TDim>)],
        outputs: &[(&str, TVec<TDim>)],
        budget: &Budget,
    ) -> Result<Bound, LoadError> {
        let file = &spec.file;
        let graph = |e: TractError| LoadError::Graph(format!("{file}: {e:#}"));
        let name_of = |map: &BTreeMap<String, String>, role: &str, kind: &str| {
            map.get(role).cloned().ok_or_else(|| {
                LoadError::Manifest(format!("{file}: no tensor name for {kind} {role:?}"))
            })
        };
        let graph_inputs = model.input_outlets().map_err(graph)?.len();
        if graph_inputs != inputs.len() {
            return Err(LoadError::Schema(format!(
                "{file} has {graph_inputs} inputs, the schema needs {}",
                inputs.len()
            )));
        }
        let input_names = inputs
            .iter()
            .map(|(role, ..)| name_of(&spec.inputs, role, "input"))
            .collect::<Result<Vec<_>, _>>()?;
        let output_names = outputs
            .iter()
            .map(|(role, _)| name_of(&spec.outputs, role, "output"))
            .collect::<Result<Vec<_>, _>>()?;
        model.select_inputs_by_name(&input_names).map_err(graph)?;
        model.select_outputs_by_name(&output_names).map_err(graph)?;
        for (ix, (_, dt, shape)) in inputs.iter().enumerate() {
            let fact = InferenceFact::dt_shape(*dt, shape.clone());
            model.set_input_fact(ix, fact).map_err(graph)?;
        }
        let misfit = |e: TractError| {
            LoadError::Schema(format!("{file} does not fit the manifest's schema: {e:#}"))
        };
        let model = model.into_typed().map_err(misfit)?;
        // Before decluttering, which folds constants: a graph that folds into a huge
        // tensor is refused here, not after it took the memory.
        within_budget(&model, file, budget)?;
        let model = model.into_decluttered().map_err(misfit)?;
        for (ix, (role, expected)) in outputs.iter().enumerate() {
            let fact = model.output_fact(ix).map_err(graph)?;
            if fact.datum_type != f32::datum_type() || fact.shape.to_tvec() != *expected {
                return Err(LoadError::Schema(format!(
                    "{file}: output {role:?} is {fact:?}, expected f32 {expected:?}"
                )));
            }
        }
        Ok(Bound { model })
    }

    /// The optimised plan, with N fixed to `n` if given.
    pub fn plan(&self, n: Option<usize>) -> TractResult<Plan> {
        let model = match n {
            Some(n) => {
                let symbol = self.model.symbols.sym(N);
                self.model
                    .set_symbols(&HashMap::from([(symbol, n.to_dim())]))?
            }
            None => self.model.clone(),
        };
        model.into_optimized()?.into_runnable()
    }
}

/// The most bytes a tensor of a version's graphs whose shape does not depend on the request
/// may take: twice the version's weights plus 16 MiB. Such tensors are the weights and what
/// derives from them; one larger can only come from a graph built to exhaust memory when
/// tract folds it at load. (Per-request tensors are bounded by the candidate limit.)
pub struct Budget {
    pub bytes: usize,
}

impl Budget {
    pub fn new(weight_bytes: usize) -> Budget {
        Budget {
            bytes: weight_bytes.saturating_mul(2).saturating_add(16 << 20),
        }
    }
}

fn within_budget(model: &TypedModel, file: &str, budget: &Budget) -> Result<(), LoadError> {
    for node in model.nodes() {
        for output in &node.outputs {
            let fact = &output.fact;
            let Some(shape) = fact.shape.as_concrete() else {
                continue; // depends on N
            };
            let bytes = shape
                .iter()
                .try_fold(fact.datum_type.size_of(), |bytes, &dim| {
                    bytes.checked_mul(dim)
                });
            if bytes.is_none_or(|bytes| bytes > budget.bytes) {
                return Err(LoadError::Graph(format!(
                    "{file}: node {:?} makes a {shape:?} tensor, more than the {} bytes a tensor of this version may take",
                    node.name, budget.bytes
                )));
            }
        }
    }
    Ok(())
}

struct Compiler {
    encoder: Bound,
    specialised: ArcSwap<HashMap<usize, Plan>>,
    pending: Mutex<HashSet<usize>>,
}

impl Compiler {
    fn specialise(&self, n: usize) {
        match self.encoder.plan(Some(n)) {
            Ok(plan) => {
                self.specialised.rcu(|map| {
                    let mut map = HashMap::clone(map);
                    map.insert(n, plan.clone());
                    map
                });
            }
            // The generic plan keeps serving this N; nothing is lost.
            Err(e) => tracing::warn!(n, err = %format!("{e:#}"), "cannot specialise the encoder"),
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
    }
}

/// The encoder's plans: generic, and specialised per N as requests arrive.
pub struct EncoderPlans {
    generic: Plan,
    compiler: Arc<Compiler>,
    requests: SyncSender<usize>,
}

impl EncoderPlans {
    /// Optimises the generic plan now and starts the background compiler, which ends when
    /// this is dropped.
    pub fn new(encoder: Bound) -> TractResult<EncoderPlans> {
        let generic = encoder.plan(None)?;
        let compiler = Arc::new(Compiler {
            encoder,
            specialised: ArcSwap::default(),
            pending: Mutex::default(),
        });
        let (requests, queue) = sync_channel::<usize>(64);
        let worker = compiler.clone();
        std::thread::Builder::new()
            .name("plan-compiler".into())
            .spawn(move || queue.into_iter().for_each(|n| worker.specialise(n)))?;
        Ok(EncoderPlans {
            generic,
            compiler,
            requests,
        })
    }

    /// The plan for `n` candidates: specialised if compiled, else generic (and `n` queued).
    pub fn get(&self, n: usize) -> Plan {
        if let Some(plan) = self.compiler.specialised.load().get(&n) {
            return plan.clone();
        }
        let mut pending = self
            .compiler
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if pending.insert(n) && self.requests.try_send(n).is_err() {
            pending.remove(&n); // queue full: ask again on a later request
        }
        self.generic.clone()
    }

    /// The candidate counts with a specialised plan.
    pub fn specialised_sizes(&self) -> Vec<usize> {
        self.compiler.specialised.load().keys().copied().collect()
    }

    pub fn generic(&self) -> Plan {
        self.generic.clone()
    }

    /// The plan specialised to `n`, compiled now if it is not yet (warm-up, tests, benches).
    pub fn specialise_now(&self, n: usize) -> Plan {
        if let Some(plan) = self.compiler.specialised.load().get(&n) {
            return plan.clone();
        }
        self.compiler.specialise(n);
        let specialised = self.compiler.specialised.load();
        specialised
            .get(&n)
            .cloned()
            .unwrap_or_else(|| self.generic.clone())
    }
}
