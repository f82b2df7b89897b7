//! Fully connected layer (PyTorch's `nn.Linear` layout).
//!
//! Shapes: x `[N, I]`, w `[O, I]`, b `[O]`, y `[N, O]`.
//! Forward: `y = x·wᵀ + b`, i.e. `y[n,o] = Σ_i x[n,i]·w[o,i] + b[o]`.
//! Backward: `dx = dy·w` `[N, I]`, `dw = dyᵀ·x` `[O, I]`, `db = Σ_n dy[n, :]` `[O]`.

use crate::{DType, Float, Gradients, Graph, Result, Tensor, Var};
use crate::cuda::Elem;
use cudarc::driver::{CudaView, CudaViewMut};
use engine::{Error, gemm};

/// Record `y = x wᵀ + b`: x `[N, I]`, w `[O, I]`, b `[O]` -> y `[N, O]` (PyTorch's nn.Linear layout).
pub fn linear(g: &mut Graph<'_>, x: Var, w: Var, b: Var) -> Result<Var> {
    let y = forward(g.value(x), g.value(w), g.value(b))?;
    Ok(g.push(y, crate::Op::Linear(LinearRecord { x, w, b }), &[x, w, b]))
}

fn dims(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<(usize, usize, usize)> {
    const OP: &str = "linear";
    x.expect_rank(OP, 2, "input x [N, I]")?;
    w.expect_rank(OP, 2, "weight w [O, I]")?;
    x.expect_same_kind(OP, w)?;
    x.expect_same_kind(OP, b)?;
    let (n, i, o) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    if w.shape()[1] != i {
        return Err(Error::shape(OP, format!("input {:?} has {i} features, weight {:?} expects {}", x.shape(), w.shape(), w.shape()[1])));
    }
    if b.shape() != [o] {
        return Err(Error::shape(OP, format!("bias {:?} should be [{o}]", b.shape())));
    }
    Ok((n, i, o))
}

/// `y = x·wᵀ + b`.
pub fn forward(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let d = dims(x, w, b)?;
    if x.device().is_cuda() {
        return forward_cuda(x, w, b, d);
    }
    match x.dtype() {
        DType::F32 => forward_cpu::<f32>(x, w, b, d),
        DType::F64 => forward_cpu::<f64>(x, w, b, d),
        DType::BF16 => Err(crate::bf16_unsupported("linear")),
    }
}

/// `(dx, dw, db)`.
pub fn backward(x: &Tensor, w: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let d = dims(x, w, b)?;
    if dy.shape() != [d.0, d.2] {
        return Err(Error::shape("linear backward", format!("dy {:?} should be [{}, {}]", dy.shape(), d.0, d.2)));
    }
    x.expect_same_kind("linear backward", dy)?;
    if x.device().is_cuda() {
        return backward_cuda(x, w, dy, d);
    }
    match x.dtype() {
        DType::F32 => backward_cpu::<f32>(x, w, dy, d),
        DType::F64 => backward_cpu::<f64>(x, w, dy, d),
        DType::BF16 => Err(crate::bf16_unsupported("linear")),
    }
}

fn forward_cpu<T: Float>(x: &Tensor, w: &Tensor, b: &Tensor, (n, i, o): (usize, usize, usize)) -> Result<Tensor> {
    let bs = b.as_slice::<T>()?;
    // Start from the bias in every row, then y += x · wᵀ.
    let mut y: Vec<T> = (0..n).flat_map(|_| bs.iter().copied()).collect();
    gemm(n, i, o, T::one(), x.as_slice::<T>()?, false, w.as_slice::<T>()?, true, T::one(), &mut y);
    Tensor::new(&[n, o], y)
}

fn backward_cpu<T: Float>(x: &Tensor, w: &Tensor, dy: &Tensor, (n, i, o): (usize, usize, usize)) -> Result<(Tensor, Tensor, Tensor)> {
    let (xs, ws, dys) = (x.as_slice::<T>()?, w.as_slice::<T>()?, dy.as_slice::<T>()?);
    let mut dx = vec![T::zero(); n * i];
    gemm(n, o, i, T::one(), dys, false, ws, false, T::zero(), &mut dx);
    let mut dw = vec![T::zero(); o * i];
    gemm(o, n, i, T::one(), dys, true, xs, false, T::zero(), &mut dw);
    let mut db = vec![T::zero(); o];
    for row in dys.chunks_exact(o) {
        db.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
    }
    Ok((Tensor::new(&[n, i], dx)?, Tensor::new(&[o, i], dw)?, Tensor::new(&[o], db)?))
}

// cuBLAS is column-major: a row-major matrix M[r×c] is, to cuBLAS, the column-major
// Mᵀ[c×r] with leading dimension c. Each product below is written in that form.

/// One cuBLAS GEMM (SGEMM for f32, DGEMM for f64), column-major:
/// `C[m×n] = op(A)·op(B) + beta·C` (`op` = transpose if `t`).
#[allow(clippy::too_many_arguments)]
fn gemm_cuda<T: Elem>(
    dev: &engine::cuda::CudaDevice,
    (m, n, k): (usize, usize, usize),
    a: &CudaView<'_, T>, ta: bool, lda: usize,
    b: &CudaView<'_, T>, tb: bool, ldb: usize,
    beta: T,
    c: &mut CudaViewMut<'_, T>, ldc: usize,
) -> Result<()>
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    use cudarc::cublas::{Gemm, GemmConfig, sys::cublasOperation_t as Op};
    let int = |v: usize| i32::try_from(v).map_err(|_| Error::Invalid(format!("linear: dimension {v} too large for cuBLAS")));
    let op = |t: bool| if t { Op::CUBLAS_OP_T } else { Op::CUBLAS_OP_N };
    let cfg = GemmConfig {
        transa: op(ta),
        transb: op(tb),
        m: int(m)?,
        n: int(n)?,
        k: int(k)?,
        alpha: T::one(),
        lda: int(lda)?,
        ldb: int(ldb)?,
        beta,
        ldc: int(ldc)?,
    };
    dev.trace_launch("cuBLAS gemm")?;
    // SAFETY: the buffers hold the matrices the sizes and leading dimensions describe (checked by `dims`).
    unsafe { dev.blas().gemm(cfg, a, b, c) }.map_err(|e| Error::Cuda { op: "cublas gemm", msg: e.to_string() })
}

