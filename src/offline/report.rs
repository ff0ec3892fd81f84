//! The pipeline's report: every method across seeds (mean ± spread), as JSON, Markdown and
//! two SVG plots (true utility per method; utility against beam width).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::offline::gate;
use crate::offline::metrics::mean_std;
use crate::offline::objective::Objective;
use crate::offline::pipeline::SeedRun;
use crate::offline::rules;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seeds: Vec<u64>,
    /// What utility, `V` and the gate measure.
    pub objective: Objective,
    /// True utility is known (simulator) or only estimated by the evaluator (user logs).
    pub simulated: bool,
    pub oracle_method: Option<String>,
    /// The teacher's beam width (the main table's `evaluator-beam` row).
    pub teacher_width: usize,
    pub methods: Vec<MethodRow>,
    /// DeGRe against every other method on the same seeds (paired, so the spread between
    /// worlds cancels out).
    pub versus_degre: Vec<PairedRow>,
    pub evaluator: Vec<EvaluatorRow>,
    /// Per seed: the publish gate's verdict (and, with the simulator, the true difference
    /// it estimates).
    pub gate: Vec<GateRow>,
    /// DeGRe's true utility with business rules enforced inside its decoding pass and by a
    /// rule engine after it (simulator only).
    pub rules: Option<RulesRow>,
    pub stage_seconds: BTreeMap<String, f64>,
    pub mining_requests_per_second: f64,
    pub runs: Vec<SeedRun>,
}

/// One method over seeds: (mean, sample standard deviation) of each figure.
#[derive(Debug, Clone, Serialize)]
pub struct MethodRow {
    pub name: String,
    pub true_utility: Option<(f64, f64)>,
    pub percent_of_oracle: Option<(f64, f64)>,
    pub true_clicks: Option<(f64, f64)>,
    pub true_value: Option<(f64, f64)>,
    pub evaluator_value: Option<(f64, f64)>,
    /// The gate's judge's value of the method's lists (methods the gate scores).
    pub judged_value: Option<(f64, f64)>,
    pub ndcg_at_k: Option<(f64, f64)>,
    pub map_at_k: Option<(f64, f64)>,
    /// How far its lists move from the ranking stage's: shares of slots with upstream's
    /// item, and of items upstream's list shows too (means over seeds).
    pub same_slot_as_upstream: f64,
    pub overlap_with_upstream: f64,
    pub micros_per_request: f64,
}

/// `degre − method` of the plotted figure (true utility, else `V`), seed by seed.
#[derive(Debug, Clone, Serialize)]
pub struct PairedRow {
    pub name: String,
    /// Mean and sample standard deviation of the per-seed differences.
    pub difference: (f64, f64),
    /// Seeds on which DeGRe is strictly better.
    pub degre_wins: usize,
}

/// The method the paired table compares everything with.
const DEGRE: &str = "degre";

#[derive(Debug, Clone, Serialize)]
pub struct GateRow {
    pub seed: u64,
    /// `degre − upstream` under the judge: mean and 95% half-width.
    pub judged: (f64, f64),
    pub passed: bool,
    pub refusal: Option<String>,
    /// The true `degre − upstream` (simulator only), and whether the judge has its sign.
    pub true_difference: Option<f64>,
    pub sign_agrees: Option<bool>,
    /// How much more the mining evaluator thinks DeGRe's lists are worth than the judge
    /// does: the optimism search bought on the evaluator it exploited.
    pub miner_optimism: Option<f64>,
    /// The judge on the logged lists: estimated and actual mean reward.
    pub judged_logged: f64,
    pub logged_reward: f64,
    /// The list-aware judges' weight in the panel and its fit to the held-out clicks.
    pub fit: gate::PanelFit,
}

/// Rules inside the decoding pass against rules applied after it, over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct RulesRow {
    pub unconstrained: (f64, f64),
    pub inside: (f64, f64),
    pub after: (f64, f64),
    /// `inside − after`, seed by seed, and on how many seeds inside is strictly better.
    pub inside_minus_after: (f64, f64),
    pub inside_wins: usize,
}

