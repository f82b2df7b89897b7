//! Max pooling with kernel = stride = k (PyTorch's `MaxPool2d(k)`).
//!
//! Shapes: x `[N, C, H, W]`, y `[N, C, OH, OW]`, `OH = H / k`, `OW = W / k` (floor: trailing
//! rows/columns that do not fill a window are dropped, as PyTorch does).
//!
//! Forward: `y[n,c,i,j] = max_{0≤p,q<k} x[n, c, i·k + p, j·k + q]`.
//! Backward: `dx[n,c,h,w] = dy[n,c,i,j]` if `(h, w)` is the position of that window's
//! maximum (the first in row-major order on ties, as PyTorch), else 0.
//! What the forward saves for the backward: the argmax of every window (CPU); on the GPU in
//! NHWC with whole 16-byte groups of channels (the fast path) one byte per output value, the
//! window position of its maximum ([`PoolIndices`]); elsewhere on the GPU nothing, and the
//! backward finds each window's maximum again from x (`ptx/max_pool.cu`). Only that last way
//! keeps x, the convolution's output, alive until the backward: the network frees it after
//! the forward otherwise (`g.release_unread` in `model/src/resnet.rs`).

use crate::{DType, Float, Gradients, Graph, Result, Tensor, Var};
use engine::Error;

/// Record `y = max_pool2d(x, k)`, kernel = stride = k: x `[N, C, H, W]` -> y `[N, C, H/k, W/k]` (floor).
pub fn max_pool2d(g: &mut Graph<'_>, x: Var, k: usize) -> Result<Var> {
    let xt = g.value(x);
    let x_shape = xt.shape().to_vec();
    if xt.device().is_cuda() {
        let (y, indices) = forward_cuda_indexed(xt, k)?;
        let saved = match indices {
            Some(i) => Saved::Indices(i),
            None => Saved::Window { k },
        };
        return Ok(g.push(y, crate::Op::MaxPool2d(MaxPoolRecord { x, x_shape, saved }), &[x]));
    }
    let (y, argmax) = forward(xt, k)?;
    Ok(g.push(y, crate::Op::MaxPool2d(MaxPoolRecord { x, x_shape, saved: Saved::Argmax(argmax) }), &[x]))
}

fn check(x: &Tensor, k: usize) -> Result<()> {
    x.expect_rank("max_pool2d", 4, "input x [N, C, H, W]")?;
    let s = x.shape();
    if k == 0 || s[2] < k || s[3] < k {
        return Err(Error::shape("max_pool2d", format!("kernel {k} does not fit input {s:?}")));
    }
    Ok(())
}

/// Forward: the pooled tensor and, for each output element, the flat index into x of its maximum.
pub fn forward(x: &Tensor, k: usize) -> Result<(Tensor, Vec<u32>)> {
    check(x, k)?;
    if x.numel() > u32::MAX as usize {
        return Err(Error::shape("max_pool2d", "input too large for 32-bit argmax indices"));
    }
    match x.dtype() {
        DType::F32 => forward_cpu::<f32>(x, k),
        DType::F64 => forward_cpu::<f64>(x, k),
        DType::BF16 => Err(crate::bf16_unsupported("max_pool")),
    }
}

/// Backward: `dx` of shape `x_shape` with each `dy` routed to its window's argmax.
pub fn backward(x_shape: &[usize], argmax: &[u32], dy: &Tensor) -> Result<Tensor> {
    if argmax.len() != dy.numel() {
        return Err(Error::shape("max_pool2d backward", format!("dy has {} elements, argmax {}", dy.numel(), argmax.len())));
    }
    let numel: usize = x_shape.iter().product();
    if let Some(&a) = argmax.iter().find(|&&a| a as usize >= numel) {
        return Err(Error::shape("max_pool2d backward", format!("argmax index {a} is outside the input {x_shape:?}")));
    }
    match dy.dtype() {
        DType::F32 => backward_cpu::<f32>(x_shape, argmax, dy),
        DType::F64 => backward_cpu::<f64>(x_shape, argmax, dy),
        DType::BF16 => Err(crate::bf16_unsupported("max_pool")),
    }
}

