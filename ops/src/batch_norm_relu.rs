//! Batch norm fused with the ReLU that follows it (one op where the network has
//! `relu(batch_norm(x))`): in training mode, and in evaluation (`batch_norm_relu_eval`: the
//! running statistics, no backward).
//!
//! Shapes: x `[N, C, H, W]` (NCHW or NHWC in memory), gamma, beta `[C]`, y `[N, C, H, W]`.
//! Per channel c, over its M = N·H·W values:
//!
//! ```text
//! forward:  μ = mean(x), σ² = mean((x − μ)²), r = 1/√(σ² + ε), x̂ = (x − μ)·r
//!           z = γ·x̂ + β,  y = max(z, 0)
//!           running_mean ← (1−m)·running_mean + m·μ,  running_var ← (1−m)·running_var + m·σ²·M/(M−1)
//! backward: dz = dy·[z > 0]
//!           dβ = Σ dz,  dγ = Σ dz·x̂,  dx = γ·r·(dz − dβ/M − x̂·dγ/M)
//! ```
//!
//! With a residual input (`batch_norm_relu_add_train`, `_eval`): `out = y + skip`, the join
//! of a residual block (`skip`, `out` `[N, C, H, W]` in x's layout), whose backward passes
//! `d skip = d out` and runs the rule above with `dy = d out`. On the GPU the join is part of
//! the output pass (one pass instead of two over the block's output, rounded as the separate
//! add rounds it), and `d out` itself becomes `d skip`: no copy.
//!
//! Exactly `batch_norm::batch_norm_train` followed by `relu::relu` (and `add::add`), which is
//! what the CPU reference computes. On the GPU our kernels (`ptx/batch_norm_relu.cu`) make two passes
//! over x in the forward (statistics, then y) and two over x and dy in the backward (sums,
//! then dx), where cuDNN's batch norm and a separate ReLU make five and eight, and the
//! pre-ReLU z is never stored. f32, f64 (gradient checks) and bf16 data (f32 statistics
//! and parameters), either layout.

use crate::batch_norm::{BatchNormConfig, RunningStats};
use crate::{DType, Gradients, Graph, Result, Tensor, Var};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use engine::cuda::{CudaBuffer, CudaDevice};
use std::sync::Arc;

/// Record `y = relu(batch_norm_train(x))` on the graph, updating `running`.
pub fn batch_norm_relu_train(
    g: &mut Graph<'_>,
    x: Var,
    gamma: Var,
    beta: Var,
    running: &mut RunningStats,
    cfg: BatchNormConfig,
) -> Result<Var> {
    train(g, x, gamma, beta, None, running, cfg)
}

/// Record `out = relu(batch_norm_train(x)) + skip` on the graph (the end of a residual block,
/// `skip` its input), updating `running`.
pub fn batch_norm_relu_add_train(
    g: &mut Graph<'_>,
    x: Var,
    gamma: Var,
    beta: Var,
    skip: Var,
    running: &mut RunningStats,
    cfg: BatchNormConfig,
) -> Result<Var> {
    train(g, x, gamma, beta, Some(skip), running, cfg)
}

fn train(g: &mut Graph<'_>, x: Var, gamma: Var, beta: Var, skip: Option<Var>, running: &mut RunningStats, cfg: BatchNormConfig) -> Result<Var> {
    let (xt, gt, bt) = (g.value(x), g.value(gamma), g.value(beta));
    crate::batch_norm::check_train("batch_norm_relu", xt, gt, bt, running)?;
    let st = residual(g, xt, skip)?;
    let (y, saved) = if xt.device().is_cuda() {
        let (y, stats) = forward_cuda(xt, gt, bt, st, running, cfg)?;
        (y, Saved::Cuda { stats })
    } else {
        let (z, mean, invstd) = crate::batch_norm::train_cpu(xt, gt, bt, running, cfg)?;
        let r = crate::relu::forward(&z)?;
        match st {
            // The backward's ReLU mask comes from r, which the output no longer is.
            Some(st) => (crate::add::forward(st, &r)?, Saved::Cpu { mean, invstd, relu: Some(r) }),
            None => (r, Saved::Cpu { mean, invstd, relu: None }),
        }
    };
    let rec = BatchNormReluRecord { x, gamma, beta, skip, saved };
    let inputs: Vec<Var> = [x, gamma, beta].into_iter().chain(skip).collect();
    Ok(g.push(y, crate::Op::BatchNormRelu(rec), &inputs))
}

/// The value of the residual input, if any, checked against x (same shape, type, device and
/// layout).
fn residual<'a>(g: &'a Graph<'_>, x: &Tensor, skip: Option<Var>) -> Result<Option<&'a Tensor>> {
    let Some(s) = skip else { return Ok(None) };
    let st = g.value(s);
    x.expect_same("batch_norm_relu_add (x and the residual input)", st)?;
    Ok(Some(st))
}

/// Record `y = relu(batch_norm_eval(x))` on the graph: batch norm with the running
/// statistics, then ReLU (evaluation). On the GPU one pass over x (`bnr_eval_stats`, then the
/// forward's `bnr_apply*`), where cuDNN's inference kernel and a separate ReLU make two; it has
/// no backward there (evaluation needs none; cuDNN's eval-mode batch norm has none either). On
/// the CPU it records the two ops, batch norm's eval mode and ReLU.
pub fn batch_norm_relu_eval(g: &mut Graph<'_>, x: Var, gamma: Var, beta: Var, running: &RunningStats, cfg: BatchNormConfig) -> Result<Var> {
    eval(g, x, gamma, beta, None, running, cfg)
}

