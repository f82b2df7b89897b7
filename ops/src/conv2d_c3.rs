//! The network's first convolution on the GPU with our own kernels (`ptx/conv_c3.cu`):
//! 3 input channels, 3×3 kernel, stride 1, zero padding 1, bf16 channels-last.
//!
//! The same op as [`crate::conv2d`] (which calls this file from its CUDA path; the CPU
//! reference is conv2d's), for the one shape where cuDNN is slow: with C = 3 the arithmetic is
//! tiny and the cost is the memory traffic of y and dy, yet on an H100 (2026-11-26) cuDNN took
//! 0.23 ms for the forward and 0.20 ms for the weight gradient per training step, about ten
//! times what that traffic takes (`ptx/conv_c3.cu` has the figures).
//!
//! The previous design did not beat it: on an H200 (2026-11-27) its kernels took 0.24 ms
//! forward and 0.32 ms for the weight gradient, five to six times the kernel file's estimate,
//! and the step captured as a CUDA graph was fastest with cuDNN for both passes (3.11 ms,
//! against 3.20 ms with its forward and 3.35 ms with both). The present design beats it (H200,
//! 2026-11-27, build 98c8127): 0.067 ms forward and 0.085 ms for the weight gradient against
//! cuDNN's 0.318 and 0.198 ms, the captured step 2.95 ms against 3.12 ms; so these kernels run
//! by default ([`engine::cuda::FirstConv::DEFAULT`]; `--first-conv cudnn` gives cuDNN back), and
//! the GPU tests keep them correct against the CPU and cuDNN. The design: the output in tiles of
//! [`ROWS`] rows × [`SEG`] columns of one image, one block of 256 threads per tile at a time
//! (grid-stride over the tiles, at most one wave), the tile's inputs (and for the weight
//! gradient its dy) staged in shared memory; a warp per output row, a lane per pair of output
//! channels, walking the row's pixels with the 3×3 window sliding in registers.
//!
//! Forward: `y[n,i,j,o] = Σ_{r,s,c} w[o,r,s,c] · x[n, i+r−1, j+s−1, c]` (x outside = 0).
//! Weight gradient: `dw[o,r,s,c] = Σ_{n,i,j} dy[n,i,j,o] · x[n, i+r−1, j+s−1, c]`.
//! Shapes (logical, as every conv2d tensor): x `[N, 3, H, W]`, w and dw `[O, 3, 3, 3]`, y and dy
//! `[N, O, H, W]`, all channels-last in memory. The input's gradient is not made here: the
//! first convolution's input is the image, which needs none ([`crate::conv2d::DataGrad::Skip`]).
//!
//! Sums in f32 with one rounding to bf16 at the end, in a fixed order (deterministic for a
//! given grid: the forward's in (r, s, c) order; the weight gradient's per thread over its
//! pixels in order, then over a block's rows, then over the blocks, each in a fixed tree); they
//! differ from cuDNN's in the last bits only (another order of the same sums). Taps over the
//! padding multiply a zero input, as the formula says (so an infinite weight or dy at the
//! border gives NaN, as the CPU reference's zero padding does).

use crate::{DType, Result, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use engine::Layout;
use engine::cuda::CudaDevice;

/// Threads per block of the forward and the weight gradient's first pass (`C3_THREADS` in the
/// kernel file): one warp per output row of a tile.
const THREADS: u32 = 256;
/// Output channels the kernels cover: 32 lanes × a pair (`C3_MAX_O`).
const MAX_O: usize = 64;
/// One output's products: 3 rows × 3 columns × 3 channels (`C3_TAPS`).
const TAPS: usize = 27;
/// Output rows of a tile, one per warp of a block (`C3_ROWS`).
const ROWS: usize = 8;
/// Output columns of a tile: the pixels a warp walks along its row (`C3_SEG`).
const SEG: usize = 32;
/// Lanes over the first pass's blocks in a block of the second (`C3_FIN_LANES`): its blocks
/// are `MAX_O` × this many threads, one block per tap.
const FIN_LANES: u32 = 8;

/// Which of the first convolution's passes [`fits`] is asked about.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    Forward,
    WeightGrad,
}