fn forward_cpu<T: Float>(x: &Tensor, k: usize) -> Result<(Tensor, Vec<u32>)> {
    let s = x.shape();
    let (nc, h, w) = (s[0] * s[1], s[2], s[3]);
    let (oh, ow) = (h / k, w / k);
    let xs = x.as_slice::<T>()?;
    let mut y = Vec::with_capacity(nc * oh * ow);
    let mut argmax = Vec::with_capacity(nc * oh * ow);
    for plane in 0..nc {
        for i in 0..oh {
            for j in 0..ow {
                let mut best = plane * h * w + (i * k) * w + j * k;
                for p in 0..k {
                    for q in 0..k {
                        let idx = plane * h * w + (i * k + p) * w + j * k + q;
                        // Strictly greater: the first maximum wins; NaN propagates like PyTorch.
                        if xs[idx] > xs[best] || xs[idx].is_nan() && !xs[best].is_nan() {
                            best = idx;
                        }
                    }
                }
                y.push(xs[best]);
                argmax.push(best as u32);
            }
        }
    }
    Ok((Tensor::new(&[s[0], s[1], oh, ow], y)?, argmax))
}

fn backward_cpu<T: Float>(x_shape: &[usize], argmax: &[u32], dy: &Tensor) -> Result<Tensor> {
    let mut dx = vec![T::zero(); x_shape.iter().product()];
    for (&a, &d) in argmax.iter().zip(dy.as_slice::<T>()?) {
        dx[a as usize] += d;
    }
    Tensor::new(x_shape, dx)
}

// ---- CUDA: our kernels, and cuDNN's forward where ours do not apply ----
//
// In NHWC with whole 16-byte groups of channels (the fast path's layout) both directions are
// ours: the forward writes y and an index byte per y value ([`PoolIndices`]), the backward
// reads those bytes and dy (`max_pool_{forward_nhwc_vec,backward_nhwc_idx}*`). Elsewhere the
// forward is cudnnPoolingForward (mode MAX_DETERMINISTIC: the first maximum on ties, like the
// CPU reference) and the backward our one-value kernel, which finds the maxima again in x
// (`max_pool_backward*`); cuDNN's `cudnnPoolingBackward` is beside them (`backward_cudnn`)
// for comparison.

use engine::cudnn;

/// The forward's record of where each window's maximum was, for the backward: one byte per
/// value of y (in y's memory order), the position `p·k + q` of the first maximum within its
/// `k × k` window, and what the backward needs to know of x (not its values).
pub struct PoolIndices {
    /// `y.numel()` bytes, held in a bf16 buffer of half as many elements (the engine's
    /// buffers are typed; only the kernels read these bytes).
    bytes: engine::cuda::CudaBuffer,
    x_shape: [usize; 4],
    k: usize,
    dtype: DType,
    layout: engine::Layout,
}

/// `y = max_pool2d(x, k)`: x `[N, C, H, W]` -> y `[N, C, H/k, W/k]`, each y the first maximum
/// of its window (see [`forward_cuda_indexed`], whose indices this drops).
pub fn forward_cuda(x: &Tensor, k: usize) -> Result<Tensor> {
    Ok(forward_cuda_indexed(x, k)?.0)
}

/// The launch of the 16-byte kernels (`max_pool_forward_nhwc_vec*`,
/// `max_pool_backward_nhwc_idx*`): one thread per window and 16-byte group of channels
/// (`n` of them), in blocks of 256. By ptxas (sm_90, 2026-11-26) they use 39 to 48 registers,
/// so an SM holds one 1024-thread block of them (1024 threads) but five or six blocks of 256
/// (1280 to 1536 threads): more loads in flight per SM.
fn vec_grid(n: u32) -> cudarc::driver::LaunchConfig {
    engine::cuda::grid_stride_config(n, 256)
}

