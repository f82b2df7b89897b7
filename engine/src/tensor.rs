//! `Tensor`: a shape and a buffer of elements on one device.
//!
//! Layout is always contiguous. By default it is row-major ("C order"): for shape
//! `[N, C, H, W]` element `(n, c, h, w)` sits at `((n * C + c) * H + h) * W + w`; a 4-d
//! tensor may instead be channels-last (see [`Layout`]), at `((n * H + h) * W + w) * C + c`.

pub use crate::cuda::CudaBuffer;
use crate::{Device, Error, Float, Result};
use rand::Rng;
use std::sync::Arc;
use rand_distr::{Distribution, StandardNormal};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    /// bfloat16: the top 16 bits of an f32 (the mixed-precision path's activations). Held
    /// as bit patterns; no CPU reference op computes in it (they return an error).
    BF16,
}

/// The elements of a tensor, owned: on the host (f32, f64, or bf16 bit patterns) or on a
/// CUDA device (any of the three).
#[derive(Clone, Debug)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<u16>),
    Cuda(CudaBuffer),
}

/// The accumulation kernels (`a += b`), shared with the ops crate's elementwise kernels.
const ELEMENTWISE_CU: &str = include_str!("../../ptx/elementwise.cu");
const BF16_CU: &str = include_str!("../../ptx/bf16.cu");

/// The memory order of a 4-d tensor whose shape is `[N, C, H, W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Row-major in the shape's order: element `(n, c, h, w)` at `((n·C + c)·H + h)·W + w`.
    #[default]
    Nchw,
    /// "Channels last": element `(n, c, h, w)` at `((n·H + h)·W + w)·C + c`. cuDNN's fastest
    /// tensor-core convolutions read this order. The shape stays `[N, C, H, W]`; only CUDA
    /// ops (and the layout conversion itself) accept such tensors.
    Nhwc,
}

/// A contiguous array with a shape (row-major, or channels-last for 4-d tensors, see [`Layout`]).
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
    layout: Layout,
}

