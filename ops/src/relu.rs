//! ReLU.
//!
//! Shapes: `x`, `y`, `dy`, `dx` all of any shape `S`.
//!
//! Forward:  `y = max(x, 0)`
//! Backward: `dx = dy · [y > 0]` (the subgradient at 0 is taken as 0, as PyTorch does).
//!
//! The backward reads the *output* `y` (not `x`): `y > 0` exactly when `x > 0`,
//! and the output is what the CUDA path keeps anyway.

use crate::cuda::Elem;
use crate::{DType, Float, Gradients, Graph, Result, Tensor, Var};

/// Record `y = relu(x)` on the graph.
pub fn relu(g: &mut Graph<'_>, x: Var) -> Result<Var> {
    let y = forward(g.value(x))?;
    Ok(g.push(y, crate::Op::Relu(ReluRecord { x }), &[x]))
}

/// `y = max(x, 0)`.
pub fn forward(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cuda() {
        return forward_cuda(x);
    }
    match x.dtype() {
        DType::F32 => forward_cpu::<f32>(x),
        DType::F64 => forward_cpu::<f64>(x),
        DType::BF16 => Err(crate::bf16_unsupported("relu")),
    }
}

/// `dx = dy · [y > 0]`.
pub fn backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    y.expect_same("relu backward", dy)?;
    if y.device().is_cuda() {
        return backward_cuda(y, dy);
    }
    match y.dtype() {
        DType::F32 => backward_cpu::<f32>(y, dy),
        DType::F64 => backward_cpu::<f64>(y, dy),
        DType::BF16 => Err(crate::bf16_unsupported("relu")),
    }
}

fn forward_cpu<T: Float>(x: &Tensor) -> Result<Tensor> {
    let xs = x.as_slice::<T>()?;
    Tensor::new(x.shape(), xs.iter().map(|&v| if v > T::zero() { v } else { T::zero() }).collect())
}

fn backward_cpu<T: Float>(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (ys, dys) = (y.as_slice::<T>()?, dy.as_slice::<T>()?);
    Tensor::new(y.shape(), ys.iter().zip(dys).map(|(&y, &d)| if y > T::zero() { d } else { T::zero() }).collect())
}

fn forward_cuda(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => forward_cuda_t::<f32>(x),
        DType::F64 => forward_cuda_t::<f64>(x),
        DType::BF16 => crate::cuda::bf16_map("relu_forward_bf16", None, &[x]),
    }
}

fn backward_cuda(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    match y.dtype() {
        DType::F32 => backward_cuda_t::<f32>(y, dy),
        DType::F64 => backward_cuda_t::<f64>(y, dy),
        DType::BF16 => crate::cuda::bf16_map("relu_backward_bf16", None, &[y, dy]),
    }
}

/// `relu_forward` of `ptx/elementwise.cu`: one thread per element.
fn forward_cuda_t<T: Elem>(x: &Tensor) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    let n = crate::cuda::count(x.numel())?;
    let (dev, mut y) = crate::cuda::output_like(x)?;
    let f = crate::cuda::function_for::<T>(&dev, "elementwise.cu", "relu_forward")?;
    let (xv, mut yv) = (x.cuda_buffer()?.view::<T>()?, y.view_mut::<T>()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&xv).arg(&mut yv).arg(&n);
    // SAFETY: relu_forward(const T* x, T* y, unsigned n) touches n elements of each; both hold n.
    unsafe { launch.launch(crate::cuda::grid(&f, n)) }.map_err(crate::cuda::launch_err("relu_forward"))?;
    crate::cuda::like(x, y)
}

/// `relu_backward` of `ptx/elementwise.cu`: one thread per element.
fn backward_cuda_t<T: Elem>(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    let n = crate::cuda::count(y.numel())?;
    let (dev, mut dx) = crate::cuda::output_like(y)?;
    let f = crate::cuda::function_for::<T>(&dev, "elementwise.cu", "relu_backward")?;
    let (yv, dyv, mut dxv) = (y.cuda_buffer()?.view::<T>()?, dy.cuda_buffer()?.view::<T>()?, dx.view_mut::<T>()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&yv).arg(&dyv).arg(&mut dxv).arg(&n);
    // SAFETY: relu_backward(const T* y, const T* dy, T* dx, unsigned n); all hold n (shapes and dtypes checked).
    unsafe { launch.launch(crate::cuda::grid(&f, n)) }.map_err(crate::cuda::launch_err("relu_backward"))?;
    crate::cuda::like(y, dx)
}

/// What ReLU's backward needs: its input node (for the gradient) — the output is the record's own node.
pub struct ReluRecord {
    x: Var,
}

impl ReluRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads only its output (the mask `y > 0`), not its input.
    pub(crate) fn reads(&self, v: Var, out: Var) -> bool {
        v == out
    }

    pub(crate) fn backward(&self, g: &Graph<'_>, out: Var, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(self.x, backward(g.value(out), dy)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{GradCheck, random_params};

    #[test]
    fn forward_clamps_negatives() {
        let x = Tensor::new(&[4], vec![-1.5f32, 0.0, 2.0, -0.1]).unwrap();
        assert_eq!(forward(&x).unwrap().to_f64_vec(), vec![0.0, 0.0, 2.0, 0.0]);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let params = random_params(&[&[2, 3, 4, 5]], 7);
        GradCheck::default()
            .run(&params, |g| {
                let x = g.param(0)?;
                relu(g, x)
            })
            .unwrap();
    }
}
