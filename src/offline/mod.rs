//! The offline half of DeGRe: logged data, the benchmark environment, the Lookahead
//! Evaluator and the evaluation harness.

pub mod distill;
pub mod eval;
pub mod evaluator;
pub mod logs;
pub mod metrics;
pub mod mine;
pub mod pipeline;
pub mod policy;
pub mod report;
pub mod search;
pub mod sim;