impl Tensor {
    /// A tensor from a shape and its elements; the element count must match the shape.
    pub fn new<T: Float>(shape: &[usize], data: Vec<T>) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::shape(
                "Tensor::new",
                format!("shape {shape:?} holds {numel} elements but {} were given", data.len()),
            ));
        }
        Ok(Tensor { shape: shape.to_vec(), storage: T::wrap(data), layout: Layout::Nchw })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, dtype, 0.0)
    }

    /// A tensor with every element equal to `value`.
    pub fn full(shape: &[usize], dtype: DType, value: f64) -> Tensor {
        let numel = shape.iter().product();
        let storage = match dtype {
            DType::F32 => Storage::F32(vec![value as f32; numel]),
            DType::F64 => Storage::F64(vec![value; numel]),
            DType::BF16 => Storage::BF16(vec![bf16_bits(value); numel]),
        };
        Tensor { shape: shape.to_vec(), storage, layout: Layout::Nchw }
    }

    /// Independent standard-normal elements scaled by `std`.
    pub fn randn(shape: &[usize], dtype: DType, std: f64, rng: &mut impl Rng) -> Tensor {
        let numel: usize = shape.iter().product();
        let values: Vec<f64> =
            (0..numel).map(|_| std * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, rng)).collect();
        Tensor::from_f64_values(shape, dtype, values)
    }

    /// Independent elements uniform in `[lo, hi)`.
    pub fn uniform(shape: &[usize], dtype: DType, lo: f64, hi: f64, rng: &mut impl Rng) -> Tensor {
        let numel: usize = shape.iter().product();
        let values: Vec<f64> = (0..numel).map(|_| rng.random_range(lo..hi)).collect();
        Tensor::from_f64_values(shape, dtype, values)
    }

    fn from_f64_values(shape: &[usize], dtype: DType, values: Vec<f64>) -> Tensor {
        let storage = match dtype {
            DType::F32 => Storage::F32(values.into_iter().map(|v| v as f32).collect()),
            DType::F64 => Storage::F64(values),
            DType::BF16 => Storage::BF16(values.into_iter().map(bf16_bits).collect()),
        };
        Tensor { shape: shape.to_vec(), storage, layout: Layout::Nchw }
    }

    /// The memory order of the elements (see [`Layout`]).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The same elements declared to be in `layout` (no data moves: for buffers an op wrote
    /// in that order). Channels-last needs 4 dimensions.
    pub fn with_layout(mut self, layout: Layout) -> Result<Tensor> {
        if layout == Layout::Nhwc && self.shape.len() != 4 {
            return Err(Error::shape("Tensor::with_layout", format!("channels-last needs [N, C, H, W], got {:?}", self.shape)));
        }
        self.layout = layout;
        Ok(self)
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::BF16(_) => DType::BF16,
            Storage::Cuda(b) => b.dtype(),
        }
    }

    /// The device that holds the elements.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cuda(b) => Device::Cuda(b.dev().clone()),
            _ => Device::Cpu,
        }
    }

    /// A tensor over an existing device buffer of `shape`'s element count.
    pub fn from_cuda(shape: &[usize], buf: CudaBuffer) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != buf.len() {
            return Err(Error::shape("Tensor::from_cuda", format!("shape {shape:?} holds {numel} elements, the buffer {}", buf.len())));
        }
        Ok(Tensor { shape: shape.to_vec(), storage: Storage::Cuda(buf), layout: Layout::Nchw })
    }

    /// The same elements on `device` (a copy, of the same element type and layout).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor { layout: self.layout, ..self.to_device_nchw(device)? })
    }

    fn to_device_nchw(&self, device: &Device) -> Result<Tensor> {
        match (&self.storage, device) {
            (Storage::Cuda(b), Device::Cpu) => match b.dtype() {
                DType::F32 => Tensor::new(&self.shape, b.to_host_f32()?),
                DType::F64 => Tensor::new(&self.shape, b.to_host_f64()?),
                DType::BF16 => Ok(Tensor { shape: self.shape.clone(), storage: Storage::BF16(b.to_host_bf16_bits()?), layout: Layout::Nchw }),
            },
            (Storage::Cuda(b), Device::Cuda(d)) if Arc::ptr_eq(b.dev(), d) => {
                Ok(Tensor { shape: self.shape.clone(), storage: Storage::Cuda(b.try_clone()?), layout: Layout::Nchw })
            }
            (Storage::Cuda(_), Device::Cuda(d)) => self.to_device(&Device::Cpu)?.to_device(&Device::Cuda(d.clone())),
            (_, Device::Cpu) => Ok(self.clone()),
            (Storage::F32(v), Device::Cuda(d)) => Tensor::from_cuda(&self.shape, d.upload_elems(v)?),
            (Storage::F64(v), Device::Cuda(d)) => Tensor::from_cuda(&self.shape, d.upload_elems(v)?),
            (Storage::BF16(v), Device::Cuda(d)) => Tensor::from_cuda(&self.shape, d.upload_bf16_bits(v)?),
        }
    }

    /// A copy with its own storage, as `clone` makes, but a failed device copy (out of
    /// memory) is an error instead of a panic.
    pub fn try_clone(&self) -> Result<Tensor> {
        let storage = match &self.storage {
            Storage::Cuda(b) => Storage::Cuda(b.try_clone()?),
            host => host.clone(),
        };
        Ok(Tensor { shape: self.shape.clone(), storage, layout: self.layout })
    }

    /// The device buffer of a CUDA tensor.
    pub fn cuda_buffer(&self) -> Result<&CudaBuffer> {
        match &self.storage {
            Storage::Cuda(b) => Ok(b),
            _ => Err(Error::Device { op: "Tensor::cuda_buffer", a: "cpu".into(), b: "cuda".into() }),
        }
    }

    /// The device buffer of a CUDA tensor, mutably.
    pub fn cuda_buffer_mut(&mut self) -> Result<&mut CudaBuffer> {
        match &mut self.storage {
            Storage::Cuda(b) => Ok(b),
            _ => Err(Error::Device { op: "Tensor::cuda_buffer_mut", a: "cpu".into(), b: "cuda".into() }),
        }
    }

    /// The underlying storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The elements as a slice of `T`; an error if the dtype is not `T`, or if the tensor is
    /// channels-last (CPU reference code indexes in NCHW order).
    pub fn as_slice<T: Float>(&self) -> Result<&[T]> {
        self.expect_host("Tensor::as_slice")?;
        self.expect_nchw("Tensor::as_slice")?;
        T::slice(&self.storage).ok_or(Error::DType { op: "Tensor::as_slice", a: self.dtype(), b: T::DTYPE })
    }

    /// The elements as a mutable slice of `T`; an error if the dtype is not `T`.
    pub fn as_mut_slice<T: Float>(&mut self) -> Result<&mut [T]> {
        self.expect_host("Tensor::as_mut_slice")?;
        self.expect_nchw("Tensor::as_mut_slice")?;
        let dtype = self.dtype();
        T::slice_mut(&mut self.storage).ok_or(Error::DType { op: "Tensor::as_mut_slice", a: dtype, b: T::DTYPE })
    }

    /// An error unless the elements are in NCHW (row-major) order.
    pub fn expect_nchw(&self, op: &'static str) -> Result<()> {
        match self.layout {
            Layout::Nchw => Ok(()),
            Layout::Nhwc => Err(Error::Unsupported { op, device: format!("channels-last tensors on {} (convert to NCHW first)", self.device()) }),
        }
    }

    /// An error unless the elements are on the host (CPU reference code reads them directly).
    fn expect_host(&self, op: &'static str) -> Result<()> {
        match &self.storage {
            Storage::Cuda(b) => Err(Error::Unsupported { op, device: format!("cuda:{} ({})", b.dev().ordinal(), b.dev().name()) }),
            _ => Ok(()),
        }
    }

    /// A host copy of the elements widened to f64 (for tests, logs and checkpoints).
    /// For a CUDA tensor this waits for the stream and copies; it panics only if the
    /// driver fails the copy (a lost context). Library code uses [`Tensor::to_device`].
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.storage {
            Storage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Storage::F64(v) => v.clone(),
            Storage::BF16(v) => v.iter().map(|&h| bf16_to_f32(h) as f64).collect(),
            Storage::Cuda(b) => b.to_host_f64().unwrap_or_else(|e| panic!("copying a CUDA tensor to the host: {e}")),
        }
    }

    /// A host copy of the elements as f32 (see [`Tensor::to_f64_vec`] for CUDA tensors).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.storage {
            Storage::F32(v) => v.clone(),
            Storage::F64(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::BF16(v) => v.iter().map(|&h| bf16_to_f32(h)).collect(),
            Storage::Cuda(b) => b.to_host_f32().unwrap_or_else(|e| panic!("copying a CUDA tensor to the host: {e}")),
        }
    }

    /// The single element of a one-element tensor, as f64.
    pub fn scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape("Tensor::scalar", format!("shape {:?} is not a scalar", self.shape)));
        }
        let value = match &self.storage {
            Storage::Cuda(b) => b.to_host_f64()?[0],
            _ => self.to_f64_vec()[0],
        };
        Ok(value)
    }

    /// The same elements converted to `dtype`, on the same device (through the host: for
    /// tests and set-up; the differentiable conversion on the GPU is `ops::cast`). Panics
    /// only if a copy to the GPU fails, as `Clone` does.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let host = Tensor { layout: self.layout, ..Tensor::from_f64_values(&self.shape, dtype, self.to_f64_vec()) };
        match self.device() {
            Device::Cpu => host,
            d => host.to_device(&d).unwrap_or_else(|e| panic!("copying a converted tensor back to {d}: {e}")),
        }
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(self, shape: &[usize]) -> Result<Tensor> {
        self.expect_nchw("Tensor::reshape")?;
        let numel: usize = shape.iter().product();
        if numel != self.numel() {
            return Err(Error::shape(
                "Tensor::reshape",
                format!("cannot view {:?} ({} elements) as {shape:?} ({numel})", self.shape, self.numel()),
            ));
        }
        Ok(Tensor { shape: shape.to_vec(), storage: self.storage, layout: Layout::Nchw })
    }

    /// `self += other`, elementwise; shapes, dtypes and devices must agree.
    pub fn add_assign(&mut self, other: &Tensor) -> Result<()> {
        self.expect_same("Tensor::add_assign", other)?;
        match (&mut self.storage, &other.storage) {
            (Storage::F32(a), Storage::F32(b)) => a.iter_mut().zip(b).for_each(|(x, y)| *x += y),
            (Storage::F64(a), Storage::F64(b)) => a.iter_mut().zip(b).for_each(|(x, y)| *x += y),
            // One f32 addition of the widened values, rounded back (as the accumulate_bf16 kernel).
            (Storage::BF16(a), Storage::BF16(b)) => {
                a.iter_mut().zip(b).for_each(|(x, y)| *x = bf16_bits((bf16_to_f32(*x) + bf16_to_f32(*y)) as f64))
            }
            (Storage::Cuda(a), Storage::Cuda(b)) => cuda_accumulate(a, b)?,
            _ => unreachable!("dtypes and devices checked above"),
        }
        Ok(())
    }

    /// An error unless `self` and `other` have the same shape, dtype and device.
    pub fn expect_same(&self, op: &'static str, other: &Tensor) -> Result<()> {
        self.expect_same_kind(op, other)?;
        if self.shape != other.shape {
            return Err(Error::shape(op, format!("{:?} vs {:?}", self.shape, other.shape)));
        }
        if self.layout != other.layout {
            return Err(Error::shape(op, format!("layouts {:?} vs {:?}", self.layout, other.layout)));
        }
        Ok(())
    }

    /// An error unless `self` and `other` have the same dtype and device.
    pub fn expect_same_kind(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.dtype() != other.dtype() {
            return Err(Error::DType { op, a: self.dtype(), b: other.dtype() });
        }
        if self.device() != other.device() {
            return Err(Error::Device { op, a: self.device().to_string(), b: other.device().to_string() });
        }
        Ok(())
    }

    /// An error unless the tensor has exactly `rank` dimensions.
    pub fn expect_rank(&self, op: &'static str, rank: usize, what: &str) -> Result<()> {
        if self.shape.len() != rank {
            return Err(Error::shape(op, format!("{what} must have {rank} dimensions, got shape {:?}", self.shape)));
        }
        Ok(())
    }

    /// Largest absolute elementwise difference to `other` (shapes must agree); NaN if any
    /// difference is NaN (a NaN on either side, or infinities of the same sign), so that a
    /// check `diff <= tolerance` fails on it. (`f64::max` alone would skip NaNs and score
    /// an all-NaN result 0.)
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f64> {
        if self.shape != other.shape {
            return Err(Error::shape("Tensor::max_abs_diff", format!("{:?} vs {:?}", self.shape, other.shape)));
        }
        let (a, b) = (self.to_f64_vec(), other.to_f64_vec());
        Ok(max_abs_diff(&a, &b))
    }
}

