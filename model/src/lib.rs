//! The ResNet-9 and its training.
pub mod error;
pub use error::{Error, Result};
