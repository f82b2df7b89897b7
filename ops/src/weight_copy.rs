//! The convolution weights' compute copies, made once per step for all of them, and their
//! gradients turned back into the parameters' (not a recorded op: the training step calls
//! it around the tape, see `model/src/train.rs`; the training step itself hands the copies'
//! gradients to `ops::sgd`, which reads them in the parameters' order, and
//! [`grads_to_master`] serves where the f32 gradients themselves are wanted).
//!
//! The parameters stay f32 in PyTorch's order `W [K, C, R, S]` (NCHW, "KCRS"): the optimizer
//! updates them, the checkpoints hold them. On the mixed-precision channels-last path the
//! convolutions read `Wc = bf16(W)` in channels-last order (`[K, R, S, C]`, "KRSC"):
//!
//! - [`to_compute`]: `Wc_t = cast(layout(W_t, NHWC), bf16)` for every weight t;
//! - [`grads_to_master`]: `dW_t = cast(layout(dWc_t, NCHW), f32)` (bf16 widens exactly), the
//!   gradient of `W_t` given that of its copy (a permutation and a cast are linear and
//!   invertible: the backward of each is the inverse applied to the gradient).
//!
//! The values are exactly those of the recorded `ops::layout` then `ops::cast` per weight,
//! which the network would otherwise run in each unit: two launches per weight forward and
//! two backward (32 for the 8 convolutions, every step, and 16 per evaluation batch), where
//! this makes one launch each way for all of them (`weights_to_bf16_krsc_tiled`, or
//! `weights_to_bf16_krsc` for a tensor wider than its tile, and `weight_grads_to_f32_kcrs` in
//! `ptx/bf16.cu`, a table of tensors passed by value like the SGD's). Other types, layouts and
//! devices run the two ops' tensor functions per weight (the CPU reference).

use crate::{DType, Result, Tensor};
use engine::{Error, Layout};

/// Tensors in one launch (`WCOPY_MAX_TENSORS` of `ptx/bf16.cu`).
const MAX_TENSORS: usize = 16;
/// Threads per block.
const THREADS: u32 = 256;
/// `WCOPY_TILE` of `ptx/bf16.cu`: the most values (C·R·S) of one output channel's weights the
/// tiled copy holds in shared memory.
const TILE: usize = 4608;

/// The kernels' table (`WeightCopyTable` of `ptx/bf16.cu`, passed by value).
#[repr(C)]
#[derive(Clone, Copy)]
struct WeightCopyTable {
    src: [u64; MAX_TENSORS],
    dst: [u64; MAX_TENSORS],
    k: [u32; MAX_TENSORS],
    c: [u32; MAX_TENSORS],
    rs: [u32; MAX_TENSORS],
    /// First block of each tensor: prefix sums of ⌈K·C·RS / THREADS⌉, or of K for the tiled
    /// copy (one block per output channel).
    block0: [u32; MAX_TENSORS],
}
// 2 × 16 addresses and 4 × 16 four-byte ints, no padding: the CUDA struct's 512 bytes.
const _: () = assert!(std::mem::size_of::<WeightCopyTable>() == 512);
// SAFETY: plain C data with the layout of the CUDA struct (8-byte addresses, then 4-byte ints).
unsafe impl cudarc::driver::DeviceRepr for WeightCopyTable {}

/// The compute copies of `weights` (each `[K, C, R, S]`, NCHW): in `dtype` and `layout`.
/// One launch for all of them on a GPU from f32 NCHW to bf16 NHWC; per weight otherwise.
pub fn to_compute(weights: &[&Tensor], dtype: DType, layout: Layout) -> Result<Vec<Tensor>> {
    for w in weights {
        w.expect_rank("weight_copy", 4, "a convolution weight [K, C, R, S]")?;
    }
    let fast = dtype == DType::BF16 && layout == Layout::Nhwc && on_cuda_all(weights, DType::F32, Layout::Nchw);
    if !fast {
        return weights.iter().map(|w| crate::cast::forward(&crate::layout::forward(w, layout)?, dtype)).collect();
    }
    // One block per output channel, its C·R·S weights through shared memory, where they fit
    // (the network's widest: 512 × 3 × 3 at width 1); else one thread per element.
    if weights.iter().all(|w| w.shape()[1] * w.shape()[2] * w.shape()[3] <= TILE) {
        launch_all(weights, DType::BF16, Layout::Nhwc, "weights_to_bf16_krsc_tiled")
    } else {
        launch_all(weights, DType::BF16, Layout::Nhwc, "weights_to_bf16_krsc")
    }
}

