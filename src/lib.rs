//! degre: DeGRe reranking. The online half serves a generator exported to ONNX with one
//! greedy decoding pass per request; see README.md and models/README.md.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod decode;
pub mod model;
pub mod offline;
pub mod rerank;
pub mod server;
pub mod telemetry;