/// Largest `|a[i] − b[i]|` over the pairs (0 for none), NaN if any of them is NaN (see
/// [`Tensor::max_abs_diff`]).
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if m.is_nan() || d.is_nan() { f64::NAN } else { m.max(d) })
}

/// `a += b` on the device with the `accumulate` (f32) or `accumulate_f64` kernel of
/// `ptx/elementwise.cu`.
fn cuda_accumulate(a: &mut CudaBuffer, b: &CudaBuffer) -> Result<()> {
    match a.dtype() {
        DType::F32 => launch_accumulate::<f32>(a, b, "accumulate"),
        DType::F64 => launch_accumulate::<f64>(a, b, "accumulate_f64"),
        DType::BF16 => launch_accumulate_bf16(a, b),
    }
}

/// `a += b` in bf16 with `accumulate_bf16` of `ptx/bf16.cu`, or its 8-per-thread twin
/// `accumulate_bf16_x8` (the same results) where both buffers are 16-byte aligned and the
/// device allows 16-byte kernels (`CudaDevice::vector_kernels`).
fn launch_accumulate_bf16(a: &mut CudaBuffer, b: &CudaBuffer) -> Result<()> {
    use cudarc::driver::PushKernelArg;
    let dev = a.dev().clone();
    let n = u32::try_from(a.len()).map_err(|_| Error::Invalid(format!("{} elements exceed the kernels' 32-bit counts", a.len())))?;
    let x8 = (a.ptr() as u64).is_multiple_of(16) && (b.ptr() as u64).is_multiple_of(16) && dev.vector_kernels();
    let (name, threads) = if x8 { ("accumulate_bf16_x8", n / 8 + n % 8) } else { ("accumulate_bf16", n) };
    let f = dev.function("bf16.cu", BF16_CU, name)?;
    let (mut av, bv) = (a.view_bf16_mut()?, b.view_bf16()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&mut av).arg(&bv).arg(&n);
    // SAFETY: accumulate_bf16[_x8](bf16* a, const bf16* b, unsigned n); both hold n bf16 (checked by
    // the caller), 16-byte aligned for _x8; any grid is correct (grid-stride loops).
    unsafe { launch.launch(crate::cuda::grid_stride_launch(&f, threads)) }.map_err(crate::cuda::driver_err("accumulate_bf16"))?;
    Ok(())
}