/// Record `out = relu(batch_norm_eval(x)) + skip` (evaluation; see [`batch_norm_relu_eval`]
/// and [`batch_norm_relu_add_train`]). On the CPU the three ops, batch norm, ReLU and add.
pub fn batch_norm_relu_add_eval(
    g: &mut Graph<'_>,
    x: Var,
    gamma: Var,
    beta: Var,
    skip: Var,
    running: &RunningStats,
    cfg: BatchNormConfig,
) -> Result<Var> {
    eval(g, x, gamma, beta, Some(skip), running, cfg)
}

fn eval(g: &mut Graph<'_>, x: Var, gamma: Var, beta: Var, skip: Option<Var>, running: &RunningStats, cfg: BatchNormConfig) -> Result<Var> {
    let (xt, gt, bt) = (g.value(x), g.value(gamma), g.value(beta));
    if !xt.device().is_cuda() {
        let z = crate::batch_norm::batch_norm_eval(g, x, gamma, beta, running, cfg)?;
        let y = crate::relu::relu(g, z)?;
        // Nothing reads z any more (as in the fused op, which never makes it).
        g.release_unread(z);
        return match skip {
            Some(s) => crate::add::add(g, s, y),
            None => Ok(y),
        };
    }
    crate::batch_norm::check(xt, gt, bt, running)?;
    let st = residual(g, xt, skip)?;
    let y = eval_forward_cuda(xt, gt, bt, st, running, cfg)?;
    let rec = BatchNormReluRecord { x, gamma, beta, skip, saved: Saved::Eval };
    let inputs: Vec<Var> = [x, gamma, beta].into_iter().chain(skip).collect();
    Ok(g.push(y, crate::Op::BatchNormRelu(rec), &inputs))
}

/// What the backward needs besides the inputs. (The CPU variant is the large one; there is
/// one per recorded op, so boxing it would save nothing worth an indirection.)
#[allow(clippy::large_enum_variant)]
enum Saved {
    /// The batch mean and 1/√(σ²+ε) `[C]` (the CPU reference); with a residual input, also
    /// relu(batch_norm(x)) (the backward's ReLU mask: the output is that plus the residual).
    Cpu { mean: Tensor, invstd: Tensor, relu: Option<Tensor> },
    /// `[4, C]`: mean, invstd, scale γ·r and shift β − μ·γ·r, on the device.
    Cuda { stats: Tensor },
    /// Evaluation on the device (no backward).
    Eval,
}

/// The fused op's record: its inputs and saved statistics (the output is the node's own value).
pub struct BatchNormReluRecord {
    x: Var,
    gamma: Var,
    beta: Var,
    /// The residual input, if the op ends a residual block.
    skip: Option<Var>,
    saved: Saved,
}

impl BatchNormReluRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads its
    /// input, γ, and without a residual input its output (the CPU's ReLU mask; with one, the
    /// mask is saved); never the residual input; in evaluation nothing (it has no backward),
    /// so the tape may free its input early.
    pub(crate) fn reads(&self, v: Var, out: Var) -> bool {
        !matches!(self.saved, Saved::Eval) && (v == self.x || v == self.gamma || (self.skip.is_none() && v == out))
    }

    /// dx, dγ, dβ by the rule in the module doc; with a residual input, `dy` itself then
    /// becomes its gradient (moved, not copied: every kernel that reads `dy` here is queued
    /// before anything can add into it).
    pub(crate) fn backward(&self, g: &Graph<'_>, out: Var, dy: Tensor, grads: &mut Gradients) -> Result<()> {
        let x = g.value(self.x);
        x.expect_same("batch_norm_relu backward", &dy)?;
        let (dx, dgamma, dbeta) = match &self.saved {
            // The composition: ReLU's rule (mask from its output), then batch norm's.
            Saved::Cpu { mean, invstd, relu } => {
                let dz = crate::relu::backward(relu.as_ref().unwrap_or_else(|| g.value(out)), &dy)?;
                crate::batch_norm::backward_train_cpu(x, g.value(self.gamma), &dz, mean, invstd)?
            }
            Saved::Cuda { stats } => backward_cuda(x, g.value(self.gamma), &dy, stats)?,
            Saved::Eval => return Err(engine::Error::Unsupported { op: "batch_norm_relu backward in eval mode", device: x.device().to_string() }),
        };
        for (v, t) in [(self.x, dx), (self.gamma, dgamma), (self.beta, dbeta)] {
            if g.requires_grad(v) {
                grads.accumulate(v, t)?;
            }
        }
        if let Some(s) = self.skip
            && g.requires_grad(s)
        {
            grads.accumulate(s, dy)?;
        }
        Ok(())
    }
}

// ---- CUDA ----

/// Threads of the NCHW reduction blocks and of the vectorised NHWC ones (`BNR_THREADS` of the kernel file).
const NCHW_THREADS: u32 = 256;
/// Channels and rows of an NHWC reduction block (`BNR_NHWC_X`, `BNR_NHWC_Y`), and channels and
/// split lanes of a finalize block (`BNR_FIN_X`, `BNR_FIN_Y`).
const NHWC_BLOCK: (u32, u32) = (32, 8);
const FINALIZE_BLOCK: (u32, u32) = (8, 32);
/// Values one reduction block aims to cover, and the most splits of a channel.
const PER_BLOCK: usize = 16384;
const MAX_SPLITS: usize = 256;
/// The vectorised NHWC reductions: at most this many splits, each of at least this many rows
/// (a split's partial results, 12 bytes per channel, stay a small fraction of its rows' data).
const MAX_SPLITS_VEC: usize = 512;
const MIN_ROWS_VEC: usize = 64;

