//! The model crate's error type.

/// Everything that can stop a training run, as one clear line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error(transparent)]
    Data(#[from] data::Error),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: std::path::PathBuf, msg: String },
    #[error("plot {path}: {msg}")]
    Plot { path: std::path::PathBuf, msg: String },
    #[error("{0}")]
    Training(String),
    #[error("{0}")]
    Invalid(String),
    /// `--resume` asked for settings other than the checkpoint's (see `run::refuse_other_settings`).
    #[error("{0}")]
    OtherSettings(String),
}

/// The model crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error tagged with the path it concerns.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
