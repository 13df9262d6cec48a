//! The store's error, with kinds callers branch on (never on messages).

/// What went wrong, as a caller decides what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Conflict,
    InvalidInput,
    /// The backend cannot be reached or is overloaded; retrying later may succeed.
    Unavailable,
    /// Stored data cannot be read back; retrying will not help.
    Corrupt,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            StoreError::InvalidInput(_) => ErrorKind::InvalidInput,
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Corrupt(_) => ErrorKind::Corrupt,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }
}

impl From<mesh_types::Error> for StoreError {
    fn from(e: mesh_types::Error) -> Self {
        StoreError::InvalidInput(e.to_string())
    }
}