/// How the per-channel reductions run (the kernel name's layout part, and its launch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reduce {
    /// `_nchw`: a block per (channel, split), 256 threads.
    Nchw,
    /// `_nhwc`: a block per (32 channels, split), 32 x 8 threads, one value per load.
    Nhwc,
    /// `_nhwc_vec`: a block per split covering all channels, 256 threads, 16-byte loads.
    NhwcVec,
}

/// The shape of one launch's problem: x `[n, c, h, w]` with `hw = h·w`, and how the M = n·hw
/// values of each channel are split among reduction blocks.
struct Geometry {
    n: u32,
    c: u32,
    hw: u32,
    total: u32,
    nhwc: bool,
    reduce: Reduce,
    splits: u32,
}

impl Geometry {
    /// The geometry of x; `reads` are the device addresses the reductions read (x, and dy in
    /// the backward): their alignment, the channel count and the device's switch
    /// (`CudaDevice::vector_kernels`) decide whether the vectorised reductions run.
    fn of(x: &Tensor, reads: &[u64]) -> Result<Geometry> {
        let s = x.shape();
        let m = s[0] * s[2] * s[3];
        let nhwc = x.layout() == engine::Layout::Nhwc;
        let reduce = if !nhwc {
            Reduce::Nchw
        } else if x.cuda_buffer()?.dev().vector_kernels() && vec_reduce_fits(s[1], x.dtype(), reads) {
            Reduce::NhwcVec
        } else {
            Reduce::Nhwc
        };
        let count = crate::cuda::count;
        let splits = count(splits(reduce, m, x.numel()))?;
        Ok(Geometry { n: count(s[0])?, c: count(s[1])?, hw: count(s[2] * s[3])?, total: count(x.numel())?, nhwc, reduce, splits })
    }

    fn m(&self) -> u32 {
        self.n * self.hw
    }

    /// The reduction kernels' grid and blocks.
    fn reduce_launch(&self) -> LaunchConfig {
        match self.reduce {
            Reduce::Nchw => LaunchConfig { grid_dim: (self.c, self.splits, 1), block_dim: (NCHW_THREADS, 1, 1), shared_mem_bytes: 0 },
            Reduce::Nhwc => LaunchConfig { grid_dim: (self.c.div_ceil(NHWC_BLOCK.0), self.splits, 1), block_dim: (NHWC_BLOCK.0, NHWC_BLOCK.1, 1), shared_mem_bytes: 0 },
            Reduce::NhwcVec => LaunchConfig { grid_dim: (1, self.splits, 1), block_dim: (NCHW_THREADS, 1, 1), shared_mem_bytes: 0 },
        }
    }

    /// The finalize kernels' grid and blocks.
    fn finalize_launch(&self) -> LaunchConfig {
        LaunchConfig { grid_dim: (self.c.div_ceil(FINALIZE_BLOCK.0), 1, 1), block_dim: (FINALIZE_BLOCK.0, FINALIZE_BLOCK.1, 1), shared_mem_bytes: 0 }
    }

    /// The layout part of the reduction kernels' names.
    fn reduce_name(&self) -> &'static str {
        match self.reduce {
            Reduce::Nchw => "nchw",
            Reduce::Nhwc => "nhwc",
            Reduce::NhwcVec => "nhwc_vec",
        }
    }
}

/// How many blocks share the M = n·h·w rows of each channel (`total` values in all) in a reduction.
fn splits(reduce: Reduce, m: usize, total: usize) -> usize {
    match reduce {
        // NCHW blocks reduce one channel, NHWC blocks 32 channels at once.
        Reduce::Nchw => m.div_ceil(PER_BLOCK).clamp(1, MAX_SPLITS),
        Reduce::Nhwc => m.div_ceil(PER_BLOCK / NHWC_BLOCK.0 as usize).clamp(1, MAX_SPLITS),
        // Vectorised blocks cover all channels: about PER_BLOCK values each, but no fewer
        // than MIN_ROWS_VEC rows.
        Reduce::NhwcVec => total.div_ceil(PER_BLOCK).min(m.div_ceil(MIN_ROWS_VEC)).clamp(1, MAX_SPLITS_VEC),
    }
}

/// Whether the vectorised NHWC reductions (`bnr_stats_nhwc_vec*`, `bnr_bwd_sums_nhwc_vec*`) can
/// take `c` channels of `dt` data at the addresses `reads`: one 16-byte load holds 8 bf16 or 4
/// f32 channels, so C must be a multiple of that width, the C/width loads of a row a power of
/// two that divides the block's 256 threads, and every buffer read 16-byte aligned.
fn vec_reduce_fits(c: usize, dt: DType, reads: &[u64]) -> bool {
    let Some(width) = crate::cuda::lanes16(dt, reads) else { return false };
    let groups = c / width;
    c.is_multiple_of(width) && groups.is_power_of_two() && (NCHW_THREADS as usize).is_multiple_of(groups)
}

/// Elements per thread of the vectorised passes (`bnr_apply_vec*`, `bnr_bwd_apply_vec*`: one
/// 16-byte load or store moves 8 bf16 or 4 f32 values, bit for bit the scalar kernels'
/// results), or `None` where the scalar kernels must run: f64 data, a channel pattern that a
/// group of consecutive elements does not share (NHWC: C not a multiple of the width; NCHW:
/// H·W not one), or a buffer not 16-byte aligned (`ptrs`: the device addresses involved).
fn vec_width(geo: &Geometry, dt: DType, ptrs: &[u64]) -> Option<u32> {
    let width = crate::cuda::lanes16(dt, ptrs)? as u32;
    let run = if geo.nhwc { geo.c } else { geo.hw };
    run.is_multiple_of(width).then_some(width)
}