/// The parameters' gradients (f32, NCHW) from those of their compute copies (`grads`, each
/// `[K, C, R, S]` in the copies' type and layout). One launch for all of them on a GPU from
/// bf16 NHWC; per gradient otherwise.
pub fn grads_to_master(grads: &[&Tensor]) -> Result<Vec<Tensor>> {
    for g in grads {
        g.expect_rank("weight_copy", 4, "a convolution weight's gradient [K, C, R, S]")?;
    }
    if !on_cuda_all(grads, DType::BF16, Layout::Nhwc) {
        return grads.iter().map(|g| crate::cast::forward(&crate::layout::forward(g, Layout::Nchw)?, DType::F32)).collect();
    }
    launch_all(grads, DType::F32, Layout::Nchw, "weight_grads_to_f32_kcrs")
}

/// Whether every tensor is on a CUDA device, in `dtype` and `layout` (and there is one).
fn on_cuda_all(ts: &[&Tensor], dtype: DType, layout: Layout) -> bool {
    !ts.is_empty() && ts.iter().all(|t| t.device().is_cuda() && t.dtype() == dtype && t.layout() == layout)
}

/// One launch of `kernel` per [`MAX_TENSORS`] tensors: each output has its input's shape, in
/// `dtype` and `layout`. Tensor t owns ⌈K·C·RS / 256⌉ blocks (one thread per element), or K
/// blocks for the tiled kernel (one per output channel).
fn launch_all(inputs: &[&Tensor], dtype: DType, layout: Layout, kernel: &'static str) -> Result<Vec<Tensor>> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let mut outputs = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(MAX_TENSORS) {
        let mut table = WeightCopyTable { src: [0; MAX_TENSORS], dst: [0; MAX_TENSORS], k: [0; MAX_TENSORS], c: [0; MAX_TENSORS], rs: [0; MAX_TENSORS], block0: [0; MAX_TENSORS] };
        let dev = chunk[0].cuda_buffer()?.dev().clone();
        let mut counts = [0u32; MAX_TENSORS];
        for (t, x) in chunk.iter().enumerate() {
            let s = x.shape();
            // The kernels index in 32 bits.
            counts[t] = crate::cuda::count(x.numel())?;
            let xb = x.cuda_buffer()?;
            if !std::sync::Arc::ptr_eq(xb.dev(), &dev) {
                return Err(Error::Invalid("weight_copy: the tensors are on different devices".into()));
            }
            let mut y = dev.alloc_dtype(x.numel(), dtype)?;
            table.src[t] = xb.ptr() as u64;
            table.dst[t] = y.ptr_mut() as u64;
            if kernel == "weights_to_bf16_krsc_tiled" && !table.dst[t].is_multiple_of(4) {
                return Err(Error::Invalid(format!("weight_copy: a copy at {:#x} is not 4-byte aligned", table.dst[t])));
            }
            (table.k[t], table.c[t], table.rs[t]) = (crate::cuda::count(s[0])?, crate::cuda::count(s[1])?, crate::cuda::count(s[2] * s[3])?);
            outputs.push(Tensor::from_cuda(s, y)?.with_layout(layout)?);
        }
        let blocks;
        (table.block0, blocks) = if kernel == "weights_to_bf16_krsc_tiled" {
            crate::cuda::block_starts::<MAX_TENSORS>(&table.k[..chunk.len()], 1)
        } else {
            crate::cuda::block_starts::<MAX_TENSORS>(&counts[..chunk.len()], THREADS)
        };
        if blocks == 0 {
            continue;
        }
        let f = crate::cuda::function(&dev, "bf16.cu", kernel)?;
        let count = chunk.len() as u32;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(&table).arg(&count);
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: weights_to_bf16_krsc{,_tiled} / weight_grads_to_f32_kcrs(table, count): entry t
        // reads K·C·RS elements of the input's type at src (f32 NCHW, or bf16 NHWC: checked by
        // the callers' on_cuda_all) and writes as many of the output's at dst (allocated above
        // for that count, at the pool's 256-byte alignment: the tiled kernel's 4-byte stores of
        // an even C's rows are aligned); the blocks of entry t are block0[t] .. block0[t+1]-1,
        // ⌈K·C·RS/256⌉ of them, or K for the tiled kernel, whose rows of C·RS ≤ 4608 values
        // fit its shared tile (checked by to_compute); the inputs outlive the launch (the
        // caller's), the outputs are returned.
        unsafe { launch.launch(cfg) }.map_err(crate::cuda::launch_err(kernel))?;
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::random_params;

    /// The host's tile size is the kernel's (`#define WCOPY_TILE` in `ptx/bf16.cu`): a larger
    /// host value would launch the tiled copy for rows its shared memory does not hold, and
    /// the kernel would leave them unwritten.
    #[test]
    fn the_tile_is_the_kernels() {
        assert_eq!(crate::kernels::define("bf16.cu", "WCOPY_TILE"), TILE as u64);
        assert_eq!(crate::kernels::define("bf16.cu", "WCOPY_MAX_TENSORS"), MAX_TENSORS as u64);
    }

    /// On the CPU both directions are the two ops' tensor functions: the copies hold the
    /// weights' values in the asked type and layout, and the gradients come back as f32 NCHW
    /// with the same values (a round trip of f32 through f32 is exact).
    #[test]
    fn cpu_copies_and_gradients_are_the_layout_and_cast_ops() {
        let ws: Vec<Tensor> = random_params(&[&[4, 3, 3, 3], &[8, 4, 3, 3]], 9).iter().map(|w| w.to_dtype(DType::F32)).collect();
        let refs: Vec<&Tensor> = ws.iter().collect();
        let copies = to_compute(&refs, DType::F32, Layout::Nchw).unwrap();
        for (w, c) in ws.iter().zip(&copies) {
            assert_eq!((c.shape(), c.dtype(), c.layout()), (w.shape(), DType::F32, Layout::Nchw));
            assert_eq!(c.to_f32_vec(), w.to_f32_vec());
        }
        let back = grads_to_master(&copies.iter().collect::<Vec<_>>()).unwrap();
        for (w, b) in ws.iter().zip(&back) {
            assert_eq!((b.shape(), b.dtype(), b.layout()), (w.shape(), DType::F32, Layout::Nchw));
            assert_eq!(b.to_f32_vec(), w.to_f32_vec());
        }
        // Channels-last: element (k, c, r, s) of W sits at ((k·R + r)·S + s)·C + c of the copy
        // (index arithmetic written out here, not the layout op's), and comes back in place.
        let copies = to_compute(&refs, DType::F32, Layout::Nhwc).unwrap();
        for (w, copy) in ws.iter().zip(&copies) {
            let [k_n, c_n, r_n, s_n] = [w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]];
            assert_eq!((copy.shape(), copy.layout()), (w.shape(), Layout::Nhwc));
            let (wv, cv) = (w.to_f32_vec(), copy.to_f32_vec());
            for k in 0..k_n {
                for c in 0..c_n {
                    for r in 0..r_n {
                        for s in 0..s_n {
                            let kcrs = ((k * c_n + c) * r_n + r) * s_n + s;
                            let krsc = ((k * r_n + r) * s_n + s) * c_n + c;
                            assert_eq!(cv[krsc], wv[kcrs], "k{k} c{c} r{r} s{s}");
                        }
                    }
                }
            }
        }
        let back = grads_to_master(&copies.iter().collect::<Vec<_>>()).unwrap();
        for (w, b) in ws.iter().zip(&back) {
            assert_eq!((b.shape(), b.dtype(), b.layout()), (w.shape(), DType::F32, Layout::Nchw));
            assert_eq!(b.to_f32_vec(), w.to_f32_vec());
        }
        // Not a weight: refused with the shape named.
        let flat = Tensor::zeros(&[3], DType::F32);
        assert!(to_compute(&[&flat], DType::F32, Layout::Nchw).unwrap_err().to_string().contains("[K, C, R, S]"));
    }
}