/// `y = max_pool2d(x, k)` and, in NHWC with whole 16-byte groups of channels, the window
/// position of each maximum for [`backward_cuda_indices`]: our kernel
/// (`max_pool_forward_nhwc_vec*`, one thread per window and group) unless the device forbids
/// 16-byte kernels (`CudaDevice::vector_kernels`). Otherwise cuDNN's forward, and no indices.
pub fn forward_cuda_indexed(x: &Tensor, k: usize) -> Result<(Tensor, Option<PoolIndices>)> {
    use cudarc::driver::PushKernelArg;
    check(x, k)?;
    let s = x.shape();
    let ys = [s[0], s[1], s[2] / k, s[3] / k];
    let xb = x.cuda_buffer()?;
    let dev = xb.dev().clone();
    let dt = x.dtype();
    let mut y = dev.alloc_dtype(ys.iter().product(), dt)?;
    // k·k window positions in one byte each.
    // The index buffer only where the kernel can run (layout, type and channels first).
    let fits = vec_lanes(dt, x.layout(), s[1], &[]).is_some() && dev.vector_kernels() && x.numel() < 1 << 31 && k * k <= 256;
    if fits {
        let mut idx = dev.alloc_dtype(y.len().div_ceil(2), DType::BF16)?;
        let (xp, yp, ip) = (xb.ptr() as u64, y.ptr_mut() as u64, idx.ptr_mut() as u64);
        if let Some(lanes) = vec_lanes(dt, x.layout(), s[1], &[xp, yp, ip]) {
            let count = crate::cuda::count;
            let (n, c, h, w, kk) = (count(s[0])?, count(s[1])?, count(s[2])?, count(s[3])?, count(k)?);
            let kernel = if dt == DType::BF16 { "max_pool_forward_nhwc_vec_bf16" } else { "max_pool_forward_nhwc_vec" };
            let f = crate::cuda::function(&dev, "max_pool.cu", kernel)?;
            let mut launch = dev.stream().launch_builder(&f);
            launch.arg(&xp).arg(&yp).arg(&ip).arg(&n).arg(&c).arg(&h).arg(&w).arg(&kk);
            // SAFETY: the kernel reads x (n·c·h·w elements) and writes y (n·c·(h/k)·(w/k)) in
            // 16-byte vectors and idx (one byte per y element: idx holds y.len() rounded up to
            // even bytes) in 4- or 8-byte words; vec_lanes checked the layout, the channel count
            // and the alignment of all three, and the 32-bit indices cannot wrap (fewer than
            // 2^31 elements).
            unsafe { launch.launch(vec_grid(count(y.len() / lanes)?)) }.map_err(crate::cuda::launch_err(kernel))?;
            let indices = PoolIndices { bytes: idx, x_shape: [s[0], s[1], s[2], s[3]], k, dtype: dt, layout: x.layout() };
            return Ok((Tensor::from_cuda(&ys, y)?.with_layout(x.layout())?, Some(indices)));
        }
    }
    let (pool, xd, yd) = (cudnn::PoolDesc::max(k, k)?, cudnn::TensorDesc::new(dt, x.layout(), s[0], s[1], s[2], s[3])?, cudnn::TensorDesc::new(dt, x.layout(), ys[0], ys[1], ys[2], ys[3])?);
    dev.trace_launch("cuDNN max-pool forward")?;
    let h = dev.cudnn()?;
    // SAFETY: x and y hold the elements their descriptors describe.
    cudnn::check("cudnnPoolingForward", unsafe {
        cudarc::cudnn::sys::cudnnPoolingForward(
            h.raw(), pool.raw(), cudnn::one(dt),
            xd.raw(), xb.ptr(),
            cudnn::zero(dt), yd.raw(), y.ptr_mut(),
        )
    })?;
    Ok((Tensor::from_cuda(&ys, y)?.with_layout(x.layout())?, None))
}

