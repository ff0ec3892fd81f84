//! degre: DeGRe reranking. The online half serves a generator exported to ONNX with one
//! greedy decoding pass per request; the offline half (feature `offline`) trains it from
//! logs. docs/architecture.md draws the rooms and the one-way arrows between them.
#![forbid(unsafe_code)]

// The serving core: what `degre serve` runs, nothing else.
pub mod api;
pub mod config;
pub mod contract;
pub mod repository;
pub mod rerank;
pub mod runtime;
pub mod server;
pub mod telemetry;

// The generator network and its ONNX exporter: what produces a version. Plain Rust, so a
// lean build can still export a (random-weight) version for tests and smoke checks.
pub mod network;

// Training, evaluation and the simulator; candle, arrow, parquet and rayon live here only.
#[cfg(feature = "offline")]
pub mod offline;

pub mod cli;