/// The grid of `bnr_apply*` and `bnr_bwd_apply*` for elements per thread `width` (None: the
/// scalar kernels) with at most `max_blocks` blocks ([`block_cap`]: by default one wave of the
/// kernel; 0: no cap). NHWC 16-byte passes: blocks of [`NCHW_THREADS`], capped, so that each
/// thread visits several 16-byte groups of the same channels (the grid-stride loop's stride,
/// 256·blocks groups, is a multiple of the C/width groups of a row wherever C/width divides
/// 256) and reads their per-channel values once. The kernels check the stride themselves and
/// otherwise read the per-channel values per element. NCHW 16-byte passes: one thread per
/// 16-byte group, also in blocks of [`NCHW_THREADS`], uncapped. The scalar passes: one thread
/// per element, in 1024-thread blocks or as many threads as the kernel allows if fewer
/// (`scalar_threads`: [`engine::cuda::max_threads_per_block`]).
///
/// Why no 16-byte pass runs in 1024-thread blocks: by ptxas (sm_90, 2026-11-26) the backward
/// pass uses 111 registers per thread, and 1024 such threads need 113,664 of an SM's 65,536,
/// so the driver refuses the launch (`CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`; the H100 session of
/// 2026-11-26 hit it on NCHW f32). 256 threads fit any count up to the 255-register maximum.
fn elementwise_launch(geo: &Geometry, width: Option<u32>, max_blocks: u32, scalar_threads: u32) -> LaunchConfig {
    debug_assert!(max_blocks != engine::cuda::BNR_ONE_WAVE, "resolve the one-wave cap first (block_cap)");
    let Some(w) = width else { return engine::cuda::grid_stride_config(geo.total, scalar_threads) };
    let need = (geo.total / w).div_ceil(NCHW_THREADS).max(1);
    let blocks = if max_blocks == 0 || !geo.nhwc { need } else { need.min(max_blocks) };
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (NCHW_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// The device's block cap for the 16-byte passes (`CudaDevice::bnr_max_blocks`), with "one
/// wave" resolved for kernel `name` (`f`) in blocks of [`NCHW_THREADS`]
/// ([`CudaDevice::one_wave`]).
fn block_cap(dev: &CudaDevice, name: &str, f: &cudarc::driver::CudaFunction) -> u32 {
    match dev.bnr_max_blocks() {
        engine::cuda::BNR_ONE_WAVE => dev.one_wave(name, NCHW_THREADS, f),
        n => n,
    }
}

/// Kernel suffix for data of `dt`, and the statistics' type.
fn types(dt: DType) -> (&'static str, &'static str, DType) {
    match dt {
        DType::F32 => ("", "", DType::F32),
        DType::F64 => ("_f64", "_f64", DType::F64),
        DType::BF16 => ("_bf16", "", DType::F32),
    }
}

fn kernel(dev: &CudaDevice, name: &str) -> Result<cudarc::driver::CudaFunction> {
    crate::cuda::function(dev, "batch_norm_relu.cu", name)
}

/// A scalar of the statistics' type as a kernel argument.
enum Scalar {
    F32(f32),
    F64(f64),
}

impl Scalar {
    fn of(dt: DType, v: f64) -> Scalar {
        if dt == DType::F64 { Scalar::F64(v) } else { Scalar::F32(v as f32) }
    }
}

fn push_scalar<'a>(launch: &mut cudarc::driver::LaunchArgs<'a>, s: &'a Scalar) {
    match s {
        Scalar::F32(v) => launch.arg(v),
        Scalar::F64(v) => launch.arg(v),
    };
}

/// y (plus `skip` where given) and the saved `[4, C]` statistics; the running statistics are
/// updated on the device.
fn forward_cuda(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    skip: Option<&Tensor>,
    running: &mut RunningStats,
    cfg: BatchNormConfig,
) -> Result<(Tensor, Tensor)> {
    let xb = x.cuda_buffer()?;
    let xp = xb.ptr() as u64;
    let geo = Geometry::of(x, &[xp])?;
    let dev: Arc<CudaDevice> = xb.dev().clone();
    let (sfx, stat_sfx, st) = types(x.dtype());
    let c = geo.c as usize;
    let mut partial = dev.alloc_dtype(geo.splits as usize * c * 3, st)?;
    let mut stats = dev.alloc_dtype(4 * c, st)?;
    let stream = dev.stream().clone();

    // 1. Per-split (count, mean, M2) of every channel.
    let name = format!("bnr_stats_{}{sfx}", geo.reduce_name());
    let f = kernel(&dev, &name)?;
    let pp = partial.ptr_mut() as u64;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&xp).arg(&pp).arg(&geo.n).arg(&geo.c).arg(&geo.hw).arg(&geo.splits);
    // SAFETY: bnr_stats_*(x [n·c·hw of T], partial [splits·c·3 of A], n, c, hw, splits), launched with the
    // grid and block shape the kernel assumes (Geometry::reduce_launch).
    unsafe { launch.launch(geo.reduce_launch()) }.map_err(crate::cuda::launch_err("bnr_stats"))?;

    // 2. Merge the splits: statistics, scale and shift, running statistics.
    let f = kernel(&dev, &format!("bnr_finalize{stat_sfx}"))?;
    let (gp, bp) = (gamma.cuda_buffer()?.ptr() as u64, beta.cuda_buffer()?.ptr() as u64);
    let (rm, rv) = (running.mean.cuda_buffer_mut()?.ptr_mut() as u64, running.var.cuda_buffer_mut()?.ptr_mut() as u64);
    let sp = stats.ptr_mut() as u64;
    let (mom, eps) = (Scalar::of(st, cfg.momentum), Scalar::of(st, cfg.eps));
    let mut launch = stream.launch_builder(&f);
    launch.arg(&pp).arg(&geo.c).arg(&geo.splits).arg(&gp).arg(&bp).arg(&rm).arg(&rv);
    push_scalar(&mut launch, &mom);
    push_scalar(&mut launch, &eps);
    launch.arg(&sp);
    // SAFETY: bnr_finalize(partial, c, splits, gamma [c], beta [c], running_mean [c], running_var [c],
    // momentum, eps, stats [4c]), all of the statistics' type A (checked by batch_norm::check),
    // with the grid and blocks the kernel assumes.
    unsafe { launch.launch(geo.finalize_launch()) }.map_err(crate::cuda::launch_err("bnr_finalize"))?;
    running.num_batches_tracked += 1;

    // 3. y = max(x·scale + shift, 0) (+ skip).
    let y = apply_cuda(&dev, x, &geo, sp, skip)?;
    Ok((y, Tensor::from_cuda(&[4, c], stats)?))
}

