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
    #[error("server is at its limit of {0} requests in flight")]
    Overloaded(usize),
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error(transparent)]
    Decode(#[from] DecodeError<InferenceError>),
    #[error("compute task failed: {0}")]
    Task(String),
}

impl From<ServeError> for Status {
    fn from(err: ServeError) -> Status {
        let code = match &err {
            ServeError::InvalidArgument(_) => Code::InvalidArgument,
            ServeError::Store(StoreError::NoModel) => Code::Unavailable,
            ServeError::Store(StoreError::VersionNotLoaded { .. }) => Code::NotFound,
            ServeError::Overloaded(_) => Code::ResourceExhausted,
            ServeError::DeadlineExceeded => Code::DeadlineExceeded,
            ServeError::Decode(_) | ServeError::Task(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}
