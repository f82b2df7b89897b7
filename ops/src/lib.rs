//! Every differentiable operation the ResNet needs, one file per op.
//!
//! Each op file has the same shape:
//! 1. a doc comment stating the forward and backward math with named shapes;
//! 2. a graph-level function (`relu(g, x)`) that computes the output and records
//!    the op on the [`Graph`];
//! 3. tensor-level `forward` / `backward` functions that dispatch on dtype (and,
//!    with the CUDA backend, on device);
//! 4. the CPU reference: plain loops, generic over `T: Float` (f32 and f64);
//! 5. the op's record type, whose `backward` is called from the one `match`
//!    in [`record`].
//!
//! The optimizer update ([`sgd`]), the moving average of the weights ([`ema`]) and the
//! convolution weights' compute copies ([`weight_copy`]) are not differentiated and sit
//! beside the ops; so does the choice of cuDNN's algorithms for each convolution shape
//! ([`conv2d_plan`]), which [`conv2d`] runs.

mod cuda;
pub mod gradcheck;
pub mod kernels;
pub mod record;

pub mod add;
pub mod augment;
pub mod batch_norm;
pub mod batch_norm_relu;
pub mod cast;
pub mod conv2d;
pub mod conv2d_plan;
mod conv2d_c3;
pub mod cross_entropy;
pub mod ema;
pub mod graph_step;
pub mod layout;
pub mod linear;
pub mod max_pool;
pub mod metrics;
pub mod relu;
pub mod reshape;
pub mod scale;
pub mod sgd;
pub mod weight_copy;

pub use engine::{DType, Device, Error, Float, Gradients, Result, Tensor, Var};
pub use record::Op;

/// The error for an operation that has no bf16 implementation (the CPU reference computes
/// in f32 and f64 only; on the GPU, bf16 covers convolution, batch norm, pooling, ReLU and
/// the residual add, and the network casts to f32 before the linear layer).
pub(crate) fn bf16_unsupported(op: &'static str) -> Error {
    Error::Unsupported { op, device: "bf16 tensors (cast to f32 first)".into() }
}

/// The tape specialised to this crate's closed set of operations.
pub type Graph<'p> = engine::Tape<'p, Op>;
