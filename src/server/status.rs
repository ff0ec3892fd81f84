//! The one place where serving errors become gRPC statuses.

use tonic::{Code, Status};

use crate::repository::store::StoreError;
use crate::rerank::decode::DecodeError;
use crate::rerank::InvalidField;
use crate::runtime::InferenceError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    InvalidArgument(#[from] InvalidField),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("server is overloaded: the compute queue would hold this request for {expected_ms} ms, beyond the limit of {limit_ms} ms")]
    QueueFull { expected_ms: u64, limit_ms: u64 },
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The model's scores overflowed. Every version was decoded to finite scores over all
    /// its embedding rows before it could serve, so the request's dense values caused it.
    #[error("features: the model's score of candidate {index} at slot {slot} is not finite: a dense feature value is far outside the range the model was trained on")]
    Overflow { slot: usize, index: usize },
    #[error(transparent)]
    Decode(DecodeError<InferenceError>),
    #[error("compute task failed: {0}")]
    Task(String),
}

impl From<DecodeError<InferenceError>> for ServeError {
    fn from(err: DecodeError<InferenceError>) -> ServeError {
        match err {
            DecodeError::NonFinite { slot, index } => ServeError::Overflow { slot, index },
            other => ServeError::Decode(other),
        }
    }
}

impl ServeError {
    pub fn code(&self) -> Code {
        match self {
            ServeError::InvalidArgument(_) | ServeError::Overflow { .. } => Code::InvalidArgument,
            ServeError::Store(StoreError::NoModel) => Code::Unavailable,
            ServeError::Store(StoreError::VersionNotLoaded { .. }) => Code::NotFound,
            ServeError::QueueFull { .. } => Code::ResourceExhausted,
            ServeError::DeadlineExceeded => Code::DeadlineExceeded,
            ServeError::Decode(_) | ServeError::Task(_) => Code::Internal,
        }
    }

    /// Not the client's doing: a broken model, no model, or a deadline the server missed.
    /// Overload is left to the metrics: a log line per shed request would add to it.
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self.code(),
            Code::Internal | Code::Unavailable | Code::DeadlineExceeded
        )
    }
}

impl From<ServeError> for Status {
    fn from(err: ServeError) -> Status {
        Status::new(err.code(), err.to_string())
    }
}
