//! The offline half of DeGRe: logged data, the benchmark environment, the Lookahead
//! Evaluator and the evaluation harness.

pub mod eval;
pub mod evaluator;
pub mod logs;
pub mod metrics;
pub mod policy;
pub mod search;
pub mod sim;
