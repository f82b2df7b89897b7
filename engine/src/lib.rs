//! The engine: devices, tensors, a tape-based autograd and the errors they raise.
//!
//! It knows nothing about convolutions or ResNets: operations live in the `ops`
//! crate, which records them on a [`Tape`] and supplies their backward rules
//! through the [`Backward`] trait.

pub mod cuda;
pub mod cudnn;
pub mod cudnn_graph;
pub mod device;
pub mod download;
pub mod error;
pub mod float;
pub mod kernel_cache;
pub mod nvrtc;
pub mod pool;
pub mod profile;
pub mod tape;
pub mod tensor;

pub use device::Device;
pub use error::{Error, Result};
pub use float::{Float, gemm};
pub use tape::{Backward, Gradients, Tape, Var};
pub use tensor::{DType, Layout, Tensor};