fn forward_cuda(x: &Tensor, w: &Tensor, b: &Tensor, d: (usize, usize, usize)) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => forward_cuda_t::<f32>(x, w, b, d),
        DType::F64 => forward_cuda_t::<f64>(x, w, b, d),
        DType::BF16 => Err(crate::bf16_unsupported("linear")),
    }
}

fn backward_cuda(x: &Tensor, w: &Tensor, dy: &Tensor, d: (usize, usize, usize)) -> Result<(Tensor, Tensor, Tensor)> {
    match x.dtype() {
        DType::F32 => backward_cuda_t::<f32>(x, w, dy, d),
        DType::F64 => backward_cuda_t::<f64>(x, w, dy, d),
        DType::BF16 => Err(crate::bf16_unsupported("linear")),
    }
}

/// `yᵀ[O×N] = w·xᵀ` (cuBLAS), then `yᵀ += b·1ᵀ` (a rank-1 GEMM adds the bias to every row).
fn forward_cuda_t<T: Elem>(x: &Tensor, w: &Tensor, b: &Tensor, (n, i, o): (usize, usize, usize)) -> Result<Tensor>
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let dev = x.cuda_buffer()?.dev().clone();
    let mut y = dev.alloc_dtype(n * o, T::DTYPE)?;
    let ones = dev.ones(n, T::DTYPE)?;
    let (xb, wb, bb) = (x.cuda_buffer()?.view::<T>()?, w.cuda_buffer()?.view::<T>()?, b.cuda_buffer()?.view::<T>()?);
    let mut yv = y.view_mut::<T>()?;
    // w row-major [O×I] = column-major [I×O] (ld I), transposed; x row-major [N×I] = column-major [I×N] (ld I).
    gemm_cuda(&dev, (o, n, i), &wb, true, i, &xb, false, i, T::zero(), &mut yv, o)?;
    // b as [O×1] (ld O) times ones [1×N] (ld 1), added.
    gemm_cuda(&dev, (o, n, 1), &bb, false, o, &ones.view::<T>()?, false, 1, T::one(), &mut yv, o)?;
    Tensor::from_cuda(&[n, o], y)
}

