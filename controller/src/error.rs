//! The one error type of the controller's operations, and its one mapping
//! to the wire ([`ServiceError::to_rpc`]).

use certfleet_protocol::message::{ErrorKind, RpcError};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A remote party (a CA, a DNS server) failed in a way worth retrying.
    #[error("{0}")]
    Transient(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for ServiceError {
    fn from(e: rusqlite::Error) -> Self {
        ServiceError::Store(StoreError::from(e))
    }
}

impl ServiceError {
    pub fn to_rpc(&self) -> RpcError {
        let kind = match self {
            ServiceError::NotFound { .. } => ErrorKind::NotFound,
            ServiceError::Invalid(_) => ErrorKind::InvalidArgument,
            ServiceError::Conflict(_) => ErrorKind::Conflict,
            ServiceError::Internal(_) | ServiceError::Store(_) => ErrorKind::Internal,
            ServiceError::Transient(_) => ErrorKind::Unavailable,
        };
        let message = match self {
            ServiceError::Store(e) => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                text
            }
            other => other.to_string(),
        };
        RpcError { kind, message }
    }
}

/// An internal error carrying `e`'s text.
pub(crate) fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// What every controller operation returns.
pub(crate) type Result<T> = std::result::Result<T, ServiceError>;

/// Fail the step with [`ServiceError::Internal`] when failpoint `name` (see
/// `certfleet_agent::failpoints`) fires; a no-op in builds without them.
pub(crate) fn failpoint(name: &str) -> Result<()> {
    match certfleet_agent::failpoints::check(name) {
        Some(message) => Err(internal(message)),
        None => Ok(()),
    }
}
