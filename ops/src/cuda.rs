//! Shared pieces of the CUDA paths: finding our kernels, launch shapes, output buffers.
//!
//! Each op's CUDA path lives in the op's own file, next to its CPU reference; this
//! module only holds what they all need.

use crate::{DType, Result, Tensor};
use cudarc::driver::{CudaFunction, LaunchConfig};
use engine::cuda::CudaBuffer;
use engine::Error;
use engine::cuda::CudaDevice;
use std::sync::Arc;

/// Kernel `name` of `ptx/<file>`, compiled for `dev` on first use.
pub(crate) fn function(dev: &CudaDevice, file: &str, name: &str) -> Result<CudaFunction> {
    let (_, source) = crate::kernels::SOURCES
        .iter()
        .find(|(f, _)| *f == file)
        .ok_or_else(|| Error::Invalid(format!("no kernel file {file} in ptx/")))?;
    dev.function(file, source, name)
}

/// An element count as the kernels' `unsigned int n`.
pub(crate) fn count(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Invalid(format!("{n} elements exceed the kernels' 32-bit counts")))
}

/// A launch of grid-stride kernel `f` covering `n` elements once (the kernels loop with a grid
/// stride, so any grid is correct; this one gives each thread one element): 1024-thread blocks
/// (cudarc's `for_num_elems`), or fewer threads per block where the kernel's registers allow
/// fewer ([`engine::cuda::grid_stride_launch`]). Every kernel of `ptx/` launched this way uses
/// at most 56 registers per thread on sm_90 (`ptxas -v`, 2026-11-26), within the 64 that
/// 1024-thread blocks allow. Those with more (batch norm + ReLU's 16-byte passes: 64 to 111;
/// its vectorised backward sums: 72 and 96) launch in blocks of 256 of their own; the first
/// convolution's kernels (122 and 125 registers, `ptx/conv_c3.cu`) are not launched through
/// this function but with fixed shapes of their own (`conv2d_c3.rs`).
pub(crate) fn grid(f: &CudaFunction, n: u32) -> LaunchConfig {
    engine::cuda::grid_stride_launch(f, n)
}

/// Each tensor's first block in a one-row grid where tensor t owns ⌈n_t / per_block⌉
/// consecutive blocks (prefix sums; an empty tensor owns none), and the grid's size: the
/// layout of our multi-tensor kernels (`sgd_update_multi`, the weight copies of `bf16.cu`),
/// whose blocks each find their tensor as the last one starting at or before them.
pub(crate) fn block_starts<const N: usize>(ns: &[u32], per_block: u32) -> ([u32; N], u32) {
    let mut starts = [0u32; N];
    let mut next = 0u32;
    for (t, &n) in ns.iter().enumerate() {
        starts[t] = next;
        next += n.div_ceil(per_block);
    }
    (starts, next)
}

/// Values of `dt` in one 16-byte access (8 bf16 or 4 f32), the width of our kernels' 16-byte
/// variants, if every device address in `ptrs` is 16-byte aligned; `None` for f64 (no such
/// variants) or an unaligned buffer. Each op adds its own shape condition.
pub(crate) fn lanes16(dt: DType, ptrs: &[u64]) -> Option<usize> {
    let lanes = match dt {
        DType::BF16 => 8,
        DType::F32 => 4,
        DType::F64 => return None,
    };
    ptrs.iter().all(|p| p.is_multiple_of(16)).then_some(lanes)
}

/// The device of a CUDA tensor and a buffer of its size and element type from the pool,
/// for an output that the kernel writes completely (contents unspecified until then).
pub(crate) fn output_like(x: &Tensor) -> Result<(Arc<CudaDevice>, CudaBuffer)> {
    let dev = x.cuda_buffer()?.dev().clone();
    let buf = dev.alloc_dtype(x.numel(), x.dtype())?;
    Ok((dev, buf))
}

/// A tensor over `buf` with the shape and layout of `like` (elementwise outputs).
pub(crate) fn like(like: &Tensor, buf: CudaBuffer) -> Result<Tensor> {
    Tensor::from_cuda(like.shape(), buf)?.with_layout(like.layout())
}

/// An element type our kernels exist for: f32 (training) and f64 (gradient checks). Each
/// kernel of `ptx/` is instantiated for both; the f64 one carries the suffix `_f64`.
pub(crate) trait Elem: crate::Float + cudarc::driver::DeviceRepr {
    const SUFFIX: &'static str;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "";
}

impl Elem for f64 {
    const SUFFIX: &'static str = "_f64";
}

/// Kernel `base` of `ptx/<file>` for element type `T`.
pub(crate) fn function_for<T: Elem>(dev: &CudaDevice, file: &str, base: &str) -> Result<CudaFunction> {
    function(dev, file, &format!("{base}{}", T::SUFFIX))
}

/// A failed launch as our error.
pub(crate) fn launch_err(kernel: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda { op: kernel, msg: e.to_string() }
}

/// Run the elementwise bf16 kernel `kernel(in_0, …, in_k, out, n)` of `ptx/bf16.cu` over
/// `inputs` (bf16 CUDA tensors of one shape), writing a new bf16 tensor of that shape; or its
/// 8-per-thread twin `x8` (same arguments, same results), where given, every buffer is
/// 16-byte aligned and the device allows 16-byte kernels (`CudaDevice::vector_kernels`).
pub(crate) fn bf16_map(kernel: &'static str, x8: Option<&'static str>, inputs: &[&Tensor]) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    let first = inputs.first().ok_or_else(|| Error::Invalid(format!("{kernel}: no inputs")))?;
    let n = count(first.numel())?;
    let (dev, mut out) = output_like(first)?;
    let buffers = inputs.iter().map(|t| t.cuda_buffer()).collect::<Result<Vec<_>>>()?;
    let aligned = buffers.iter().all(|b| (b.ptr() as u64).is_multiple_of(16)) && (out.ptr() as u64).is_multiple_of(16) && dev.vector_kernels();
    let (name, threads) = match x8 {
        Some(name) if aligned => (name, n / 8 + n % 8),
        _ => (kernel, n),
    };
    let f = function(&dev, "bf16.cu", name)?;
    let views = buffers.iter().map(|b| b.view_bf16()).collect::<Result<Vec<_>>>()?;
    let mut ov = out.view_bf16_mut()?;
    let mut launch = dev.stream().launch_builder(&f);
    for v in &views {
        launch.arg(v);
    }
    launch.arg(&mut ov).arg(&n);
    // SAFETY: the bf16.cu kernels take (const bf16* in..., bf16* out, unsigned n); every buffer
    // holds n bf16 (the callers check the shapes; view_bf16 checks the element type); the _x8
    // kernels only with every buffer 16-byte aligned. Any grid is correct (grid-stride loops).
    unsafe { launch.launch(grid(&f, threads)) }.map_err(launch_err(kernel))?;
    like(first, out)
}