/// `y = max(x·scale + shift, 0)`, plus `skip` where given (same shape, type and layout as x,
/// checked by the callers), with the `[4, C]` statistics at device address `sp` (of the
/// statistics' type): `bnr_apply`, or `bnr_apply_vec` where [`vec_width`] allows.
fn apply_cuda(dev: &Arc<CudaDevice>, x: &Tensor, geo: &Geometry, sp: u64, skip: Option<&Tensor>) -> Result<Tensor> {
    let (sfx, _, _) = types(x.dtype());
    let xp = x.cuda_buffer()?.ptr() as u64;
    // The kernels take a null residual pointer for "none".
    let kp = match skip {
        Some(t) => t.cuda_buffer()?.ptr() as u64,
        None => 0u64,
    };
    let mut y = dev.alloc_dtype(x.numel(), x.dtype())?;
    let yp = y.ptr_mut() as u64;
    let ptrs: Vec<u64> = [xp, yp].into_iter().chain(skip.map(|_| kp)).collect();
    let width = vec_width(geo, x.dtype(), &ptrs).filter(|_| dev.vector_kernels());
    let name = format!("bnr_apply{}{sfx}", if width.is_some() { "_vec" } else { "" });
    let f = kernel(dev, &name)?;
    let nhwc = i32::from(geo.nhwc);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&xp).arg(&sp).arg(&kp).arg(&yp).arg(&geo.total).arg(&geo.c).arg(&geo.hw).arg(&nhwc);
    // SAFETY: bnr_apply[_vec](x [total], stats [4c], skip [total] or null, y [total], total, c,
    // hw, nhwc); the _vec kernels only where vec_width found the buffers aligned and the
    // channel pattern shared.
    unsafe { launch.launch(elementwise_launch(geo, width, block_cap(dev, &name, &f), engine::cuda::max_threads_per_block(&f))) }.map_err(crate::cuda::launch_err("bnr_apply"))?;
    crate::cuda::like(x, y)
}

/// Evaluation's y from the running statistics: their `[4, C]` form (`bnr_eval_stats`), then
/// [`apply_cuda`].
fn eval_forward_cuda(x: &Tensor, gamma: &Tensor, beta: &Tensor, skip: Option<&Tensor>, running: &RunningStats, cfg: BatchNormConfig) -> Result<Tensor> {
    let xb = x.cuda_buffer()?;
    let geo = Geometry::of(x, &[xb.ptr() as u64])?;
    let dev: Arc<CudaDevice> = xb.dev().clone();
    let (_, stat_sfx, st) = types(x.dtype());
    let mut stats = dev.alloc_dtype(4 * geo.c as usize, st)?;
    let f = kernel(&dev, &format!("bnr_eval_stats{stat_sfx}"))?;
    let (gp, bp) = (gamma.cuda_buffer()?.ptr() as u64, beta.cuda_buffer()?.ptr() as u64);
    let (rm, rv) = (running.mean.cuda_buffer()?.ptr() as u64, running.var.cuda_buffer()?.ptr() as u64);
    let sp = stats.ptr_mut() as u64;
    let eps = Scalar::of(st, cfg.eps);
    let stream = dev.stream().clone();
    let mut launch = stream.launch_builder(&f);
    launch.arg(&gp).arg(&bp).arg(&rm).arg(&rv);
    push_scalar(&mut launch, &eps);
    launch.arg(&geo.c).arg(&sp);
    // SAFETY: bnr_eval_stats(gamma, beta, running_mean, running_var [c], eps, c, stats [4c]), all
    // of the statistics' type A (checked by batch_norm::check).
    unsafe { launch.launch(crate::cuda::grid(&f, geo.c)) }.map_err(crate::cuda::launch_err("bnr_eval_stats"))?;
    apply_cuda(&dev, x, &geo, sp, skip)
}

