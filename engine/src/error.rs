//! The one error type of the engine.

/// Everything that can go wrong in the engine, as a message a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two shapes that must agree do not, or a shape is not what an operation takes.
    #[error("shape error in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// Tensors of different element types met in one operation.
    #[error("dtype mismatch in {op}: {a:?} vs {b:?}")]
    DType { op: &'static str, a: crate::DType, b: crate::DType },
    /// Tensors on different devices met in one operation.
    #[error("device mismatch in {op}: {a} vs {b}")]
    Device { op: &'static str, a: String, b: String },
    /// A CUDA library could not be loaded, or no CUDA device is usable.
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    /// A call into the CUDA driver or a CUDA library failed.
    #[error("CUDA error in {op}: {msg}")]
    Cuda { op: &'static str, msg: String },
    /// An operation that this device does not implement (yet).
    #[error("{op} is not implemented on {device}")]
    Unsupported { op: &'static str, device: String },
    /// Any other invalid argument.
    #[error("{0}")]
    Invalid(String),
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for a [`Error::Shape`] error.
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
}