/// `dx` from the forward's window positions and `dy`: `max_pool_backward_nhwc_idx*` of
/// `ptx/max_pool.cu`, one thread per window and 16-byte group of channels, which reads a byte
/// and a dy value per output and writes the window's k·k dx values (dy at the saved position,
/// 0 elsewhere). dy must have y's shape, type and layout.
pub fn backward_cuda_indices(indices: &PoolIndices, dy: &Tensor) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    let PoolIndices { bytes, x_shape: s, k, dtype, layout } = indices;
    let k = *k;
    let ys = [s[0], s[1], s[2] / k, s[3] / k];
    if dy.shape() != ys || dy.dtype() != *dtype || dy.layout() != *layout {
        return Err(Error::shape(
            "max_pool2d backward",
            format!("dy is {:?} {:?} {:?}, the forward's y was {ys:?} {dtype:?} {layout:?}", dy.shape(), dy.dtype(), dy.layout()),
        ));
    }
    let dev = bytes.dev().clone();
    // dy on the indices' device (the same opened device: one stream orders their work).
    if !std::sync::Arc::ptr_eq(dy.cuda_buffer()?.dev(), &dev) {
        return Err(Error::Invalid("max_pool2d backward: dy is on another device than the forward's saved indices".into()));
    }
    let count = crate::cuda::count;
    let (n, c, h, w, kk) = (count(s[0])?, count(s[1])?, count(s[2])?, count(s[3])?, count(k)?);
    // Rows and columns past the last whole window get no thread: zero them first.
    let numel: usize = s.iter().product();
    let whole = s[2] % k == 0 && s[3] % k == 0;
    let mut dx = if whole { dev.alloc_dtype(numel, *dtype)? } else { dev.alloc_zeros_dtype(numel, *dtype)? };
    let (ip, dyp, dxp) = (bytes.ptr() as u64, dy.cuda_buffer()?.ptr() as u64, dx.ptr_mut() as u64);
    let lanes = vec_lanes(*dtype, *layout, s[1], &[ip, dyp, dxp])
        .ok_or_else(|| Error::shape("max_pool2d backward", format!("dy or dx of {s:?} {dtype:?} is not 16-byte aligned")))?;
    let kernel = if *dtype == DType::BF16 { "max_pool_backward_nhwc_idx_bf16" } else { "max_pool_backward_nhwc_idx" };
    let f = crate::cuda::function(&dev, "max_pool.cu", kernel)?;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&ip).arg(&dyp).arg(&dxp).arg(&n).arg(&c).arg(&h).arg(&w).arg(&kk);
    // SAFETY: the indices were written by the forward for this x shape, type and layout (whose
    // checks held then: NHWC, whole groups, fewer than 2^31 elements); dy has y's shape, type
    // and layout (checked above), dx x's element count; all three are 16-byte aligned.
    unsafe { launch.launch(vec_grid(count(dy.numel() / lanes)?)) }.map_err(crate::cuda::launch_err(kernel))?;
    Tensor::from_cuda(s, dx)?.with_layout(*layout)
}