/// `(dx, dgamma, dbeta)` from x, the output's gradient dy and the saved statistics.
fn backward_cuda(x: &Tensor, gamma: &Tensor, dy: &Tensor, stats: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let xb = x.cuda_buffer()?;
    let (xp, dyp) = (xb.ptr() as u64, dy.cuda_buffer()?.ptr() as u64);
    let geo = Geometry::of(x, &[xp, dyp])?;
    let dev = xb.dev().clone();
    let (sfx, stat_sfx, st) = types(x.dtype());
    let c = geo.c as usize;
    let stream = dev.stream().clone();
    let mut partial: CudaBuffer = dev.alloc_dtype(geo.splits as usize * c * 2, st)?;
    let (mut dgamma, mut dbeta, mut coef) = (dev.alloc_dtype(c, st)?, dev.alloc_dtype(c, st)?, dev.alloc_dtype(3 * c, st)?);
    let (sp, pp) = (stats.cuda_buffer()?.ptr() as u64, partial.ptr_mut() as u64);

    // 1. Per-split Σdz and Σdz·x̂ of every channel.
    let f = kernel(&dev, &format!("bnr_bwd_sums_{}{sfx}", geo.reduce_name()))?;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&xp).arg(&dyp).arg(&sp).arg(&pp).arg(&geo.n).arg(&geo.c).arg(&geo.hw).arg(&geo.splits);
    // SAFETY: bnr_bwd_sums_*(x, dy [n·c·hw of T], stats [4c], partial [splits·c·2], n, c, hw, splits),
    // with the grid and blocks the kernel assumes.
    unsafe { launch.launch(geo.reduce_launch()) }.map_err(crate::cuda::launch_err("bnr_bwd_sums"))?;

    // 2. dβ, dγ and the coefficients of dx.
    let f = kernel(&dev, &format!("bnr_bwd_finalize{stat_sfx}"))?;
    let gp = gamma.cuda_buffer()?.ptr() as u64;
    let (dgp, dbp, cp) = (dgamma.ptr_mut() as u64, dbeta.ptr_mut() as u64, coef.ptr_mut() as u64);
    let m = geo.m();
    let mut launch = stream.launch_builder(&f);
    launch.arg(&pp).arg(&geo.c).arg(&geo.splits).arg(&m).arg(&gp).arg(&sp).arg(&dgp).arg(&dbp).arg(&cp);
    // SAFETY: bnr_bwd_finalize(partial, c, splits, m, gamma [c], stats [4c], dgamma [c], dbeta [c], coef [3c]),
    // with the grid and blocks the kernel assumes.
    unsafe { launch.launch(geo.finalize_launch()) }.map_err(crate::cuda::launch_err("bnr_bwd_finalize"))?;

    // 3. dx.
    let mut dx = dev.alloc_dtype(x.numel(), x.dtype())?;
    let dxp = dx.ptr_mut() as u64;
    let width = vec_width(&geo, x.dtype(), &[xp, dyp, dxp]).filter(|_| dev.vector_kernels());
    let name = format!("bnr_bwd_apply{}{sfx}", if width.is_some() { "_vec" } else { "" });
    let f = kernel(&dev, &name)?;
    let nhwc = i32::from(geo.nhwc);
    let mut launch = stream.launch_builder(&f);
    launch.arg(&xp).arg(&dyp).arg(&sp).arg(&cp).arg(&dxp).arg(&geo.total).arg(&geo.c).arg(&geo.hw).arg(&nhwc);
    // SAFETY: bnr_bwd_apply[_vec](x, dy [total], stats [4c], coef [3c], dx [total], total, c, hw,
    // nhwc); the _vec kernels only where vec_width allowed them.
    unsafe { launch.launch(elementwise_launch(&geo, width, block_cap(&dev, &name, &f), engine::cuda::max_threads_per_block(&f))) }.map_err(crate::cuda::launch_err("bnr_bwd_apply"))?;
    Ok((crate::cuda::like(x, dx)?, Tensor::from_cuda(&[c], dgamma)?, Tensor::from_cuda(&[c], dbeta)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launch shapes here are the kernels' (they index shared memory by thread index and
    /// trust the block size): the reduction blocks, the NHWC block and the finalize block.
    #[test]
    fn launch_constants_are_the_kernels() {
        let define = |name| crate::kernels::define("batch_norm_relu.cu", name) as u32;
        assert_eq!(NCHW_THREADS, define("BNR_THREADS"));
        assert_eq!(NHWC_BLOCK, (define("BNR_NHWC_X"), define("BNR_NHWC_Y")));
        assert_eq!(FINALIZE_BLOCK, (define("BNR_FIN_X"), define("BNR_FIN_Y")));
    }
    use crate::gradcheck::{GradCheck, random_params};

    /// The record's backward (ReLU's mask from the output, then batch norm's rule) against
    /// central finite differences in f64, with the input shifted so that about a third of z
    /// is negative (both sides of the ReLU are exercised).
    #[test]
    fn gradient_matches_finite_differences() {
        let mut ps = random_params(&[&[3, 4, 3, 2], &[4], &[4]], 21);
        ps[2] = Tensor::new(&[4], vec![-0.4f64, 0.3, -0.1, 0.5]).unwrap();
        let r = GradCheck::default()
            .run(&ps, |g| {
                let mut stats = RunningStats::new(4, DType::F64);
                let (x, ga, be) = (g.param(0)?, g.param(1)?, g.param(2)?);
                batch_norm_relu_train(g, x, ga, be, &mut stats, BatchNormConfig::default())
            })
            .unwrap();
        assert!(r.checked > 0);
    }

    /// With a residual input: the gradients of x, γ, β and the residual against central finite
    /// differences in f64 (about a third of z negative, as above).
    #[test]
    fn gradient_with_a_residual_input_matches_finite_differences() {
        let mut ps = random_params(&[&[3, 4, 3, 2], &[4], &[4], &[3, 4, 3, 2]], 23);
        ps[2] = Tensor::new(&[4], vec![-0.4f64, 0.3, -0.1, 0.5]).unwrap();
        let r = GradCheck::default()
            .run(&ps, |g| {
                let mut stats = RunningStats::new(4, DType::F64);
                let (x, ga, be, skip) = (g.param(0)?, g.param(1)?, g.param(2)?, g.param(3)?);
                batch_norm_relu_add_train(g, x, ga, be, skip, &mut stats, BatchNormConfig::default())
            })
            .unwrap();
        assert!(r.checked > 0);
    }

    /// `relu(bn(x)) + skip` fused equals batch_norm_train, relu and add recorded one by one:
    /// the output, every gradient (the residual's is dy) and the running statistics, bit for
    /// bit; also where the residual input is x itself (its gradient is then the sum of both).
    #[test]
    fn with_a_residual_input_equals_batch_norm_relu_then_add() {
        let ps = random_params(&[&[4, 3, 5, 5], &[3], &[3], &[4, 3, 5, 5], &[4, 3, 5, 5]], 24);
        let run = |fused: bool, skip_is_x: bool| {
            let mut stats = RunningStats::new(3, DType::F64);
            let mut g = Graph::new(&ps[..4]);
            let (x, ga, be) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap());
            let skip = if skip_is_x { x } else { g.param(3).unwrap() };
            let cfg = BatchNormConfig::default();
            let y = if fused {
                batch_norm_relu_add_train(&mut g, x, ga, be, skip, &mut stats, cfg).unwrap()
            } else {
                let z = crate::batch_norm::batch_norm_train(&mut g, x, ga, be, &mut stats, cfg).unwrap();
                let r = crate::relu::relu(&mut g, z).unwrap();
                crate::add::add(&mut g, skip, r).unwrap()
            };
            let out = g.value(y).to_f64_vec();
            let grads = g.backward_with(y, ps[4].clone()).unwrap().into_param_grads(4).unwrap();
            let grads: Vec<Option<Vec<f64>>> = grads.into_iter().map(|t| t.map(|t| t.to_f64_vec())).collect();
            (out, grads, stats.mean.to_f64_vec(), stats.var.to_f64_vec())
        };
        for skip_is_x in [false, true] {
            let (a, b) = (run(true, skip_is_x), run(false, skip_is_x));
            assert_eq!(a, b, "skip_is_x {skip_is_x}");
            assert_eq!(a.1[3].is_some(), !skip_is_x);
        }
        let (out, grads, ..) = run(true, false);
        assert_eq!(grads[3].as_deref(), Some(&ps[4].to_f64_vec()[..]), "the residual's gradient is dy");
        let r_only: Vec<f64> = out.iter().zip(ps[3].to_f64_vec()).map(|(o, s)| o - s).collect();
        assert!(r_only.contains(&0.0) && r_only.iter().any(|&v| v > 0.0), "both sides of the ReLU");
    }

    /// Evaluation with a residual input on the CPU is the three ops: its output is
    /// relu(batch_norm_eval(x)) + skip; a shape mismatch of the residual is an error.
    #[test]
    fn evaluation_with_a_residual_input_adds_it() {
        let ps = random_params(&[&[2, 3, 4, 4], &[3], &[3], &[2, 3, 4, 4], &[2, 3, 4, 3]], 25);
        let mut running = RunningStats::new(3, DType::F64);
        running.mean = Tensor::new(&[3], vec![0.1f64, -0.2, 0.3]).unwrap();
        running.var = Tensor::new(&[3], vec![0.5f64, 1.5, 2.0]).unwrap();
        let cfg = BatchNormConfig::default();
        let mut g = Graph::new(&ps);
        let (x, ga, be, skip, bad) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap(), g.param(3).unwrap(), g.param(4).unwrap());
        let plain = batch_norm_relu_eval(&mut g, x, ga, be, &running, cfg).unwrap();
        let with = batch_norm_relu_add_eval(&mut g, x, ga, be, skip, &running, cfg).unwrap();
        let want: Vec<f64> = g.value(plain).to_f64_vec().iter().zip(ps[3].to_f64_vec()).map(|(r, s)| s + r).collect();
        assert_eq!(g.value(with).to_f64_vec(), want);
        let mut tr = RunningStats::new(3, DType::F64);
        assert!(batch_norm_relu_add_train(&mut g, x, ga, be, bad, &mut tr, cfg).is_err(), "residual of another shape");
    }

    /// Forward, running statistics and every gradient equal those of batch_norm_train followed
    /// by relu (the CPU path is that composition; this pins the record's wiring).
    #[test]
    fn equals_batch_norm_then_relu() {
        let ps = random_params(&[&[4, 3, 5, 5], &[3], &[3], &[4, 3, 5, 5]], 22);
        let run = |fused: bool| {
            let mut stats = RunningStats::new(3, DType::F64);
            let mut g = Graph::new(&ps[..3]);
            let (x, ga, be) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap());
            let y = if fused {
                batch_norm_relu_train(&mut g, x, ga, be, &mut stats, BatchNormConfig::default()).unwrap()
            } else {
                let z = crate::batch_norm::batch_norm_train(&mut g, x, ga, be, &mut stats, BatchNormConfig::default()).unwrap();
                crate::relu::relu(&mut g, z).unwrap()
            };
            let out = g.value(y).to_f64_vec();
            let grads = g.backward_with(y, ps[3].clone()).unwrap().into_param_grads(3).unwrap();
            let grads: Vec<Vec<f64>> = grads.into_iter().map(|t| t.unwrap().to_f64_vec()).collect();
            (out, grads, stats.mean.to_f64_vec(), stats.var.to_f64_vec(), stats.num_batches_tracked)
        };
        let (a, b) = (run(true), run(false));
        assert_eq!(a, b);
        assert!(a.0.contains(&0.0) && a.0.iter().any(|&v| v > 0.0), "both sides of the ReLU");
    }

    /// The network's eight batch norms (bf16 and f32, channels 64 to 512) take the vectorised
    /// NHWC reductions at aligned addresses; channel counts whose 16-byte loads per row are
    /// not a power of two dividing 256, f64 data and unaligned buffers do not.
    #[test]
    fn vectorised_reductions_where_the_channels_allow() {
        for c in [64, 128, 256, 512] {
            assert!(vec_reduce_fits(c, DType::BF16, &[0x1000, 0x2010]), "bf16 C={c}");
            assert!(vec_reduce_fits(c, DType::F32, &[0x1000]), "f32 C={c}");
            assert!(!vec_reduce_fits(c, DType::F64, &[0x1000]), "f64 C={c}");
            assert!(!vec_reduce_fits(c, DType::BF16, &[0x1000, 0x2008]), "unaligned dy, C={c}");
        }
        // 3 (bf16) and 6 (f32) loads per row; 12 channels: no whole bf16 load, 3 f32 loads;
        // 4096 f32 channels: 1024 loads per row, more than a block's threads.
        for (c, dt) in [(24, DType::BF16), (24, DType::F32), (12, DType::BF16), (12, DType::F32), (4096, DType::F32)] {
            assert!(!vec_reduce_fits(c, dt, &[0]), "{dt:?} C={c}");
        }
        assert!(vec_reduce_fits(8, DType::BF16, &[0]) && vec_reduce_fits(2048, DType::BF16, &[0]));
    }

    /// The NHWC 16-byte elementwise passes of the network's eight batch norms (batch 512 and
    /// a last batch of 336, bf16 and f32) get a grid whose thread count is a multiple of the
    /// C/width groups of a row (so each thread keeps one channel group, `fixed_channels` in
    /// the kernel file) within the default cap of 1024 blocks, and every group has a thread; NCHW
    /// and the scalar kernels keep one thread per group or element.
    #[test]
    fn nhwc_elementwise_grids_keep_each_thread_on_one_channel_group() {
        for (n, c, hw) in [(512u32, 64u32, 1024u32), (512, 128, 256), (512, 256, 64), (512, 512, 16), (336, 512, 16), (336, 64, 1024)] {
            for width in [8u32, 4] {
                let geo = Geometry { n, c, hw, total: n * c * hw, nhwc: true, reduce: Reduce::NhwcVec, splits: 1 };
                let l = elementwise_launch(&geo, Some(width), 1024, 1024);
                let threads = l.grid_dim.0 * l.block_dim.0;
                assert!(l.grid_dim.0 <= 1024 && l.block_dim.0 == NCHW_THREADS, "C={c} width {width}");
                assert_eq!(threads % (c / width), 0, "C={c} width {width}: a thread's groups change channels");
                assert!(threads <= geo.total / width || l.grid_dim.0 == 1, "C={c} width {width}: idle blocks");
            }
        }
        // NCHW: one thread per group of `width` elements, in 256-thread blocks whatever the cap
        // (the backward pass's 111 registers cannot run 1024 threads per block).
        let geo = Geometry { n: 2, c: 64, hw: 1024, total: 2 * 64 * 1024, nhwc: false, reduce: Reduce::Nchw, splits: 1 };
        for cap in [0, 16, 1024] {
            let l = elementwise_launch(&geo, Some(8), cap, 1024);
            assert_eq!(l.block_dim.0, NCHW_THREADS, "cap {cap}");
            assert_eq!(l.grid_dim.0 * l.block_dim.0, 2 * 64 * 1024 / 8, "cap {cap}");
        }
        let nhwc = Geometry { nhwc: true, ..geo };
        assert_eq!(elementwise_launch(&nhwc, None, 1024, 1024).grid_dim.0 * 1024, 2 * 64 * 1024);
        // A scalar kernel allowed fewer threads per block (its registers) gets such blocks.
        let l = elementwise_launch(&nhwc, None, 1024, 576);
        assert_eq!((l.block_dim.0, l.grid_dim.0), (576, (2 * 64 * 1024u32).div_ceil(576)));
        // No cap (0): one thread per 16-byte group, in 256-thread blocks.
        assert_eq!(elementwise_launch(&nhwc, Some(8), 0, 1024).grid_dim.0 * 256, 2 * 64 * 1024 / 8);
    }

    /// Split counts: at least one, within each kind's clamp, and for the vectorised kernels at
    /// least MIN_ROWS_VEC rows per split (the prep layer's and the last residual's shapes at
    /// batch 512, and a single row).
    #[test]
    fn split_counts_stay_within_their_bounds() {
        let prep = (512 * 32 * 32, 512 * 64 * 32 * 32);
        let res3 = (512 * 4 * 4, 512 * 512 * 4 * 4);
        assert_eq!(splits(Reduce::NhwcVec, prep.0, prep.1), MAX_SPLITS_VEC);
        assert_eq!(splits(Reduce::NhwcVec, res3.0, res3.1), res3.0 / MIN_ROWS_VEC);
        assert_eq!(splits(Reduce::Nhwc, prep.0, prep.1), MAX_SPLITS);
        assert_eq!(splits(Reduce::Nchw, 2, 2 * 64), 1);
        for reduce in [Reduce::Nchw, Reduce::Nhwc, Reduce::NhwcVec] {
            assert_eq!(splits(reduce, 1, 8), 1, "{reduce:?}");
        }
    }
}
