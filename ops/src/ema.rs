//! Exponential moving average of a tensor, in place: the update of an averaged copy of the
//! weights (`model::ema`; D. Page, "How to Train Your ResNet 8: Bag of Tricks", myrtle.ai,
//! 2019, averages the whole `state_dict` this way).
//!
//! Shapes: `avg` and `x` the same shape `S`. For every element, with `ρ` the momentum:
//!
//! ```text
//! avg = ρ·avg + (1 − ρ)·x
//! ```
//!
//! computed in the tensors' type as `keep·avg + take·x` with `keep = ρ` and `take = 1 − ρ`
//! (`1 − ρ` in f64, then each rounded to the type), each product and the sum rounded once:
//! PyTorch's `ema *= rho; ema += (1 - rho) * x` on f32 tensors rounds the same three times.
//! The CUDA kernel (`ema_update` of `ptx/elementwise.cu`) writes it with round-to-nearest
//! intrinsics, so it cannot be contracted to a fused multiply-add: both give the same bits.
//!
//! Not differentiated: it runs after the optimizer's update, outside any tape.

use crate::cuda::Elem;
use crate::{DType, Float, Result, Tensor};
use engine::Error;

/// `avg = ρ·avg + (1 − ρ)·x`, elementwise, in place. `avg` and `x` must agree in shape,
/// layout, dtype (f32 or f64) and device, and `0 ≤ ρ ≤ 1`. On error `avg` is unchanged.
pub fn update(avg: &mut Tensor, x: &Tensor, rho: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&rho) {
        return Err(Error::Invalid(format!("ema: the momentum must be in [0, 1], got {rho}")));
    }
    avg.expect_same("ema", x)?;
    let take = 1.0 - rho;
    match (avg.dtype(), avg.device().is_cuda()) {
        (DType::BF16, _) => Err(crate::bf16_unsupported("ema")),
        (DType::F32, false) => update_cpu::<f32>(avg, x, rho, take),
        (DType::F64, false) => update_cpu::<f64>(avg, x, rho, take),
        (DType::F32, true) => update_cuda::<f32>(avg, x, rho as f32, take as f32),
        (DType::F64, true) => update_cuda::<f64>(avg, x, rho, take),
    }
}

/// The CPU reference: `keep·a + take·x` in T, left to right.
fn update_cpu<T: Float>(avg: &mut Tensor, x: &Tensor, keep: f64, take: f64) -> Result<()> {
    let (keep, take) = (T::of(keep), T::of(take));
    let xs = x.as_slice::<T>()?;
    for (a, &v) in avg.as_mut_slice::<T>()?.iter_mut().zip(xs) {
        *a = keep * *a + take * v;
    }
    Ok(())
}

/// `ema_update` of `ptx/elementwise.cu`: one thread per element, grid-stride.
fn update_cuda<T: Elem>(avg: &mut Tensor, x: &Tensor, keep: T, take: T) -> Result<()> {
    use cudarc::driver::PushKernelArg;
    let n = crate::cuda::count(avg.numel())?;
    let xb = x.cuda_buffer()?;
    let dev = xb.dev().clone();
    let f = crate::cuda::function_for::<T>(&dev, "elementwise.cu", "ema_update")?;
    let xv = xb.view::<T>()?;
    let mut av = avg.cuda_buffer_mut()?.view_mut::<T>()?;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&mut av).arg(&xv).arg(&n).arg(&keep).arg(&take);
    // SAFETY: ema_update(T* avg, const T* x, unsigned n, T keep, T take); both hold n values of T
    // (shapes and dtypes checked above); any grid is correct (grid-stride loop).
    unsafe { launch.launch(crate::cuda::grid(&f, n)) }.map_err(crate::cuda::launch_err("ema_update"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Against the formula evaluated independently in f64 for f64 tensors (the same expression,
    /// so exact), and in f32 within one rounding of each of the three operations for f32 ones;
    /// ρ = 0 copies x and ρ = 1 keeps avg exactly.
    #[test]
    fn averages_elementwise() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for dtype in [DType::F32, DType::F64] {
            let a0 = Tensor::randn(&[3, 5, 2], dtype, 1.0, &mut rng);
            let x = Tensor::randn(&[3, 5, 2], dtype, 2.0, &mut rng);
            for rho in [0.99f64.powi(5), 0.5, 0.0, 1.0] {
                let mut a = a0.clone();
                update(&mut a, &x, rho).unwrap();
                let want: Vec<f64> = a0.to_f64_vec().iter().zip(x.to_f64_vec()).map(|(p, q)| rho * p + (1.0 - rho) * q).collect();
                // f32: three roundings of values at most |avg| + |x|, so 2^-23 of that bounds each.
                for (i, (got, w)) in a.to_f64_vec().iter().zip(&want).enumerate() {
                    let tol = if dtype == DType::F64 { 0.0 } else { 3.0 * f32::EPSILON as f64 * (a0.to_f64_vec()[i].abs() + x.to_f64_vec()[i].abs()) };
                    assert!((got - w).abs() <= tol, "{dtype:?} rho {rho} element {i}: {got} vs {w}");
                }
                if rho == 0.0 {
                    assert_eq!(a.to_f64_vec(), x.to_f64_vec());
                }
                if rho == 1.0 {
                    assert_eq!(a.to_f64_vec(), a0.to_f64_vec());
                }
            }
        }
    }

    /// Mismatched shapes, dtypes or a momentum outside [0, 1] are refused and leave avg as it was.
    #[test]
    fn refuses_bad_input_and_leaves_the_average_unchanged() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let a0 = Tensor::randn(&[4, 3], DType::F32, 1.0, &mut rng);
        let mut a = a0.clone();
        let e = update(&mut a, &Tensor::randn(&[3, 4], DType::F32, 1.0, &mut rng), 0.9).unwrap_err().to_string();
        assert!(e.contains("ema"), "{e}");
        assert!(update(&mut a, &Tensor::randn(&[4, 3], DType::F64, 1.0, &mut rng), 0.9).is_err());
        for rho in [-0.1, 1.5, f64::NAN] {
            let e = update(&mut a, &Tensor::randn(&[4, 3], DType::F32, 1.0, &mut rng), rho).unwrap_err().to_string();
            assert!(e.contains("momentum"), "{e}");
        }
        assert_eq!(a.to_f64_vec(), a0.to_f64_vec());
    }
}