/// `dx` on the GPU from the forward's input `x` and the gradient `dy`: `max_pool_backward*`
/// of `ptx/max_pool.cu`, one thread per window, which finds the window's first maximum again
/// from x (cuDNN's `cudnnPoolingBackward` took 2.5x to 10x longer for the same work on an
/// H200, see the kernel file). f32, f64 and bf16; NCHW or NHWC (x and dy in the same order).
/// Where the forward saved [`PoolIndices`], [`backward_cuda_indices`] needs neither x nor
/// the search.
pub fn backward_cuda(x: &Tensor, dy: &Tensor, k: usize) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    check(x, k)?;
    let (s, ys) = (x.shape(), dy.shape());
    if ys != [s[0], s[1], s[2] / k, s[3] / k] {
        return Err(Error::shape("max_pool2d backward", format!("dy {ys:?} is not the pooled shape of x {s:?} with k = {k}")));
    }
    if dy.dtype() != x.dtype() || dy.layout() != x.layout() {
        return Err(Error::shape(
            "max_pool2d backward",
            format!("dy is {:?} {:?}, x is {:?} {:?}", dy.dtype(), dy.layout(), x.dtype(), x.layout()),
        ));
    }
    // The same opened device (one stream orders their work), not only the same kind.
    x.expect_same_kind("max_pool2d backward", dy)?;
    let xb = x.cuda_buffer()?;
    let dev = xb.dev().clone();
    let count = crate::cuda::count;
    // The kernel indexes in 32 bits, and its grid-stride loop must not wrap around.
    if x.numel() >= 1 << 31 {
        return Err(Error::shape("max_pool2d backward", format!("x {s:?} has 2^31 elements or more")));
    }
    let (n, c, h, w, kk) = (count(s[0])?, count(s[1])?, count(s[2])?, count(s[3])?, count(k)?);
    let nhwc = u32::from(x.layout() == engine::Layout::Nhwc);
    // Rows and columns past the last whole window get no thread: zero them first.
    let whole = s[2] % k == 0 && s[3] % k == 0;
    let mut dx = if whole { dev.alloc_dtype(x.numel(), x.dtype())? } else { dev.alloc_zeros_dtype(x.numel(), x.dtype())? };
    let (xp, dyp, dxp) = (xb.ptr() as u64, dy.cuda_buffer()?.ptr() as u64, dx.ptr_mut() as u64);
    let kernel = match x.dtype() {
        DType::F32 => "max_pool_backward",
        DType::F64 => "max_pool_backward_f64",
        DType::BF16 => "max_pool_backward_bf16",
    };
    let f = crate::cuda::function(&dev, "max_pool.cu", kernel)?;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&xp).arg(&dyp).arg(&dxp).arg(&n).arg(&c).arg(&h).arg(&w).arg(&kk).arg(&nhwc);
    // SAFETY: the kernel for this element type reads x (n·c·h·w elements) and dy (one per
    // window) and writes dx (as x); the buffers hold those counts (shapes, types and layouts
    // checked above).
    let launched = unsafe { launch.launch(crate::cuda::grid(&f, count(dy.numel())?)) };
    launched.map_err(crate::cuda::launch_err(kernel))?;
    crate::cuda::like(x, dx)
}

/// Channels per thread of the vectorised kernels (`max_pool_{forward_nhwc_vec,backward_nhwc_idx}*`:
/// one 16-byte access moves 4 f32 or 8 bf16 values of consecutive channels), or `None` where
/// they do not apply: NCHW, f64, C not a multiple of the width, or a buffer (`ptrs`) not
/// 16-byte aligned.
fn vec_lanes(dt: DType, layout: engine::Layout, c: usize, ptrs: &[u64]) -> Option<usize> {
    let lanes = crate::cuda::lanes16(dt, ptrs)?;
    (layout == engine::Layout::Nhwc && c.is_multiple_of(lanes)).then_some(lanes)
}