/// Whether our kernels take `pass` of `y = conv(x, w)` with this stride and padding: on the
/// GPU with the device's choice ([`CudaDevice::first_conv`]) giving them that pass, x bf16
/// channels-last with 3 channels, w `[O, 3, 3, 3]` with O even and at most 64 (a lane's pair of
/// output channels, 32 lanes), stride 1, padding 1, and fewer than 2³¹ elements in x and y
/// (32-bit indices).
pub(crate) fn fits(x: &Tensor, w: &Tensor, stride: usize, padding: usize, pass: Pass) -> bool {
    let Ok(xb) = x.cuda_buffer() else { return false };
    let (xs, ws) = (x.shape(), w.shape());
    let at = xb.dev().first_conv();
    let ours = match pass {
        Pass::Forward => at.direct_forward(),
        Pass::WeightGrad => at.direct_weight_grad(),
    };
    ours
        && x.dtype() == DType::BF16
        && w.dtype() == DType::BF16
        && x.layout() == Layout::Nhwc
        && w.layout() == Layout::Nhwc
        && xs.len() == 4
        && ws == [ws[0], 3, 3, 3]
        && xs[1] == 3
        && ws[0].is_multiple_of(2)
        && ws[0] <= MAX_O
        && stride == 1
        && padding == 1
        && xs[0] * ws[0].max(3) * xs[2] * xs[3] < 1 << 31
}

/// The tiles of `ROWS` × `SEG` output pixels of one image that cover an output of `n` images
/// of `h` × `w` (the kernels' `c3_tile`): each block takes one at a time.
fn tiles(n: u32, h: u32, w: u32) -> u32 {
    n * h.div_ceil(ROWS as u32) * w.div_ceil(SEG as u32)
}

/// One wave of 256-thread blocks of kernel `name` ([`CudaDevice::one_wave`]), at most `need`
/// (the kernels loop over their tiles with a grid stride, so any grid is correct).
fn one_wave(dev: &CudaDevice, name: &str, f: &cudarc::driver::CudaFunction, need: u32) -> u32 {
    dev.one_wave(name, THREADS, f).min(need).max(1)
}

fn blocks(n: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (n, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// `y = conv(x, w)`, y `[N, O, H, W]` channels-last bf16; the caller checked [`fits`].
pub(crate) fn forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (xs, o) = (x.shape(), w.shape()[0]);
    let (xb, wb) = (x.cuda_buffer()?, w.cuda_buffer()?);
    let dev = xb.dev().clone();
    let count = crate::cuda::count;
    let (n, h, wd, oc) = (count(xs[0])?, count(xs[2])?, count(xs[3])?, count(o)?);
    let mut y = dev.alloc_dtype(xs[0] * o * xs[2] * xs[3], DType::BF16)?;
    let (xp, wp, yp) = (xb.ptr() as u64, wb.ptr() as u64, y.ptr_mut() as u64);
    if !yp.is_multiple_of(4) {
        return Err(engine::Error::Invalid(format!("conv3x3_c3 forward: y at {yp:#x} is not 4-byte aligned")));
    }
    let name = "conv3x3_c3_forward_bf16";
    let f = crate::cuda::function(&dev, "conv_c3.cu", name)?;
    // One block per tile at a time, at most one wave: each block widens its lanes' weights
    // once into registers for all the tiles it visits.
    let need = tiles(n, h, wd);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&xp).arg(&wp).arg(&yp).arg(&n).arg(&h).arg(&wd).arg(&oc);
    // SAFETY: x holds N·H·W·3 bf16 values, w O·27, y N·H·W·O, all in the memory order the
    // kernel reads (fits: channels-last, 3 channels, a 3×3 kernel); y is 4-byte aligned
    // (checked) and written as O/2 bf16 pairs per pixel (O even, at most the 64 channels of
    // a warp's 32 lanes: fits); the kernel reads x only at pixels inside the image and writes
    // y only at the pixels of its tiles that are; every index is below 2^31 (fits).
    unsafe { launch.launch(blocks(one_wave(&dev, name, &f, need))) }.map_err(crate::cuda::launch_err("conv3x3_c3_forward"))?;
    Tensor::from_cuda(&[xs[0], o, xs[2], xs[3]], y)?.with_layout(Layout::Nhwc)
}