impl RulesRow {
    fn of(runs: &[SeedRun]) -> Option<RulesRow> {
        let utility = |run: &SeedRun, name: &str| {
            run.eval
                .policies
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.true_utility)
        };
        let column =
            |name: &str| -> Option<Vec<f64>> { runs.iter().map(|r| utility(r, name)).collect() };
        let (free, inside, after) = (
            column(DEGRE)?,
            column(rules::INSIDE)?,
            column(rules::AFTER)?,
        );
        let diff: Vec<f64> = inside.iter().zip(&after).map(|(i, a)| i - a).collect();
        Some(RulesRow {
            unconstrained: mean_std(&free),
            inside: mean_std(&inside),
            after: mean_std(&after),
            inside_minus_after: mean_std(&diff),
            inside_wins: diff.iter().filter(|&&d| d > 0.0).count(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EvaluatorRow {
    pub seed: u64,
    pub auc: Option<f64>,
    pub ece: f64,
    pub held_out_loss: f64,
    pub constant_loss: f64,
    pub spearman_within_request: Option<f64>,
}

impl GateRow {
    fn of(run: &SeedRun) -> GateRow {
        let g = &run.gate;
        let policy = |name: &str| run.eval.policies.iter().find(|p| p.name == name);
        let true_of = |name: &str| policy(name)?.true_utility;
        let true_difference = true_of(gate::CANDIDATE)
            .zip(true_of(gate::INCUMBENT))
            .map(|(d, u)| d - u);
        let miner = policy(gate::CANDIDATE).and_then(|p| p.evaluator_value);
        GateRow {
            seed: run.seed,
            judged: g.degre_vs_incumbent,
            passed: g.passed,
            refusal: g.refusal.clone(),
            true_difference,
            sign_agrees: true_difference.map(|t| (t > 0.0) == (g.degre_vs_incumbent.0 > 0.0)),
            miner_optimism: miner
                .zip(g.judged_value(gate::CANDIDATE))
                .map(|(m, j)| m - j),
            judged_logged: g.judged_logged,
            logged_reward: g.logged_reward,
            fit: g.fit.clone(),
        }
    }
}

fn over_seeds(values: Vec<Option<f64>>) -> Option<(f64, f64)> {
    let values: Option<Vec<f64>> = values.into_iter().collect();
    values.filter(|v| !v.is_empty()).map(|v| mean_std(&v))
}

impl Report {
    pub fn new(runs: Vec<SeedRun>, teacher_width: usize) -> Report {
        let first = &runs[0];
        let methods = first
            .eval
            .policies
            .iter()
            .enumerate()
            .map(|(p, policy)| {
                let column = |f: fn(&crate::offline::compare::PolicyReport) -> Option<f64>| {
                    over_seeds(runs.iter().map(|r| f(&r.eval.policies[p])).collect())
                };
                let mean = |f: fn(&crate::offline::compare::PolicyReport) -> f64| {
                    runs.iter().map(|r| f(&r.eval.policies[p])).sum::<f64>() / runs.len() as f64
                };
                let judged = over_seeds(
                    runs.iter()
                        .map(|r| r.gate.judged_value(&policy.name))
                        .collect(),
                );
                MethodRow {
                    name: policy.name.clone(),
                    true_utility: column(|p| p.true_utility),
                    percent_of_oracle: column(|p| p.percent_of_oracle),
                    true_clicks: column(|p| p.true_clicks),
                    true_value: column(|p| p.true_value),
                    evaluator_value: column(|p| p.evaluator_value),
                    judged_value: judged,
                    ndcg_at_k: column(|p| p.ndcg_at_k),
                    map_at_k: column(|p| p.map_at_k),
                    same_slot_as_upstream: mean(|p| p.same_slot_as_upstream),
                    overlap_with_upstream: mean(|p| p.overlap_with_upstream),
                    micros_per_request: mean(|p| p.micros_per_request),
                }
            })
            .collect();
        let versus_degre = paired_with_degre(&runs, teacher_width);
        let evaluator = runs
            .iter()
            .filter_map(|r| {
                let e = r.eval.evaluator.as_ref()?;
                Some(EvaluatorRow {
                    seed: r.seed,
                    auc: e.auc,
                    ece: e.calibration.ece,
                    held_out_loss: e.held_out_loss,
                    constant_loss: e.constant_loss,
                    spearman_within_request: e
                        .rank_correlation
                        .as_ref()
                        .and_then(|c| c.within_request),
                })
            })
            .collect();
        let mut stage_seconds = BTreeMap::new();
        for run in &runs {
            for (stage, s) in &run.stage_seconds {
                *stage_seconds.entry(stage.clone()).or_insert(0.0) += s / runs.len() as f64;
            }
        }
        let gate = runs.iter().map(GateRow::of).collect();
        let rules = RulesRow::of(&runs);
        Report {
            seeds: runs.iter().map(|r| r.seed).collect(),
            objective: first.eval.objective,
            gate,
            rules,
            simulated: first.eval.oracle.is_some(),
            oracle_method: first.eval.oracle.as_ref().map(|o| o.method.clone()),
            teacher_width,
            methods,
            versus_degre,
            evaluator,
            mining_requests_per_second: runs
                .iter()
                .map(|r| r.mining_requests_per_second)
                .sum::<f64>()
                / runs.len() as f64,
            stage_seconds,
            runs,
        }
    }

    pub fn markdown(&self) -> String {
        // One seed has no spread: print the figure alone rather than a "± 0".
        let one = self.seeds.len() == 1;
        let pm = |v: Option<(f64, f64)>, d: usize| match v {
            None => "–".into(),
            Some((m, _)) if one => format!("{m:.d$}"),
            Some((m, s)) => format!("{m:.d$} ± {s:.d$}"),
        };
        let mut md = String::from("# DeGRe pipeline report\n\n");
        let _ = writeln!(
            md,
            "Objective: **{}**. Seeds: {:?}. {} {}\n",
            self.objective,
            self.seeds,
            if self.simulated {
                format!(
                    "True utility = exact expected reward per request under the objective \
                     (the columns `clicks` and `value` give expected clicks and expected value \
                     for every objective); the oracle maximises the objective by {}.",
                    self.oracle_method.as_deref().unwrap_or("?")
                )
            } else {
                "No simulator: `V(list)` is the mining evaluator's estimate of the objective, \
                 `judged` the gate's judge's (an evaluator trained on other requests, which the \
                 generators never fit), and NDCG/MAP use the held-out logged clicks."
                    .to_string()
            },
            if one {
                "One seed: the figures carry no spread over seeds; the gate's interval is over \
                 requests."
            } else {
                "Figures are the mean ± standard deviation over seeds; each seed is a fresh \
                 world (or split), evaluator, mining run and set of generators."
            }
        );
        md += "| method | true utility | % of oracle | clicks | value | V(list) | judged | NDCG@K | MAP@K | upstream slot / items | µs/request |\n";
        md += "|---|---|---|---|---|---|---|---|---|---|---|\n";
        for m in self.main_rows() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% / {:.0}% | {:.1} |",
                m.name,
                pm(m.true_utility, 4),
                pm(m.percent_of_oracle, 1),
                pm(m.true_clicks, 4),
                pm(m.true_value, 3),
                pm(m.evaluator_value, 4),
                pm(m.judged_value, 4),
                pm(m.ndcg_at_k, 4),
                pm(m.map_at_k, 4),
                100.0 * m.same_slot_as_upstream,
                100.0 * m.overlap_with_upstream,
                m.micros_per_request
            );
        }
        md += "\n`upstream slot / items`: how far the lists move from the ranking stage's \
               (`ranking_score` order): the share of slots holding upstream's item for that \
               slot, and of items upstream's list shows too. `µs/request` is the wall time of \
               producing one list on one core in this process (generators: the reference \
               forward pass, as exported).\n\n";
        md += &self.gate_markdown();
        md += &self.rules_markdown();
        if !self.versus_degre.is_empty() {
            let _ = writeln!(
                md,
                "## DeGRe against each method, paired by seed\n\n`degre − method` of {} on \
                 the same world and held-out requests: mean ± sd over seeds, and on how many \
                 of the {} seeds DeGRe is better.\n\n| method | difference | DeGRe better |\n|---|---|---|",
                if self.simulated { "true utility" } else { "V(list)" },
                self.seeds.len()
            );
            for row in &self.versus_degre {
                let (mean, sd) = row.difference;
                let spread = if one {
                    String::new()
                } else {
                    format!(" ± {sd:.4}")
                };
                let _ = writeln!(
                    md,
                    "| {} | {mean:+.4}{spread} | {}/{} |",
                    row.name,
                    row.degre_wins,
                    self.seeds.len()
                );
            }
            md += "\n";
        }
        md += "## Beam width (the teacher)\n\n| B | true utility | V(list) | µs/request |\n|---|---|---|---|\n";
        for (width, m) in self.beam_rows() {
            let _ = writeln!(
                md,
                "| {width} | {} | {} | {:.1} |",
                pm(m.true_utility, 4),
                pm(m.evaluator_value, 4),
                m.micros_per_request
            );
        }
        md += "\n## Evaluator\n\n| seed | click AUC | ECE | held-out BCE | constant BCE | Spearman(V, U) within request |\n|---|---|---|---|---|---|\n";
        for e in &self.evaluator {
            let _ = writeln!(
                md,
                "| {} | {} | {:.4} | {:.4} | {:.4} | {} |",
                e.seed,
                e.auc.map_or("–".into(), |a| format!("{a:.4}")),
                e.ece,
                e.held_out_loss,
                e.constant_loss,
                e.spearman_within_request
                    .map_or("–".into(), |s| format!("{s:.3}"))
            );
        }
        md += "\n## Stages (mean seconds per seed)\n\n| stage | seconds |\n|---|---|\n";
        for (stage, s) in &self.stage_seconds {
            let _ = writeln!(md, "| {stage} | {s:.1} |");
        }
        let _ = writeln!(
            md,
            "\nMining throughput: {:.1} requests/s. The teacher kept the `ranking_score` \
             order (trust region: the evaluators did not agree that its list beats it) on \
             {:.1}% of the mined requests.",
            self.mining_requests_per_second,
            100.0 * self.runs.iter().map(|r| r.kept_incumbent).sum::<f64>()
                / self.runs.len() as f64
        );
        let weights: Vec<String> = (self.runs.iter())
            .filter_map(|r| r.teacher_list_weight.map(|w| format!("{w:.2}")))
            .collect();
        if !weights.is_empty() {
            let _ = writeln!(
                md,
                "The teacher's evaluators were blended with a pointwise one at list weight \
                 {} (per seed; 1: list effects fully trusted, 0: none, as the validation \
                 clicks decided).",
                weights.join(", ")
            );
        }
        md += "\n![true utility per method](utility.svg)\n\n![utility vs beam width](beam.svg)\n";
        md
    }

    fn gate_markdown(&self) -> String {
        let mut md = String::from(
            "## Publish gate\n\nDeGRe against the ranking stage's order (`upstream`) on the \
             held-out requests, scored by the *judge*: evaluators trained on training \
             requests kept away from mining, so the generator never fit them, each a mixture \
             of one that sees the items above a slot and a pointwise one, weighed by how well \
             they predict the held-out logged clicks (`list weight`: the list-aware share, per judge; \
             `log loss`: list-aware / pointwise / mixture, per logged slot). `--publish` \
             refuses unless the 95% paired interval lies above zero. `optimism` is the mining \
             evaluator's value of DeGRe's lists minus the judge's: what search bought by \
             exploiting its evaluator's errors. `logged: judged / actual` checks the judge on \
             lists like the ones it learnt from.\n\n\
             | seed | degre − upstream (judged) | verdict | true difference | same sign | optimism | logged: judged / actual | list weight | log loss |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        let opt = |v: Option<f64>, d: usize| v.map_or("–".into(), |v| format!("{v:+.d$}"));
        for g in &self.gate {
            let _ = writeln!(
                md,
                "| {} | {:+.4} ± {:.4} | {} | {} | {} | {} | {:.4} / {:.4} | {} | {:.4} / {} / {:.4} |",
                g.seed,
                g.judged.0,
                g.judged.1,
                if g.passed { "ahead" } else { "not ahead" },
                opt(g.true_difference, 4),
                g.sign_agrees.map_or("–", |s| if s { "yes" } else { "no" }),
                opt(g.miner_optimism, 4),
                g.judged_logged,
                g.logged_reward,
                g.fit
                    .list_weights
                    .iter()
                    .map(|w| format!("{w:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                g.fit.list_log_loss,
                g.fit
                    .pointwise_log_loss
                    .map_or("–".into(), |l| format!("{l:.4}")),
                g.fit.log_loss
            );
        }
        for g in &self.gate {
            if let Some(why) = &g.refusal {
                let _ = writeln!(md, "\nSeed {}: not shown ahead: {why}.", g.seed);
            }
        }
        md + "\n"
    }

    /// Methods of the main table: all but the beam-width sweep's extra widths.
    fn rules_markdown(&self) -> String {
        let Some(r) = &self.rules else {
            return String::new();
        };
        let f = |(m, s): (f64, f64)| format!("{m:.4} ± {s:.4}");
        format!(
            "\n## Business rules: inside the decoding pass, or after it\n\n\
             Every held-out request gets rules (`src/offline/rules.rs`): the ranking \
             stage's last candidate is a sponsored item pinned at slot {} (counting from 1), and at most {} \
             items of one category in any {} consecutive slots. DeGRe's true utility \
             (mean ± sd over seeds):\n\n\
             | DeGRe | true utility |\n|---|---|\n\
             | (a) no rules | {} |\n\
             | (b) rules enforced inside the decoding pass (what degre serves) | {} |\n\
             | (c) its unconstrained ranking fixed up by a rule engine | {} |\n\n\
             (b) − (c): {} (better on {}/{} seeds).\n",
            rules::PIN_SLOT + 1,
            rules::CATEGORY_CAP.max_count,
            rules::CATEGORY_CAP.window,
            f(r.unconstrained),
            f(r.inside),
            f(r.after),
            f(r.inside_minus_after),
            r.inside_wins,
            self.seeds.len()
        )
    }

    fn main_rows(&self) -> impl Iterator<Item = &MethodRow> {
        self.methods
            .iter()
            .filter(|m| in_main_table(&m.name, self.teacher_width))
    }

    /// Beam-search rows sorted by width.
    fn beam_rows(&self) -> Vec<(usize, &MethodRow)> {
        let mut rows: Vec<(usize, &MethodRow)> = self
            .methods
            .iter()
            .filter_map(|m| Some((m.name.strip_prefix("evaluator-beam:")?.parse().ok()?, m)))
            .collect();
        rows.sort_by_key(|r| r.0);
        rows
    }

    fn plotted(m: &MethodRow) -> Option<(f64, f64)> {
        headline(m.true_utility, m.evaluator_value)
    }

    pub fn utility_svg(&self) -> String {
        let rows: Vec<(&str, (f64, f64))> = self
            .main_rows()
            .filter_map(|m| Some((m.name.as_str(), Report::plotted(m)?)))
            .collect();
        let max = rows
            .iter()
            .map(|r| r.1 .0 + r.1 .1)
            .fold(0.0, f64::max)
            .max(1e-9);
        let (left, width, bar) = (210.0, 420.0, 22.0);
        let height = 40.0 + rows.len() as f64 * (bar + 8.0);
        let mut svg = svg_open(left + width + 80.0, height);
        let label = if self.simulated {
            "true utility (expected clicks per request)"
        } else {
            "evaluator value V (expected clicks)"
        };
        let _ = writeln!(
            svg,
            r#"<text x="{left}" y="18" font-size="13">{label}, mean ± sd over seeds</text>"#
        );
        for (i, (name, (mean, sd))) in rows.iter().enumerate() {
            let y = 30.0 + i as f64 * (bar + 8.0);
            let w = width * mean / max;
            let colour = if name.starts_with("degre") {
                "#c0392b"
            } else {
                "#5d6d7e"
            };
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" font-size="12" text-anchor="end">{name}</text>"#,
                left - 6.0,
                y + 15.0
            );
            let _ = writeln!(
                svg,
                r#"<rect x="{left}" y="{y}" width="{w:.1}" height="{bar}" fill="{colour}"/>"#
            );
            let (x0, x1) = (
                left + width * (mean - sd) / max,
                left + width * (mean + sd) / max,
            );
            let _ = writeln!(
                svg,
                r#"<line x1="{x0:.1}" x2="{x1:.1}" y1="{0:.1}" y2="{0:.1}" stroke="black"/>"#,
                y + bar / 2.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{}" font-size="11">{mean:.3}</text>"#,
                x1 + 4.0,
                y + 15.0
            );
        }
        svg + "</svg>\n"
    }

    pub fn beam_svg(&self) -> String {
        let rows: Vec<(usize, f64)> = self
            .beam_rows()
            .into_iter()
            .filter_map(|(w, m)| Some((w, Report::plotted(m)?.0)))
            .collect();
        let (w, h, pad) = (480.0, 260.0, 50.0);
        let mut svg = svg_open(w + 2.0 * pad, h + 2.0 * pad);
        if rows.is_empty() {
            return svg + "</svg>\n";
        }
        let lo = rows.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
        let hi = rows
            .iter()
            .map(|r| r.1)
            .fold(f64::NEG_INFINITY, f64::max)
            .max(lo + 1e-9);
        let x_max = (rows.last().map_or(1, |r| r.0) as f64).log2().max(1.0);
        let point = |(width, v): (usize, f64)| {
            (
                pad + w * (width as f64).log2() / x_max,
                pad + h - h * (v - lo) / (hi - lo),
            )
        };
        let path: Vec<String> = rows
            .iter()
            .map(|&r| {
                let (x, y) = point(r);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<text x="{pad}" y="24" font-size="13">utility of evaluator beam search vs beam width B (log scale)</text>"#
        );
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#c0392b" stroke-width="2"/>"##,
            path.join(" ")
        );
        for &r in &rows {
            let (x, y) = point(r);
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">B={} ({:.3})</text>"#,
                y - 8.0,
                r.0,
                r.1
            );
        }
        svg + "</svg>\n"
    }

    /// Writes report.json, report.md, utility.svg and beam.svg into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("utility.svg"), self.utility_svg())?;
        std::fs::write(dir.join("beam.svg"), self.beam_svg())?;
        Ok(())
    }
}

/// The figure plotted and paired: true utility with the simulator, else the evaluator's value.
fn headline<T>(true_utility: Option<T>, evaluator_value: Option<T>) -> Option<T> {
    true_utility.or(evaluator_value)
}

/// Every method but the beam-width sweep's extra widths.
fn in_main_table(name: &str, teacher_width: usize) -> bool {
    match name.strip_prefix("evaluator-beam:") {
        Some(width) => width.parse() == Ok(teacher_width),
        None => true,
    }
}

/// Per-seed differences between DeGRe and every other method of the main table.
fn paired_with_degre(runs: &[SeedRun], teacher_width: usize) -> Vec<PairedRow> {
    let policies = &runs[0].eval.policies;
    let Some(degre) = policies.iter().position(|p| p.name == DEGRE) else {
        return Vec::new();
    };
    let figure = |r: &SeedRun, p: usize| {
        let policy = &r.eval.policies[p];
        headline(policy.true_utility, policy.evaluator_value)
    };
    (0..policies.len())
        .filter(|&p| p != degre && in_main_table(&policies[p].name, teacher_width))
        .filter_map(|p| {
            let differences: Option<Vec<f64>> = runs
                .iter()
                .map(|r| Some(figure(r, degre)? - figure(r, p)?))
                .collect();
            let differences = differences?;
            Some(PairedRow {
                name: policies[p].name.clone(),
                difference: mean_std(&differences),
                degre_wins: differences.iter().filter(|&&d| d > 0.0).count(),
            })
        })
        .collect()
}

fn svg_open(width: f64, height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    )
}