/// `dx` with cuDNN's `cudnnPoolingBackward` (sys layer: cudarc's safe API has no pooling
/// backward), from the forward's input `x`, output `y` and the gradient `dy`. Not what
/// training uses: on an H200 (2026-11-26) it took 2.87 ms for the four pools of a bf16 NHWC
/// ResNet-9 step where [`backward_cuda`] takes 0.61 ms, and 1.12 ms in f32 NCHW where ours
/// takes 0.60 ms. Kept as the library's answer to compare ours with (the GPU test checks
/// both against the CPU reference).
pub fn backward_cudnn(x: &Tensor, y: &Tensor, dy: &Tensor, k: usize) -> Result<Tensor> {
    check(x, k)?;
    y.expect_same("max_pool2d backward", dy)?;
    let (s, ys) = (x.shape(), y.shape());
    if ys != [s[0], s[1], s[2] / k, s[3] / k] {
        return Err(Error::shape("max_pool2d backward", format!("y {ys:?} is not the pooled shape of x {s:?} with k = {k}")));
    }
    let xb = x.cuda_buffer()?;
    let dev = xb.dev().clone();
    let dt = x.dtype();
    let (pool, xd, yd) = (cudnn::PoolDesc::max(k, k)?, cudnn::TensorDesc::new(dt, x.layout(), s[0], s[1], s[2], s[3])?, cudnn::TensorDesc::new(dt, x.layout(), ys[0], ys[1], ys[2], ys[3])?);
    let mut dx = dev.alloc_dtype(x.numel(), dt)?;
    dev.trace_launch("cuDNN max-pool backward")?;
    let h = dev.cudnn()?;
    // SAFETY: x/dx and y/dy hold the elements their descriptors describe (checked above).
    cudnn::check("cudnnPoolingBackward", unsafe {
        cudarc::cudnn::sys::cudnnPoolingBackward(
            h.raw(), pool.raw(), cudnn::one(dt),
            yd.raw(), y.cuda_buffer()?.ptr(),
            yd.raw(), dy.cuda_buffer()?.ptr(),
            xd.raw(), xb.ptr(),
            cudnn::zero(dt), xd.raw(), dx.ptr_mut(),
        )
    })?;
    crate::cuda::like(x, dx)
}

/// What the backward needs: the argmax of every window (CPU), the window position of each
/// maximum (CUDA, NHWC with whole 16-byte groups of channels), or the window size (CUDA
/// elsewhere: the kernel finds the maxima again in the forward's input).
enum Saved {
    Argmax(Vec<u32>),
    Indices(PoolIndices),
    Window { k: usize },
}

/// Max pool's record: the input node, its shape, and what the backward needs.
pub struct MaxPoolRecord {
    x: Var,
    x_shape: Vec<usize>,
    saved: Saved,
}