/// `dw` of `y = conv(x, w)` from `dy`, with w's shape and layout (`[O, 3, 3, 3]`, its memory
/// order (o, r, s, c)); the caller checked [`fits`], and dy's shape, and that dy has x's type,
/// device and layout (`conv2d::backward_adding`).
pub(crate) fn weight_grad(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (xs, o) = (x.shape(), w.shape()[0]);
    let (xb, dyb) = (x.cuda_buffer()?, dy.cuda_buffer()?);
    let dev = xb.dev().clone();
    let count = crate::cuda::count;
    let (n, h, wd, oc) = (count(xs[0])?, count(xs[2])?, count(xs[3])?, count(o)?);

    // Pass 1: each block's sums over its tiles, [blocks][27][64] f32.
    let name = "conv3x3_c3_wgrad_partial_bf16";
    let f = crate::cuda::function(&dev, "conv_c3.cu", name)?;
    let nblocks = one_wave(&dev, name, &f, tiles(n, h, wd));
    let mut partial = dev.alloc_dtype(nblocks as usize * TAPS * MAX_O, DType::F32)?;
    let (xp, dyp, pp) = (xb.ptr() as u64, dyb.ptr() as u64, partial.ptr_mut() as u64);
    if !dyp.is_multiple_of(4) {
        return Err(engine::Error::Invalid(format!("conv3x3_c3 weight gradient: dy at {dyp:#x} is not 4-byte aligned")));
    }
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&xp).arg(&dyp).arg(&pp).arg(&n).arg(&h).arg(&wd).arg(&oc);
    // SAFETY: x holds N·H·W·3 bf16 values and dy N·H·W·O (read as O/2 bf16 pairs per pixel:
    // O is even and dy 4-byte aligned, so every pair is), read only at pixels inside the image;
    // partial holds 27·64 f32 per block of the launch, each block writing its own; indices
    // below 2^31 (fits).
    unsafe { launch.launch(blocks(nblocks)) }.map_err(crate::cuda::launch_err("conv3x3_c3_wgrad_partial"))?;

    // Pass 2: the blocks' sums (8 lanes over them, each in order, then a fixed tree), one
    // block per tap, rounded to bf16.
    let mut dw = dev.alloc_dtype(o * TAPS, DType::BF16)?;
    let dwp = dw.ptr_mut() as u64;
    let f = crate::cuda::function(&dev, "conv_c3.cu", "conv3x3_c3_wgrad_finish_bf16")?;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&pp).arg(&dwp).arg(&nblocks).arg(&oc);
    // SAFETY: partial holds nblocks·27·64 f32 written by pass 1 (same stream, so in order),
    // every one of its 64 channels (the finish reads them all, writes those below O); dw holds
    // O·27 bf16; a block of 64 × 8 threads per tap, as the kernel indexes them.
    let cfg = LaunchConfig { grid_dim: (TAPS as u32, 1, 1), block_dim: (MAX_O as u32, FIN_LANES, 1), shared_mem_bytes: 0 };
    unsafe { launch.launch(cfg) }.map_err(crate::cuda::launch_err("conv3x3_c3_wgrad_finish"))?;
    crate::cuda::like(w, dw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launch shapes and table sizes here are the kernels' (`ptx/conv_c3.cu` indexes its
    /// shared tables by thread index and trusts the block size).
    #[test]
    fn launch_constants_are_the_kernels() {
        let define = |name| crate::kernels::define("conv_c3.cu", name);
        assert_eq!(u64::from(THREADS), define("C3_THREADS"));
        assert_eq!(MAX_O as u64, define("C3_MAX_O"));
        assert_eq!(TAPS as u64, define("C3_TAPS"));
        assert_eq!(ROWS as u64, define("C3_ROWS"));
        assert_eq!(SEG as u64, define("C3_SEG"));
        assert_eq!(u64::from(THREADS), 32 * ROWS as u64, "one warp per row of a tile");
        assert_eq!(u64::from(FIN_LANES), define("C3_FIN_LANES"));
    }
}