/// `dxᵀ[I×N] = wᵀ·dyᵀ`, `dwᵀ[I×O] = xᵀ·dy`, `db[O] = dyᵀ·1` (cuBLAS).
fn backward_cuda_t<T: Elem>(x: &Tensor, w: &Tensor, dy: &Tensor, (n, i, o): (usize, usize, usize)) -> Result<(Tensor, Tensor, Tensor)>
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let dev = x.cuda_buffer()?.dev().clone();
    let (xb, wb, dyb) = (x.cuda_buffer()?.view::<T>()?, w.cuda_buffer()?.view::<T>()?, dy.cuda_buffer()?.view::<T>()?);
    // Every output is written by a GEMM with beta = 0, so the buffers need no clearing.
    let (mut dx, mut dw, mut db) = (dev.alloc_dtype(n * i, T::DTYPE)?, dev.alloc_dtype(o * i, T::DTYPE)?, dev.alloc_dtype(o, T::DTYPE)?);
    let ones = dev.ones(n, T::DTYPE)?;
    gemm_cuda(&dev, (i, n, o), &wb, false, i, &dyb, false, o, T::zero(), &mut dx.view_mut::<T>()?, i)?;
    gemm_cuda(&dev, (i, o, n), &xb, false, i, &dyb, true, o, T::zero(), &mut dw.view_mut::<T>()?, i)?;
    gemm_cuda(&dev, (o, 1, n), &dyb, false, o, &ones.view::<T>()?, false, n, T::zero(), &mut db.view_mut::<T>()?, o)?;
    Ok((Tensor::from_cuda(&[n, i], dx)?, Tensor::from_cuda(&[o, i], dw)?, Tensor::from_cuda(&[o], db)?))
}

/// Linear's record: its three input nodes.
pub struct LinearRecord {
    x: Var,
    w: Var,
    b: Var,
}

impl LinearRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads its input, weight and bias.
    pub(crate) fn reads(&self, v: Var, _out: Var) -> bool {
        v == self.x || v == self.w || v == self.b
    }

    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        let (dx, dw, db) = backward(g.value(self.x), g.value(self.w), g.value(self.b), dy)?;
        for (v, t) in [(self.x, dx), (self.w, dw), (self.b, db)] {
            if g.requires_grad(v) {
                grads.accumulate(v, t)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// Tolerances: f64 dot products of a few O(1) terms round to ~1e-15; 1e-12 leaves room.
mod tests {
    use super::*;
    use crate::gradcheck::{GradCheck, random_params};

    #[test]
    fn forward_matches_the_definition() {
        let ps = random_params(&[&[3, 4], &[5, 4], &[5]], 1);
        let y = forward(&ps[0], &ps[1], &ps[2]).unwrap().to_f64_vec();
        let (x, w, b) = (ps[0].to_f64_vec(), ps[1].to_f64_vec(), ps[2].to_f64_vec());
        for n in 0..3 {
            for o in 0..5 {
                let want: f64 = (0..4).map(|i| x[n * 4 + i] * w[o * 4 + i]).sum::<f64>() + b[o];
                assert!((y[n * 5 + o] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn f32_agrees_with_f64() {
        let ps = random_params(&[&[16, 512], &[10, 512], &[10], &[16, 10]], 5);
        let p32: Vec<Tensor> = ps.iter().map(|t| t.to_dtype(DType::F32)).collect();
        let y64 = forward(&ps[0], &ps[1], &ps[2]).unwrap();
        let y32 = forward(&p32[0], &p32[1], &p32[2]).unwrap();
        // 512-term dot products of O(1) products: f32 error ~ sqrt(512)·6e-8·sqrt(512) ≈ 3e-5.
        assert!(y32.max_abs_diff(&y64).unwrap() < 2e-4);
        let g64 = backward(&ps[0], &ps[1], &ps[2], &ps[3]).unwrap();
        let g32 = backward(&p32[0], &p32[1], &p32[2], &p32[3]).unwrap();
        // dx sums 10 terms, dw 16, db 16: all well inside 1e-5.
        for (a, b) in [(&g32.0, &g64.0), (&g32.1, &g64.1), (&g32.2, &g64.2)] {
            assert!(a.max_abs_diff(b).unwrap() < 1e-5);
        }
    }

    #[test]
    fn gradient() {
        let ps = random_params(&[&[3, 6], &[4, 6], &[4]], 2);
        GradCheck::default()
            .run(&ps, |g| {
                let (x, w, b) = (g.param(0)?, g.param(1)?, g.param(2)?);
                linear(g, x, w, b)
            })
            .unwrap();
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ps = random_params(&[&[3, 6], &[4, 5], &[4], &[3]], 3);
        assert!(forward(&ps[0], &ps[1], &ps[2]).is_err());
        let w = random_params(&[&[4, 6]], 4).remove(0);
        assert!(forward(&ps[0], &w, &ps[3]).is_err());
    }
}