impl MaxPoolRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`): the
    /// input where the CUDA kernel searches its windows again (`Saved::Window`), nothing
    /// otherwise (the argmax or the window positions stand in for it, and the record keeps
    /// the input's shape), so the input may be freed after the forward.
    pub(crate) fn reads(&self, v: Var, _out: Var) -> bool {
        matches!(self.saved, Saved::Window { .. }) && v == self.x
    }

    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        let dx = match &self.saved {
            Saved::Argmax(argmax) => backward(&self.x_shape, argmax, dy)?,
            Saved::Indices(indices) => backward_cuda_indices(indices, dy)?,
            Saved::Window { k } => backward_cuda(g.value(self.x), dy, *k)?,
        };
        grads.accumulate(self.x, dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{GradCheck, random_params};

    /// The 16-byte kernels' launch: blocks of 256 (their 39-48 registers allow five or six
    /// per SM, where a 1024-thread block would be the SM's only one), one thread per group and
    /// no whole block idle; at least one block for an empty tensor.
    #[test]
    fn vector_pool_launches_one_thread_per_group_in_blocks_of_256() {
        for n in [0u32, 1, 255, 256, 257, 512 * 16 * 16 * 16] {
            let l = vec_grid(n);
            let threads = l.grid_dim.0 * l.block_dim.0;
            assert_eq!(l.block_dim, (256, 1, 1), "n = {n}");
            assert!(threads >= n && (threads - n < 256 || n == 0), "n = {n}: {threads} threads");
        }
    }

    /// The definition as nested loops, on `[N, C, H, W]` = `[2, 3, h, w]`: maxima and their flat indices.
    fn naive(xv: &[f64], h: usize, w: usize, k: usize) -> (Vec<f64>, Vec<u32>) {
        let (oh, ow) = (h / k, w / k);
        let (mut y, mut am) = (Vec::new(), Vec::new());
        for plane in 0..6 {
            for i in 0..oh {
                for j in 0..ow {
                    let (mut best, mut at) = (f64::NEG_INFINITY, 0);
                    for p in 0..k {
                        for q in 0..k {
                            let idx = plane * h * w + (k * i + p) * w + k * j + q;
                            if xv[idx] > best {
                                (best, at) = (xv[idx], idx);
                            }
                        }
                    }
                    y.push(best);
                    am.push(at as u32);
                }
            }
        }
        (y, am)
    }

    #[test]
    fn forward_takes_window_maxima_and_floors() {
        // 9x8 and 11x10 do not divide by k: the last row (and columns) are dropped.
        for (k, h, w) in [(2, 9, 8), (4, 11, 10)] {
            let ps = random_params(&[&[2, 3, h, w]], k as u64);
            let (y, am) = forward(&ps[0], k).unwrap();
            assert_eq!(y.shape(), &[2, 3, h / k, w / k]);
            let (want, want_am) = naive(&ps[0].to_f64_vec(), h, w, k);
            assert_eq!(y.to_f64_vec(), want);
            assert_eq!(am, want_am);
        }
    }

    #[test]
    fn f32_agrees_with_f64_exactly() {
        // Rounding to f32 is monotone, so the window maxima are the rounded f64 maxima, exactly
        // (random normal values have no ties, so the argmax is the same too).
        let x = random_params(&[&[2, 3, 8, 8]], 5).remove(0);
        let (y64, am64) = forward(&x, 2).unwrap();
        let (y32, am32) = forward(&x.to_dtype(DType::F32), 2).unwrap();
        assert_eq!(y32.to_f32_vec(), y64.to_f32_vec());
        assert_eq!(am32, am64);
    }

    #[test]
    fn ties_go_to_the_first_maximum() {
        let x = Tensor::new(&[1, 1, 2, 2], vec![1.0f64, 3.0, 3.0, 0.0]).unwrap();
        let (_, am) = forward(&x, 2).unwrap();
        assert_eq!(am, vec![1]);
    }

    #[test]
    fn gradient_k2_and_k4() {
        for (k, seed) in [(2, 2), (4, 3)] {
            let ps = random_params(&[&[2, 3, 8, 8]], seed);
            GradCheck::default()
                .run(&ps, |g| {
                    let x = g.param(0)?;
                    max_pool2d(g, x, k)
                })
                .unwrap();
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ps = random_params(&[&[1, 1, 3, 3], &[3, 3]], 4);
        assert!(forward(&ps[0], 4).is_err());
        assert!(forward(&ps[0], 0).is_err());
        assert!(forward(&ps[1], 2).is_err());
        let dy = random_params(&[&[1, 1, 1, 1]], 6).remove(0);
        assert!(backward(&[1, 1, 3, 3], &[9], &dy).is_err());
        assert!(backward(&[1, 1, 3, 3], &[0, 1], &dy).is_err());
    }

    /// The vectorised backward takes the network's NHWC pools (64 to 512 channels) in f32 and
    /// bf16 at aligned addresses, and nothing else.
    #[test]
    fn vectorised_backward_where_channels_and_alignment_allow() {
        use engine::Layout::{Nchw, Nhwc};
        for c in [64, 128, 256, 512] {
            assert_eq!(vec_lanes(DType::BF16, Nhwc, c, &[0x100, 0x200, 0x300]), Some(8));
            assert_eq!(vec_lanes(DType::F32, Nhwc, c, &[0x100, 0x200, 0x300]), Some(4));
            assert_eq!(vec_lanes(DType::F32, Nchw, c, &[0x100, 0x200, 0x300]), None);
            assert_eq!(vec_lanes(DType::F64, Nhwc, c, &[0x100, 0x200, 0x300]), None);
            assert_eq!(vec_lanes(DType::BF16, Nhwc, c, &[0x100, 0x208, 0x300]), None);
        }
        assert_eq!(vec_lanes(DType::BF16, Nhwc, 12, &[0]), None);
        assert_eq!(vec_lanes(DType::F32, Nhwc, 12, &[0]), Some(4));
    }
}