/// The bf16 bit pattern nearest to `v` (round to nearest, ties to even; via f32 as the
/// GPU does: `v` is first rounded to f32, exact for every f32 input).
pub fn bf16_bits(v: f64) -> u16 {
    half::bf16::from_f32(v as f32).to_bits()
}

/// The f32 value of a bf16 bit pattern (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    half::bf16::from_bits(h).to_f32()
}

fn launch_accumulate<T: Float + cudarc::driver::DeviceRepr>(a: &mut CudaBuffer, b: &CudaBuffer, kernel: &'static str) -> Result<()> {
    use cudarc::driver::PushKernelArg;
    let dev = a.dev().clone();
    let n = u32::try_from(a.len()).map_err(|_| Error::Invalid(format!("{} elements exceed the kernels' 32-bit counts", a.len())))?;
    let f = dev.function("elementwise.cu", ELEMENTWISE_CU, kernel)?;
    let (mut av, bv) = (a.view_mut::<T>()?, b.view::<T>()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&mut av).arg(&bv).arg(&n);
    // SAFETY: `accumulate(T* a, const T* b, unsigned int n)` reads and writes n elements of
    // buffers that both hold n of type T (shapes and dtypes checked by the caller and `view`).
    unsafe { launch.launch(crate::cuda::grid_stride_launch(&f, n)) }.map_err(crate::cuda::driver_err(kernel))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn new_checks_the_element_count() {
        assert!(Tensor::new(&[2, 3], vec![0f32; 5]).is_err());
        let t = Tensor::new(&[2, 3], vec![1f64; 6]).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.dtype(), DType::F64);
    }

    #[test]
    fn add_assign_adds_and_rejects_mismatches() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let a = Tensor::randn(&[4, 5], DType::F32, 1.0, &mut rng);
        let b = Tensor::randn(&[4, 5], DType::F32, 1.0, &mut rng);
        let mut c = a.clone();
        c.add_assign(&b).unwrap();
        let (va, vb, vc) = (a.to_f64_vec(), b.to_f64_vec(), c.to_f64_vec());
        // One f32 rounding of a sum of two N(0, 1) values (|sum| < 8 here): at most
        // 2^-24 · 8 ≈ 5e-7.
        for i in 0..20 {
            assert!((va[i] + vb[i] - vc[i]).abs() < 1e-6);
        }
        assert!(c.add_assign(&b.to_dtype(DType::F64)).is_err());
        assert!(c.add_assign(&Tensor::zeros(&[5, 4], DType::F32)).is_err());
    }

    /// A NaN anywhere makes the difference NaN, so `diff <= tol` checks fail on it; an
    /// infinity against a finite value is an infinite difference.
    #[test]
    fn max_abs_diff_does_not_hide_nans() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let a = Tensor::randn(&[3, 4], DType::F64, 1.0, &mut rng);
        let mut values = a.to_f64_vec();
        values[5] += 0.25;
        let b = Tensor::new(&[3, 4], values.clone()).unwrap();
        assert!((a.max_abs_diff(&b).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(a.max_abs_diff(&a).unwrap(), 0.0);
        values[7] = f64::NAN;
        let nan = Tensor::new(&[3, 4], values.clone()).unwrap();
        assert!(a.max_abs_diff(&nan).unwrap().is_nan());
        assert!(nan.max_abs_diff(&a).unwrap().is_nan());
        let all_nan = Tensor::new(&[3, 4], vec![f64::NAN; 12]).unwrap();
        assert!(a.max_abs_diff(&all_nan).unwrap().is_nan(), "an all-NaN result is not 0 apart");
        values[7] = f64::INFINITY;
        assert_eq!(a.max_abs_diff(&Tensor::new(&[3, 4], values).unwrap()).unwrap(), f64::INFINITY);
        assert!(a.max_abs_diff(&Tensor::zeros(&[4, 3], DType::F64)).is_err());
    }

    #[test]
    fn reshape_keeps_elements_and_checks_count() {
        let t = Tensor::new(&[2, 3], (0..6).map(|x| x as f32).collect()).unwrap();
        let r = t.clone().reshape(&[3, 2]).unwrap();
        assert_eq!(r.to_f64_vec(), t.to_f64_vec());
        assert!(t.reshape(&[4, 2]).is_err());
    }
}
