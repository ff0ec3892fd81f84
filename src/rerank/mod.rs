//! The reranking domain, free of I/O and of any inference engine: a request validated
//! against the serving model's schema ([`input`]) and the greedy decoding pass over any
//! step model ([`decode`]). The server, the tract runtime and offline evaluation all build
//! their inputs here, so a logged request and a served one map to the model identically.

pub mod decode;
pub mod input;
pub mod math;
pub mod rules;
pub mod synthetic;

pub use decode::{greedy, greedy_with, DecodeError, Pick, StepModel};
pub use input::{vocab_id, Feed, InputBuilder, InvalidField, RerankInput};
pub use rules::{Constraints, GroupCap, Rules};
