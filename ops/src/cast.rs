//! Element-type conversion (PyTorch's `x.to(dtype)`): the seam of mixed precision, where
//! f32 parameters become bf16 copies for the convolutions and bf16 activations become f32
//! again before the linear layer.
//!
//! Shapes: x and y the same. Forward: `y = round(x)` in the target type (f32 → bf16:
//! nearest, ties to even; f64 → f32: IEEE rounding; widening is exact).
//! Backward: `dx = dy` converted back to x's type (the conversion is the identity on the
//! values it can represent, so its derivative is 1).
//!
//! On the GPU: f32 ↔ bf16 with `f32_to_bf16` / `bf16_to_f32` of `ptx/bf16.cu`. On the CPU:
//! every pair (bf16 values held as bit patterns, rounded by the `half` crate).

use crate::{DType, Gradients, Graph, Result, Tensor, Var};
use engine::Error;

/// Record `y = x` converted to `dtype`.
pub fn cast(g: &mut Graph<'_>, x: Var, dtype: DType) -> Result<Var> {
    let xt = g.value(x);
    let from = xt.dtype();
    let y = forward(xt, dtype)?;
    Ok(g.push(y, crate::Op::Cast(CastRecord { x, from }), &[x]))
}

/// `x` converted to `dtype` (a copy even when the type is already `dtype`).
pub fn forward(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if !x.device().is_cuda() || x.dtype() == dtype {
        return Ok(x.to_dtype(dtype));
    }
    let kernel = match (x.dtype(), dtype) {
        (DType::F32, DType::BF16) => "f32_to_bf16",
        (DType::BF16, DType::F32) => "bf16_to_f32",
        (a, b) => return Err(Error::Unsupported { op: if a == DType::F64 || b == DType::F64 { "cast between f64 and another type" } else { "cast" }, device: x.device().to_string() }),
    };
    cast_cuda(x, dtype, kernel)
}

/// One thread per element: `kernel(const src* x, dst* y, unsigned n)`, the elements passed
/// as their bit patterns (`u32` for f32, `u16` for bf16; the kernel knows the types).
fn cast_cuda(x: &Tensor, dtype: DType, kernel: &'static str) -> Result<Tensor> {
    match dtype {
        DType::BF16 => launch_cast::<u32, u16>(x, dtype, kernel),
        _ => launch_cast::<u16, u32>(x, dtype, kernel),
    }
}

fn launch_cast<I: cudarc::driver::DeviceRepr, O: cudarc::driver::DeviceRepr>(x: &Tensor, dtype: DType, kernel: &'static str) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    let xb = x.cuda_buffer()?;
    let dev = xb.dev().clone();
    let n = crate::cuda::count(x.numel())?;
    let mut y = dev.alloc_dtype(x.numel(), dtype)?;
    let f = crate::cuda::function(&dev, "bf16.cu", kernel)?;
    let (xv, mut yv) = (xb.view_bits::<I>()?, y.view_bits_mut::<O>()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&xv).arg(&mut yv).arg(&n);
    // SAFETY: f32_to_bf16 / bf16_to_f32 (const src* x, dst* y, unsigned n); x and y hold n
    // elements of the sizes the views checked.
    unsafe { launch.launch(crate::cuda::grid(&f, n)) }.map_err(crate::cuda::launch_err(kernel))?;
    crate::cuda::like(x, y)
}

/// Cast's record: the input node and its type.
pub struct CastRecord {
    x: Var,
    from: DType,
}

impl CastRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads no value (the source dtype is kept in the record).
    pub(crate) fn reads(&self, _v: Var, _out: Var) -> bool {
        false
    }

    pub(crate) fn backward(&self, _g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(self.x, forward(dy, self.from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn f32_to_bf16_rounds_to_nearest_even_and_widening_is_exact() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1).
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6.
        let x = Tensor::new(&[4], vec![1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5, 1e-3]).unwrap();
        let y = forward(&x, DType::BF16).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let back = forward(&y, DType::F32).unwrap().to_f32_vec();
        assert_eq!(back[0], 1.0);
        assert_eq!(back[1], 1.0 + 1.0 / 64.0);
        assert_eq!(back[2], -2.5, "representable values are kept");
        assert!((back[3] - 1e-3).abs() < 1e-3 / 128.0, "8 significant bits: {}", back[3]);
    }

    #[test]
    fn backward_converts_the_gradient_back() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let params = vec![Tensor::randn(&[3, 4], DType::F32, 1.0, &mut rng)];
        let mut g = Graph::new(&params);
        let p = g.param(0).unwrap();
        let y = cast(&mut g, p, DType::F64).unwrap();
        assert_eq!(g.value(y).dtype(), DType::F64);
        let seed = Tensor::randn(&[3, 4], DType::F64, 1.0, &mut rng);
        let grads = g.backward_with(y, seed.clone()).unwrap().into_param_grads(1).unwrap();
        let gx = grads[0].as_ref().unwrap();
        assert_eq!(gx.dtype(), DType::F32);
        assert_eq!(gx.to_f32_vec(), seed.to_f32_vec());
    }
}
