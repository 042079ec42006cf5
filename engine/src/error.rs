use thiserror::Error;

/// Everything that can go wrong in the engine, as a value: the engine never panics on input.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but is not what it claims to be (truncated, corrupt, wrong shape).
    #[error("{0}")]
    Format(String),
    /// Valid input that ditto does not support (an architecture, a tensor type).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Bad arguments from the caller (an empty prompt, a prompt longer than the context).
    #[error("{0}")]
    Input(String),
    /// No device, no driver, or a device without the limits a tensor needs.
    #[error("device: {0}")]
    Device(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
