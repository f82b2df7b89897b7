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
//!
//! # Training a network, in the smallest example
//!
//! The ResNet's training step (`model/src/train.rs`) is this loop with more ops: make a
//! [`Graph`] over the parameters, record the forward pass, walk it backward for the
//! parameters' gradients, hand them to [`sgd::step`]. Here a two-layer perceptron, `[N, 2]
//! -> linear 16 -> ReLU -> linear 2`, learns whether a point lies inside the unit circle
//! (the CPU; on a GPU the same code runs with the tensors moved there by `to_device`):
//!
//! ```
//! use ops::{DType, Graph, Tensor};
//! use rand::{Rng, SeedableRng};
//!
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! // Parameters in PyTorch's nn.Linear layout: w [out, in], b [out].
//! let mut params = vec![
//!     Tensor::randn(&[16, 2], DType::F32, 0.7, &mut rng),
//!     Tensor::randn(&[16], DType::F32, 0.1, &mut rng),
//!     Tensor::randn(&[2, 16], DType::F32, 0.25, &mut rng),
//!     Tensor::randn(&[2], DType::F32, 0.1, &mut rng),
//! ];
//! // 256 points in [-1.5, 1.5]^2, labelled 1 inside the unit circle.
//! let points: Vec<f32> = (0..512).map(|_| rng.gen_range(-1.5..1.5)).collect();
//! let labels: Vec<u32> = points.chunks(2).map(|p| u32::from(p[0] * p[0] + p[1] * p[1] < 1.0)).collect();
//! let x = Tensor::new(&[256, 2], points)?;
//!
//! let sgd = ops::sgd::Sgd { lr: 0.2, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: true };
//! let mut state = ops::sgd::SgdState::default();
//! let mut losses = Vec::new();
//! for _ in 0..300 {
//!     // Forward: each op computes its output now and records what its backward needs.
//!     let mut g = Graph::new(&params);
//!     let input = g.input(x.clone());
//!     let (w1, b1, w2, b2) = (g.param(0)?, g.param(1)?, g.param(2)?, g.param(3)?);
//!     let hidden = ops::linear::linear(&mut g, input, w1, b1)?;
//!     let hidden = ops::relu::relu(&mut g, hidden)?;
//!     let logits = ops::linear::linear(&mut g, hidden, w2, b2)?;
//!     let loss = ops::cross_entropy::softmax_cross_entropy(&mut g, logits, &labels, 0.0)?;
//!     losses.push(g.value(loss).scalar()?);
//!     // Backward: one walk over the tape, in reverse; then the update.
//!     let grads = g.backward(loss)?.into_param_grads(params.len())?;
//!     ops::sgd::step(&mut params, &grads, &mut state, &sgd)?;
//! }
//! // The loss starts near ln 2 (a coin toss) and falls well below it.
//! assert!(losses[0] > 0.5 && losses[299] < 0.25 * losses[0], "{} -> {}", losses[0], losses[299]);
//! # Ok::<(), ops::Error>(())
//! ```

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
