//! The element types the CPU reference runs in (f32 and f64), and a GEMM on them.

use crate::tensor::Storage;
use crate::DType;
use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

/// A floating-point element type a tensor can hold. CPU reference code is written
/// once, generic over `T: Float`, and runs in f32 (training) and f64 (gradient checks).
pub trait Float:
    num_traits::Float + Default + Debug + Display + Sum + AddAssign + SubAssign + MulAssign + Send + Sync + 'static
{
    /// The `DType` tag of this element type.
    const DTYPE: DType;
    /// Convert from f64 (rounding for f32).
    fn of(x: f64) -> Self;
    /// Widen to f64.
    fn f64(self) -> f64;
    #[doc(hidden)]
    fn wrap(data: Vec<Self>) -> Storage;
    #[doc(hidden)]
    fn slice(storage: &Storage) -> Option<&[Self]>;
    #[doc(hidden)]
    fn slice_mut(storage: &mut Storage) -> Option<&mut [Self]>;
    /// `matrixmultiply`'s strided GEMM for this type; see [`gemm`].
    #[allow(clippy::too_many_arguments)]
    #[doc(hidden)]
    unsafe fn raw_gemm(
        m: usize, k: usize, n: usize, alpha: Self,
        a: *const Self, rsa: isize, csa: isize,
        b: *const Self, rsb: isize, csb: isize,
        beta: Self, c: *mut Self, rsc: isize, csc: isize,
    );
}

impl Float for f32 {
    const DTYPE: DType = DType::F32;
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn wrap(data: Vec<Self>) -> Storage {
        Storage::F32(data)
    }
    fn slice(storage: &Storage) -> Option<&[Self]> {
        match storage {
            Storage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(storage: &mut Storage) -> Option<&mut [Self]> {
        match storage {
            Storage::F32(v) => Some(v),
            _ => None,
        }
    }
    unsafe fn raw_gemm(
        m: usize, k: usize, n: usize, alpha: Self,
        a: *const Self, rsa: isize, csa: isize,
        b: *const Self, rsb: isize, csb: isize,
        beta: Self, c: *mut Self, rsc: isize, csc: isize,
    ) {
        unsafe { matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

impl Float for f64 {
    const DTYPE: DType = DType::F64;
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    fn wrap(data: Vec<Self>) -> Storage {
        Storage::F64(data)
    }
    fn slice(storage: &Storage) -> Option<&[Self]> {
        match storage {
            Storage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(storage: &mut Storage) -> Option<&mut [Self]> {
        match storage {
            Storage::F64(v) => Some(v),
            _ => None,
        }
    }
    unsafe fn raw_gemm(
        m: usize, k: usize, n: usize, alpha: Self,
        a: *const Self, rsa: isize, csa: isize,
        b: *const Self, rsb: isize, csb: isize,
        beta: Self, c: *mut Self, rsc: isize, csc: isize,
    ) {
        unsafe { matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

/// Row-major GEMM: `C[m×n] = alpha · op(A)[m×k] · op(B)[k×n] + beta · C`.
///
/// `A` is stored row-major as `m×k`, or as `k×m` when `trans_a` (then `op(A) = Aᵀ`);
/// likewise `B` is `k×n`, or `n×k` when `trans_b`. With `beta == 0` the old `C` is not read.
///
/// # Panics
/// If a slice is shorter than its matrix: that is a bug in the caller, which
/// validates user-facing shapes before it gets here.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    m: usize, k: usize, n: usize, alpha: T,
    a: &[T], trans_a: bool,
    b: &[T], trans_b: bool,
    beta: T, c: &mut [T],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm: slice too short for {m}x{k}x{n}");
    let (rsa, csa) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the lengths are checked above and the strides address only
    // elements inside the m×k, k×n and m×n row-major (or transposed) matrices.
    unsafe { T::raw_gemm(m, k, n, alpha, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain triple loop, the obviously correct reference.
    fn naive(m: usize, k: usize, n: usize, a: &[f64], ta: bool, b: &[f64], tb: bool) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn gemm_matches_naive_for_every_transpose() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 37 % 11) as f64) - 5.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 13 % 7) as f64) * 0.5 - 1.0).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let mut c = vec![1.0; m * n];
                gemm(m, k, n, 2.0, &a, ta, &b, tb, 0.5, &mut c);
                let want = naive(m, k, n, &a, ta, &b, tb);
                for i in 0..m * n {
                    assert!((c[i] - (2.0 * want[i] + 0.5)).abs() < 1e-12, "ta={ta} tb={tb} i={i}");
                }
            }
        }
    }
}
