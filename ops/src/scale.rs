//! Multiplication by a constant (the output scaling of the last layer).
//!
//! Shapes: x, y, dy, dx all `S`. Forward: `y = α·x`. Backward: `dx = α·dy`.

use crate::cuda::Elem;
use crate::{DType, Float, Gradients, Graph, Result, Tensor, Var};

/// Record `y = alpha · x`.
pub fn scale(g: &mut Graph<'_>, x: Var, alpha: f64) -> Result<Var> {
    let y = forward(g.value(x), alpha)?;
    Ok(g.push(y, crate::Op::Scale(ScaleRecord { x, alpha }), &[x]))
}

/// `y = α·x`.
pub fn forward(x: &Tensor, alpha: f64) -> Result<Tensor> {
    if x.device().is_cuda() {
        return forward_cuda(x, alpha);
    }
    match x.dtype() {
        DType::F32 => forward_cpu::<f32>(x, alpha),
        DType::F64 => forward_cpu::<f64>(x, alpha),
        DType::BF16 => Err(crate::bf16_unsupported("scale")),
    }
}

fn forward_cpu<T: Float>(x: &Tensor, alpha: f64) -> Result<Tensor> {
    let a = T::of(alpha);
    Tensor::new(x.shape(), x.as_slice::<T>()?.iter().map(|&v| a * v).collect())
}

fn forward_cuda(x: &Tensor, alpha: f64) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => forward_cuda_t::<f32>(x, alpha as f32),
        DType::F64 => forward_cuda_t::<f64>(x, alpha),
        DType::BF16 => Err(crate::bf16_unsupported("scale")),
    }
}

/// `scale` of `ptx/elementwise.cu`: one thread per element, `y = alpha·x` in T.
fn forward_cuda_t<T: Elem>(x: &Tensor, alpha: T) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    let n = crate::cuda::count(x.numel())?;
    let (dev, mut y) = crate::cuda::output_like(x)?;
    let f = crate::cuda::function_for::<T>(&dev, "elementwise.cu", "scale")?;
    let (xv, mut yv) = (x.cuda_buffer()?.view::<T>()?, y.view_mut::<T>()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&xv).arg(&mut yv).arg(&n).arg(&alpha);
    // SAFETY: scale(const T* x, T* y, unsigned n, T alpha); x and y hold n.
    unsafe { launch.launch(crate::cuda::grid(&f, n)) }.map_err(crate::cuda::launch_err("scale"))?;
    crate::cuda::like(x, y)
}

/// Scale's record: the input node and the constant.
pub struct ScaleRecord {
    x: Var,
    alpha: f64,
}

impl ScaleRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads no value.
    pub(crate) fn reads(&self, _v: Var, _out: Var) -> bool {
        false
    }

    pub(crate) fn backward(&self, _g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(self.x, forward(dy, self.alpha)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{GradCheck, random_params};

    #[test]
    fn scales() {
        let x = Tensor::new(&[3], vec![1.0f32, -2.0, 0.5]).unwrap();
        assert_eq!(forward(&x, 0.125).unwrap().to_f64_vec(), vec![0.125, -0.25, 0.0625]);
    }

    #[test]
    fn gradient() {
        let ps = random_params(&[&[4, 5]], 1);
        GradCheck::default()
            .run(&ps, |g| {
                let x = g.param(0)?;
                scale(g, x, -0.37)
            })
            .unwrap();
    }
}
