//! Elementwise addition (the residual connection).
//!
//! Shapes: a, b, y, dy all `S` (no broadcasting).
//! Forward: `y = a + b`. Backward: `da = dy`, `db = dy`.

use crate::cuda::Elem;
use crate::{DType, Float, Gradients, Graph, Result, Tensor, Var};

/// Record `y = a + b` (same shapes).
pub fn add(g: &mut Graph<'_>, a: Var, b: Var) -> Result<Var> {
    let y = forward(g.value(a), g.value(b))?;
    Ok(g.push(y, crate::Op::Add(AddRecord { a, b }), &[a, b]))
}

/// `y = a + b`.
pub fn forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.expect_same("add", b)?;
    if a.device().is_cuda() {
        return forward_cuda(a, b);
    }
    match a.dtype() {
        DType::F32 => forward_cpu::<f32>(a, b),
        DType::F64 => forward_cpu::<f64>(a, b),
        DType::BF16 => Err(crate::bf16_unsupported("add")),
    }
}

fn forward_cpu<T: Float>(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (av, bv) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
    Tensor::new(a.shape(), av.iter().zip(bv).map(|(&x, &y)| x + y).collect())
}

fn forward_cuda(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match a.dtype() {
        DType::F32 => forward_cuda_t::<f32>(a, b),
        DType::F64 => forward_cuda_t::<f64>(a, b),
        DType::BF16 => crate::cuda::bf16_map("add_bf16", Some("add_bf16_x8"), &[a, b]),
    }
}

/// `add` of `ptx/elementwise.cu`: one thread per element.
fn forward_cuda_t<T: Elem>(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    let n = crate::cuda::count(a.numel())?;
    let (dev, mut y) = crate::cuda::output_like(a)?;
    let f = crate::cuda::function_for::<T>(&dev, "elementwise.cu", "add")?;
    let (av, bv, mut yv) = (a.cuda_buffer()?.view::<T>()?, b.cuda_buffer()?.view::<T>()?, y.view_mut::<T>()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&av).arg(&bv).arg(&mut yv).arg(&n);
    // SAFETY: add(const T* a, const T* b, T* y, unsigned n); all hold n (shapes and dtypes checked).
    unsafe { launch.launch(crate::cuda::grid(&f, n)) }.map_err(crate::cuda::launch_err("add"))?;
    crate::cuda::like(a, y)
}

/// Add's record: its two input nodes.
pub struct AddRecord {
    a: Var,
    b: Var,
}

impl AddRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads no value: the gradient passes through.
    pub(crate) fn reads(&self, _v: Var, _out: Var) -> bool {
        false
    }

    /// `da = dy`, `db = dy`: `dy` itself goes to `a`, and a copy to `b` only when both need
    /// one (one device copy per residual add, not two). They must be separate buffers: a
    /// later rule may add into one in place while the other is still to be read.
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: Tensor, grads: &mut Gradients) -> Result<()> {
        let (need_a, need_b) = (g.requires_grad(self.a), g.requires_grad(self.b));
        match (need_a, need_b) {
            (true, true) => {
                grads.accumulate(self.b, dy.try_clone()?)?;
                grads.accumulate(self.a, dy)
            }
            (true, false) => grads.accumulate(self.a, dy),
            (false, true) => grads.accumulate(self.b, dy),
            (false, false) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{GradCheck, random_params};

    #[test]
    fn adds_and_rejects_mismatched_shapes() {
        let ps = random_params(&[&[2, 3], &[2, 3], &[3, 2]], 1);
        let y = forward(&ps[0], &ps[1]).unwrap().to_f64_vec();
        let (a, b) = (ps[0].to_f64_vec(), ps[1].to_f64_vec());
        assert!(y.iter().enumerate().all(|(i, v)| *v == a[i] + b[i]));
        assert!(forward(&ps[0], &ps[2]).is_err());
    }

    #[test]
    fn gradient() {
        let ps = random_params(&[&[2, 3, 4], &[2, 3, 4]], 2);
        GradCheck::default()
            .run(&ps, |g| {
                let (a, b) = (g.param(0)?, g.param(1)?);
                add(g, a, b)
            })
            .unwrap();
    }

    /// One side a constant (no gradient): the rule hands `dy` to the other side alone, on
    /// either side.
    #[test]
    fn gradient_with_one_constant_side() {
        let ps = random_params(&[&[2, 3]], 4);
        let c = random_params(&[&[2, 3]], 5).remove(0);
        for constant_first in [false, true] {
            GradCheck::default()
                .run(&ps, |g| {
                    let (p, k) = (g.param(0)?, g.input(c.clone()));
                    if constant_first { add(g, k, p) } else { add(g, p, k) }
                })
                .unwrap();
        }
    }

    #[test]
    fn gradient_of_x_plus_x_is_doubled() {
        let ps = random_params(&[&[5]], 3);
        GradCheck::default()
            .run(&ps, |g| {
                let a = g.param(0)?;
                add(g, a, a)
            })
            .unwrap();
    }
}
