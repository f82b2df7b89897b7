//! Batch normalisation over the channels of `[N, C, H, W]` (PyTorch's `BatchNorm2d`).
//!
//! Shapes: x, y, dy, dx `[N, C, H, W]`; gamma, beta, statistics `[C]`; `M = N·H·W`.
//!
//! Training mode, per channel c (sums over n, h, w):
//! `μ = Σx / M`, `σ² = Σ(x − μ)² / M` (biased), `r = 1/√(σ² + ε)`, `x̂ = (x − μ)·r`,
//! `y = γ·x̂ + β`. Running statistics: `running_mean ← (1−m)·running_mean + m·μ`,
//! `running_var ← (1−m)·running_var + m·σ²·M/(M−1)` (unbiased), `num_batches_tracked += 1`.
//! Backward: `dβ = Σdy`, `dγ = Σ dy·x̂`, `dx = (γ·r/M)·(M·dy − Σdy − x̂·Σ(dy·x̂))`.
//!
//! Eval mode: `x̂ = (x − running_mean)/√(running_var + ε)`, `y = γ·x̂ + β`; the statistics
//! are constants, so `dx = γ·r·dy`, `dγ = Σ dy·x̂`, `dβ = Σdy`.

use crate::{DType, Float, Gradients, Graph, Result, Tensor, Var};
use engine::Error;

/// Running statistics of one batch-norm layer (PyTorch's buffers `running_mean`,
/// `running_var`, `num_batches_tracked`). `var` is the *unbiased* batch variance's running average.
#[derive(Clone, Debug)]
pub struct RunningStats {
    pub mean: Tensor,
    pub var: Tensor,
    pub num_batches_tracked: u64,
}

impl RunningStats {
    /// Mean 0, variance 1, as PyTorch initialises them.
    pub fn new(channels: usize, dtype: DType) -> Self {
        RunningStats {
            mean: Tensor::zeros(&[channels], dtype),
            var: Tensor::full(&[channels], dtype, 1.0),
            num_batches_tracked: 0,
        }
    }
}

/// PyTorch's defaults: momentum 0.1, eps 1e-5.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormConfig {
    pub momentum: f64,
    pub eps: f64,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig { momentum: 0.1, eps: 1e-5 }
    }
}

pub(crate) fn check(x: &Tensor, gamma: &Tensor, beta: &Tensor, stats: &RunningStats) -> Result<usize> {
    const OP: &str = "batch_norm";
    x.expect_rank(OP, 4, "input x [N, C, H, W]")?;
    let c = x.shape()[1];
    for (t, what) in [(gamma, "gamma"), (beta, "beta"), (&stats.mean, "running_mean"), (&stats.var, "running_var")] {
        if x.dtype() == DType::BF16 {
            // Mixed precision: bf16 activations, f32 parameters and statistics (cuDNN's rule).
            if t.dtype() != DType::F32 || t.device() != x.device() {
                return Err(Error::Invalid(format!("batch_norm: bf16 input needs f32 {what} on its device, got {:?} on {}", t.dtype(), t.device())));
            }
        } else {
            x.expect_same_kind(OP, t)?;
        }
        if t.shape() != [c] {
            return Err(Error::shape(OP, format!("{what} has shape {:?}, the input {:?} needs [{c}]", t.shape(), x.shape())));
        }
    }
    Ok(c)
}

/// [`check`], and more than one value per channel (training mode's statistics need them);
/// `op` names the op in the error.
pub(crate) fn check_train(op: &'static str, x: &Tensor, gamma: &Tensor, beta: &Tensor, stats: &RunningStats) -> Result<()> {
    check(x, gamma, beta, stats)?;
    let s = x.shape();
    if s[0] * s[2] * s[3] < 2 {
        return Err(Error::shape(op, format!("training mode needs more than one value per channel, got {s:?}")));
    }
    Ok(())
}

/// Training mode: normalise x `[N, C, H, W]` with the batch statistics, scale by gamma `[C]`,
/// shift by beta `[C]`, and update `running`.
pub fn batch_norm_train(
    g: &mut Graph<'_>,
    x: Var,
    gamma: Var,
    beta: Var,
    running: &mut RunningStats,
    cfg: BatchNormConfig,
) -> Result<Var> {
    let (xt, gt, bt) = (g.value(x), g.value(gamma), g.value(beta));
    check_train("batch_norm", xt, gt, bt, running)?;
    let out = match xt.dtype() {
        _ if xt.device().is_cuda() => train_forward_cuda(xt, gt, bt, running, cfg)?,
        DType::F32 => train_forward_cpu::<f32>(xt, gt, bt, running, cfg)?,
        DType::F64 => train_forward_cpu::<f64>(xt, gt, bt, running, cfg)?,
        DType::BF16 => return Err(crate::bf16_unsupported("batch_norm")),
    };
    let rec = BatchNormRecord { x, gamma, beta, mean: out.mean, invstd: out.invstd, eps: cfg.eps };
    Ok(g.push(out.y, crate::Op::BatchNorm(rec), &[x, gamma, beta]))
}

/// Eval mode: normalise with `running`.
pub fn batch_norm_eval(
    g: &mut Graph<'_>,
    x: Var,
    gamma: Var,
    beta: Var,
    running: &RunningStats,
    cfg: BatchNormConfig,
) -> Result<Var> {
    let (xt, gt, bt) = (g.value(x), g.value(gamma), g.value(beta));
    check(xt, gt, bt, running)?;
    if xt.device().is_cuda() {
        let y = eval_forward_cuda(xt, gt, bt, running, cfg)?;
        let rec = BatchNormRecord { x, gamma, beta, mean: Stats::FixedOnDevice, invstd: Tensor::zeros(&[0], DType::F32), eps: cfg.eps };
        return Ok(g.push(y, crate::Op::BatchNorm(rec), &[x, gamma, beta]));
    }
    let (mean, invstd) = match xt.dtype() {
        DType::F32 => eval_stats::<f32>(running, cfg.eps)?,
        DType::F64 => eval_stats::<f64>(running, cfg.eps)?,
        DType::BF16 => return Err(crate::bf16_unsupported("batch_norm")),
    };
    let y = match xt.dtype() {
        DType::F32 => normalize_cpu::<f32>(xt, gt, bt, &mean, &invstd)?,
        DType::F64 => normalize_cpu::<f64>(xt, gt, bt, &mean, &invstd)?,
        DType::BF16 => return Err(crate::bf16_unsupported("batch_norm")),
    };
    let rec = BatchNormRecord { x, gamma, beta, mean: Stats::Fixed(mean), invstd, eps: cfg.eps };
    Ok(g.push(y, crate::Op::BatchNorm(rec), &[x, gamma, beta]))
}

/// Per-channel mean, and whether it came from the batch (training: the statistics
/// depend on x) or is fixed (eval).
enum Stats {
    Batch(Tensor),
    Fixed(Tensor),
    /// Eval mode on CUDA: cuDNN's inference kernel reads the running statistics directly and
    /// keeps nothing for a backward pass (which training never needs in eval mode).
    FixedOnDevice,
}

struct TrainOut {
    y: Tensor,
    mean: Stats,
    invstd: Tensor,
}

fn eval_stats<T: Float>(running: &RunningStats, eps: f64) -> Result<(Tensor, Tensor)> {
    let var = running.var.as_slice::<T>()?;
    let invstd: Vec<T> = var.iter().map(|&v| T::one() / (v + T::of(eps)).sqrt()).collect();
    Ok((running.mean.clone(), Tensor::new(&[var.len()], invstd)?))
}

/// `y = γ·(x − μ)·r + β` for given per-channel μ and r.
fn normalize_cpu<T: Float>(x: &Tensor, gamma: &Tensor, beta: &Tensor, mean: &Tensor, invstd: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    let (c, hw) = (s[1], s[2] * s[3]);
    let (xs, gs, bs) = (x.as_slice::<T>()?, gamma.as_slice::<T>()?, beta.as_slice::<T>()?);
    let (mu, r) = (mean.as_slice::<T>()?, invstd.as_slice::<T>()?);
    let mut y = vec![T::zero(); xs.len()];
    for (i, (yb, xb)) in y.chunks_exact_mut(hw).zip(xs.chunks_exact(hw)).enumerate() {
        let ch = i % c;
        for (yv, &xv) in yb.iter_mut().zip(xb) {
            *yv = gs[ch] * (xv - mu[ch]) * r[ch] + bs[ch];
        }
    }
    Tensor::new(s, y)
}

fn train_forward_cpu<T: Float>(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running: &mut RunningStats,
    cfg: BatchNormConfig,
) -> Result<TrainOut> {
    let s = x.shape();
    let (c, hw) = (s[1], s[2] * s[3]);
    let m = (s[0] * hw) as f64;
    let xs = x.as_slice::<T>()?;
    // Accumulate in f64 whatever T is, so the statistics of 10^5 values stay accurate in f32.
    let mut sum = vec![0.0f64; c];
    for (i, xb) in xs.chunks_exact(hw).enumerate() {
        sum[i % c] += xb.iter().map(|v| v.f64()).sum::<f64>();
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
    let mut sq = vec![0.0f64; c];
    for (i, xb) in xs.chunks_exact(hw).enumerate() {
        let mu = mean[i % c];
        sq[i % c] += xb.iter().map(|v| (v.f64() - mu).powi(2)).sum::<f64>();
    }
    let var: Vec<f64> = sq.iter().map(|s| s / m).collect();
    let invstd: Vec<T> = var.iter().map(|v| T::of(1.0 / (v + cfg.eps).sqrt())).collect();
    let mean_t = Tensor::new(&[c], mean.iter().map(|&v| T::of(v)).collect::<Vec<T>>())?;
    let invstd_t = Tensor::new(&[c], invstd)?;
    let y = normalize_cpu::<T>(x, gamma, beta, &mean_t, &invstd_t)?;

    let mom = cfg.momentum;
    for (rm, mu) in running.mean.as_mut_slice::<T>()?.iter_mut().zip(&mean) {
        *rm = T::of((1.0 - mom) * rm.f64() + mom * mu);
    }
    for (rv, v) in running.var.as_mut_slice::<T>()?.iter_mut().zip(&var) {
        *rv = T::of((1.0 - mom) * rv.f64() + mom * v * m / (m - 1.0));
    }
    running.num_batches_tracked += 1;
    Ok(TrainOut { y, mean: Stats::Batch(mean_t), invstd: invstd_t })
}

/// Batch norm's record: inputs, and the per-channel mean and inverse std used.
pub struct BatchNormRecord {
    x: Var,
    gamma: Var,
    beta: Var,
    mean: Stats,
    invstd: Tensor,
    /// The forward's ε (cuDNN's backward wants it again).
    eps: f64,
}

impl BatchNormRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads its input and γ (x̂ is recomputed from `x` and the saved statistics); not its output.
    pub(crate) fn reads(&self, v: Var, _out: Var) -> bool {
        v == self.x || v == self.gamma
    }

    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        let x = g.value(self.x);
        x.expect_same("batch_norm backward", dy)?;
        let (dx, dgamma, dbeta) = match x.dtype() {
            _ if x.device().is_cuda() => self.backward_cuda(x, g.value(self.gamma), dy)?,
            DType::F32 => self.backward_cpu::<f32>(x, g.value(self.gamma), dy)?,
            DType::F64 => self.backward_cpu::<f64>(x, g.value(self.gamma), dy)?,
            DType::BF16 => return Err(crate::bf16_unsupported("batch_norm")),
        };
        for (v, t) in [(self.x, dx), (self.gamma, dgamma), (self.beta, dbeta)] {
            if g.requires_grad(v) {
                grads.accumulate(v, t)?;
            }
        }
        Ok(())
    }

    fn backward_cpu<T: Float>(&self, x: &Tensor, gamma: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (mean, train) = match &self.mean {
            Stats::Batch(t) => (t, true),
            Stats::Fixed(t) => (t, false),
            Stats::FixedOnDevice => unreachable!("only recorded for CUDA tensors"),
        };
        backward_cpu_t::<T>(x, gamma, dy, mean, &self.invstd, train)
    }
}

/// The CPU forward in training mode: `(y, mean, invstd)` (see [`batch_norm_train`]), updating
/// `running` (for ops built on batch norm, e.g. `batch_norm_relu`).
pub(crate) fn train_cpu(x: &Tensor, gamma: &Tensor, beta: &Tensor, running: &mut RunningStats, cfg: BatchNormConfig) -> Result<(Tensor, Tensor, Tensor)> {
    let out = match x.dtype() {
        DType::F32 => train_forward_cpu::<f32>(x, gamma, beta, running, cfg)?,
        DType::F64 => train_forward_cpu::<f64>(x, gamma, beta, running, cfg)?,
        DType::BF16 => return Err(crate::bf16_unsupported("batch_norm")),
    };
    let Stats::Batch(mean) = out.mean else { unreachable!("training mode keeps the batch mean") };
    Ok((out.y, mean, out.invstd))
}

/// The CPU backward in training mode: `(dx, dgamma, dbeta)` from the forward's batch `mean`
/// and `invstd` (see the module doc).
pub(crate) fn backward_train_cpu(x: &Tensor, gamma: &Tensor, dy: &Tensor, mean: &Tensor, invstd: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    match x.dtype() {
        DType::F32 => backward_cpu_t::<f32>(x, gamma, dy, mean, invstd, true),
        DType::F64 => backward_cpu_t::<f64>(x, gamma, dy, mean, invstd, true),
        DType::BF16 => Err(crate::bf16_unsupported("batch_norm")),
    }
}

/// The backward's rules on the CPU, with batch statistics (`train`) or fixed ones.
fn backward_cpu_t<T: Float>(x: &Tensor, gamma: &Tensor, dy: &Tensor, mean: &Tensor, invstd: &Tensor, train: bool) -> Result<(Tensor, Tensor, Tensor)> {
    let s = x.shape();
    let (c, hw) = (s[1], s[2] * s[3]);
    let m = T::of((s[0] * hw) as f64);
    let (xs, gs, dys) = (x.as_slice::<T>()?, gamma.as_slice::<T>()?, dy.as_slice::<T>()?);
    let (mu, r) = (mean.as_slice::<T>()?, invstd.as_slice::<T>()?);
    // Σdy and Σdy·x̂ per channel, accumulated in f64 like the forward's statistics
    // (M = N·H·W is 5·10^5 for the first layer at batch 512).
    let (mut sdy64, mut sdyx64) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (i, (xb, db)) in xs.chunks_exact(hw).zip(dys.chunks_exact(hw)).enumerate() {
        let ch = i % c;
        for (&xv, &d) in xb.iter().zip(db) {
            sdy64[ch] += d.f64();
            sdyx64[ch] += (d * (xv - mu[ch]) * r[ch]).f64();
        }
    }
    let sdy: Vec<T> = sdy64.into_iter().map(T::of).collect();
    let sdyx: Vec<T> = sdyx64.into_iter().map(T::of).collect();
    let mut dx = vec![T::zero(); xs.len()];
    for (i, ((dxb, xb), db)) in dx.chunks_exact_mut(hw).zip(xs.chunks_exact(hw)).zip(dys.chunks_exact(hw)).enumerate() {
        let ch = i % c;
        for ((o, &xv), &d) in dxb.iter_mut().zip(xb).zip(db) {
            *o = if train {
                let xhat = (xv - mu[ch]) * r[ch];
                gs[ch] * r[ch] / m * (m * d - sdy[ch] - xhat * sdyx[ch])
            } else {
                gs[ch] * r[ch] * d
            };
        }
    }
    Ok((Tensor::new(s, dx)?, Tensor::new(&[c], sdyx)?, Tensor::new(&[c], sdy)?))
}

// ---- CUDA: cuDNN (sys layer: cudarc's safe API has no batch norm) ----
//
// cuDNN's SPATIAL mode is exactly the math above: statistics per channel over N·H·W,
// biased variance for normalising, running variance updated with the unbiased one
// (`exponentialAverageFactor` = momentum), and the saved mean and 1/√(σ²+ε) for the backward.

use engine::cudnn;

/// Descriptors of x `[N, C, H, W]` and of the per-channel parameters `[1, C, 1, 1]`. cuDNN
/// wants f32 parameters for f32 and bf16 data, f64 for f64.
fn cuda_descs(x: &Tensor) -> Result<(cudnn::TensorDesc, cudnn::TensorDesc)> {
    let (s, dt) = (x.shape(), x.dtype());
    let xd = cudnn::TensorDesc::new(dt, x.layout(), s[0], s[1], s[2], s[3])?;
    let pd = cudnn::TensorDesc::batch_norm_params(&xd, SPATIAL)?;
    Ok((xd, pd))
}

/// The element type of the parameters and statistics for data of `dt`.
fn param_dtype(dt: DType) -> DType {
    if dt == DType::BF16 { DType::F32 } else { dt }
}

const SPATIAL: cudarc::cudnn::sys::cudnnBatchNormMode_t = cudarc::cudnn::sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

/// Whether a cuDNN failure on bf16 data is cuDNN declining the type (then the op runs in
/// f32 between two casts instead; said once on stderr).
fn declined_bf16(x: &Tensor, e: &Error) -> bool {
    let declined = x.dtype() == DType::BF16
        && matches!(e, Error::Cuda { msg, .. } if msg.contains("NOT_SUPPORTED") || msg.contains("BAD_PARAM"));
    if declined && !BF16_DECLINED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        eprintln!("note: this cuDNN's batch norm does not take bf16 data ({e}); batch norm runs in f32 between casts");
    }
    declined
}

/// Set once cuDNN has declined bf16 batch norm: later calls go straight to f32 between casts
/// (no failing call first, which a CUDA graph capture would also record).
static BF16_DECLINED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `x` is bf16 and cuDNN is known to decline it.
fn known_declined(x: &Tensor) -> bool {
    x.dtype() == DType::BF16 && BF16_DECLINED.load(std::sync::atomic::Ordering::Relaxed)
}

fn to_f32(t: &Tensor) -> Result<Tensor> {
    crate::cast::forward(t, DType::F32)
}

fn to_bf16(t: &Tensor) -> Result<Tensor> {
    crate::cast::forward(t, DType::BF16)
}

fn train_forward_cuda(x: &Tensor, gamma: &Tensor, beta: &Tensor, running: &mut RunningStats, cfg: BatchNormConfig) -> Result<TrainOut> {
    let first = if known_declined(x) { Err(Error::Cuda { op: "batch_norm", msg: "NOT_SUPPORTED (known)".into() }) } else { train_forward_cudnn(x, gamma, beta, running, cfg) };
    match first {
        Err(e) if declined_bf16(x, &e) => {
            let out = train_forward_cudnn(&to_f32(x)?, gamma, beta, running, cfg)?;
            Ok(TrainOut { y: to_bf16(&out.y)?, ..out })
        }
        r => r,
    }
}

fn eval_forward_cuda(x: &Tensor, gamma: &Tensor, beta: &Tensor, running: &RunningStats, cfg: BatchNormConfig) -> Result<Tensor> {
    let first = if known_declined(x) { Err(Error::Cuda { op: "batch_norm", msg: "NOT_SUPPORTED (known)".into() }) } else { eval_forward_cudnn(x, gamma, beta, running, cfg) };
    match first {
        Err(e) if declined_bf16(x, &e) => to_bf16(&eval_forward_cudnn(&to_f32(x)?, gamma, beta, running, cfg)?),
        r => r,
    }
}

fn train_forward_cudnn(x: &Tensor, gamma: &Tensor, beta: &Tensor, running: &mut RunningStats, cfg: BatchNormConfig) -> Result<TrainOut> {
    let xb = x.cuda_buffer()?;
    let dev = xb.dev().clone();
    let c = x.shape()[1];
    let (xd, pd) = cuda_descs(x)?;
    let dt = x.dtype();
    let pt = param_dtype(dt);
    let (mut y, mut mean, mut invstd) = (dev.alloc_dtype(x.numel(), dt)?, dev.alloc_dtype(c, pt)?, dev.alloc_dtype(c, pt)?);
    let (gb, bb) = (gamma.cuda_buffer()?, beta.cuda_buffer()?);
    let (rm, rv) = (running.mean.cuda_buffer_mut()?.ptr_mut(), running.var.cuda_buffer_mut()?.ptr_mut());
    dev.trace_launch("cuDNN batch norm forward (training)")?;
    let h = dev.cudnn()?;
    // SAFETY: x and y hold N·C·H·W elements of x's type; gamma, beta, the running statistics and the saved
    // mean/invstd hold C (checked by `check`); the two running buffers are distinct tensors.
    cudnn::check("cudnnBatchNormalizationForwardTraining", unsafe {
        cudarc::cudnn::sys::cudnnBatchNormalizationForwardTraining(
            h.raw(), SPATIAL, cudnn::one(dt), cudnn::zero(dt),
            xd.raw(), xb.ptr(),
            xd.raw(), y.ptr_mut(),
            pd.raw(), gb.ptr(), bb.ptr(),
            cfg.momentum,
            rm, rv,
            cfg.eps,
            mean.ptr_mut(), invstd.ptr_mut(),
        )
    })?;
    running.num_batches_tracked += 1;
    Ok(TrainOut {
        y: crate::cuda::like(x, y)?,
        mean: Stats::Batch(Tensor::from_cuda(&[c], mean)?),
        invstd: Tensor::from_cuda(&[c], invstd)?,
    })
}

fn eval_forward_cudnn(x: &Tensor, gamma: &Tensor, beta: &Tensor, running: &RunningStats, cfg: BatchNormConfig) -> Result<Tensor> {
    let xb = x.cuda_buffer()?;
    let dev = xb.dev().clone();
    let (xd, pd) = cuda_descs(x)?;
    let dt = x.dtype();
    let mut y = dev.alloc_dtype(x.numel(), dt)?;
    let (gb, bb) = (gamma.cuda_buffer()?, beta.cuda_buffer()?);
    let (rm, rv) = (running.mean.cuda_buffer()?, running.var.cuda_buffer()?);
    dev.trace_launch("cuDNN batch norm forward (inference)")?;
    let h = dev.cudnn()?;
    // SAFETY: as in train_forward_cuda; the running statistics are only read.
    cudnn::check("cudnnBatchNormalizationForwardInference", unsafe {
        cudarc::cudnn::sys::cudnnBatchNormalizationForwardInference(
            h.raw(), SPATIAL, cudnn::one(dt), cudnn::zero(dt),
            xd.raw(), xb.ptr(),
            xd.raw(), y.ptr_mut(),
            pd.raw(), gb.ptr(), bb.ptr(),
            rm.ptr(), rv.ptr(),
            cfg.eps,
        )
    })?;
    crate::cuda::like(x, y)
}

impl BatchNormRecord {
    fn backward_cuda(&self, x: &Tensor, gamma: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let first = if known_declined(x) { Err(Error::Cuda { op: "batch_norm", msg: "NOT_SUPPORTED (known)".into() }) } else { self.backward_cudnn(x, gamma, dy) };
        match first {
            Err(e) if declined_bf16(x, &e) => {
                let (dx, dgamma, dbeta) = self.backward_cudnn(&to_f32(x)?, gamma, &to_f32(dy)?)?;
                Ok((to_bf16(&dx)?, dgamma, dbeta))
            }
            r => r,
        }
    }

    fn backward_cudnn(&self, x: &Tensor, gamma: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let Stats::Batch(mean) = &self.mean else {
            return Err(Error::Unsupported { op: "batch_norm backward in eval mode", device: x.device().to_string() });
        };
        let xb = x.cuda_buffer()?;
        let dev = xb.dev().clone();
        let c = x.shape()[1];
        let (xd, pd) = cuda_descs(x)?;
        let dt = x.dtype();
        let pt = param_dtype(dt);
        let (mut dx, mut dgamma, mut dbeta) = (dev.alloc_dtype(x.numel(), dt)?, dev.alloc_dtype(c, pt)?, dev.alloc_dtype(c, pt)?);
        dev.trace_launch("cuDNN batch norm backward")?;
        let h = dev.cudnn()?;
        // SAFETY: x, dy, dx hold N·C·H·W f32; gamma, dgamma, dbeta, mean, invstd hold C; the
        // saved statistics are the ones the forward computed for this x with the same epsilon.
        cudnn::check("cudnnBatchNormalizationBackward", unsafe {
            cudarc::cudnn::sys::cudnnBatchNormalizationBackward(
                h.raw(), SPATIAL,
                cudnn::one(dt), cudnn::zero(dt), cudnn::one(dt), cudnn::zero(dt),
                xd.raw(), xb.ptr(),
                xd.raw(), dy.cuda_buffer()?.ptr(),
                xd.raw(), dx.ptr_mut(),
                pd.raw(), gamma.cuda_buffer()?.ptr(),
                dgamma.ptr_mut(), dbeta.ptr_mut(),
                self.eps,
                mean.cuda_buffer()?.ptr(), self.invstd.cuda_buffer()?.ptr(),
            )
        })?;
        Ok((crate::cuda::like(x, dx)?, Tensor::from_cuda(&[c], dgamma)?, Tensor::from_cuda(&[c], dbeta)?))
    }
}

#[cfg(test)]
// Tolerances of the exact tests: 1e-12 (1e-10 for a variance of variances) on f64
// statistics of O(1) values over at most a few hundred elements, whose rounding is ~1e-14;
// any error in a formula (biased vs unbiased variance, a missing eps) is ~1e-3 or more.
mod tests {
    use super::*;
    use crate::gradcheck::{GradCheck, random_params};

    /// Indices of channel `ch` in a `[N, C, H, W]` tensor.
    fn channel(n: usize, c: usize, hw: usize, ch: usize) -> impl Iterator<Item = usize> {
        (0..n).flat_map(move |b| (0..hw).map(move |k| (b * c + ch) * hw + k))
    }

    #[test]
    fn training_output_is_normalised_and_statistics_update_like_pytorch() {
        let ps = random_params(&[&[4, 3, 5, 5], &[3], &[3]], 1);
        let mut stats = RunningStats::new(3, DType::F64);
        let mut g = Graph::new(&ps);
        let (x, ga, be) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap());
        let cfg = BatchNormConfig::default();
        let y = batch_norm_train(&mut g, x, ga, be, &mut stats, cfg).unwrap();
        let (xv, yv, gv, bv) = (ps[0].to_f64_vec(), g.value(y).to_f64_vec(), ps[1].to_f64_vec(), ps[2].to_f64_vec());
        let m = 4.0 * 25.0;
        for ch in 0..3 {
            let vals: Vec<f64> = channel(4, 3, 25, ch).map(|i| xv[i]).collect();
            let mu = vals.iter().sum::<f64>() / m;
            let var = vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / m;
            // y's per-channel mean is beta and its variance gamma²·var/(var+eps).
            let ys: Vec<f64> = channel(4, 3, 25, ch).map(|i| yv[i]).collect();
            let ymu = ys.iter().sum::<f64>() / m;
            let yvar = ys.iter().map(|v| (v - ymu).powi(2)).sum::<f64>() / m;
            assert!((ymu - bv[ch]).abs() < 1e-12);
            assert!((yvar - gv[ch] * gv[ch] * var / (var + 1e-5)).abs() < 1e-10);
            // Running statistics after one update: 0.9·0 + 0.1·μ and 0.9·1 + 0.1·unbiased var.
            assert!((stats.mean.to_f64_vec()[ch] - 0.1 * mu).abs() < 1e-12);
            assert!((stats.var.to_f64_vec()[ch] - (0.9 + 0.1 * var * m / (m - 1.0))).abs() < 1e-12);
        }
        assert_eq!(stats.num_batches_tracked, 1);
    }

    /// Mean and biased variance of channel `ch`, computed directly.
    fn channel_stats(x: &Tensor, ch: usize) -> (f64, f64, f64) {
        let s = x.shape();
        let xv = x.to_f64_vec();
        let v: Vec<f64> = channel(s[0], s[1], s[2] * s[3], ch).map(|i| xv[i]).collect();
        let m = v.len() as f64;
        let mu = v.iter().sum::<f64>() / m;
        (mu, v.iter().map(|a| (a - mu).powi(2)).sum::<f64>() / m, m)
    }

    /// Two updates with two different batches and a non-default momentum, written out by hand,
    /// then eval mode on a third batch with exactly those statistics.
    #[test]
    fn running_statistics_after_two_updates_and_eval_uses_them() {
        let ps = random_params(&[&[3, 2, 4, 3], &[2], &[2], &[3, 2, 4, 3], &[2, 2, 3, 3]], 11);
        // Shift the second batch so its statistics differ visibly from the first's.
        let b2 = Tensor::new(&[3, 2, 4, 3], ps[3].to_f64_vec().iter().map(|v| 3.0 * v + 1.5).collect()).unwrap();
        let params = vec![ps[0].clone(), ps[1].clone(), ps[2].clone(), b2, ps[4].clone()];
        let cfg = BatchNormConfig { momentum: 0.3, eps: 1e-5 };
        let mut stats = RunningStats::new(2, DType::F64);
        let mut g = Graph::new(&params);
        let (x1, ga, be, x2, x3) =
            (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap(), g.param(3).unwrap(), g.param(4).unwrap());
        batch_norm_train(&mut g, x1, ga, be, &mut stats, cfg).unwrap();
        batch_norm_train(&mut g, x2, ga, be, &mut stats, cfg).unwrap();
        assert_eq!(stats.num_batches_tracked, 2);
        let (mut want_mean, mut want_var) = (vec![0.0; 2], vec![0.0; 2]);
        for ch in 0..2 {
            let (mu1, var1, m) = channel_stats(&params[0], ch);
            let (mu2, var2, _) = channel_stats(&params[3], ch);
            let (rm1, rv1) = (0.7 * 0.0 + 0.3 * mu1, 0.7 * 1.0 + 0.3 * var1 * m / (m - 1.0));
            want_mean[ch] = 0.7 * rm1 + 0.3 * mu2;
            want_var[ch] = 0.7 * rv1 + 0.3 * var2 * m / (m - 1.0);
            assert!((stats.mean.to_f64_vec()[ch] - want_mean[ch]).abs() < 1e-12);
            assert!((stats.var.to_f64_vec()[ch] - want_var[ch]).abs() < 1e-12);
        }
        let y = batch_norm_eval(&mut g, x3, ga, be, &stats, cfg).unwrap();
        let (xv, yv, gv, bv) = (params[4].to_f64_vec(), g.value(y).to_f64_vec(), params[1].to_f64_vec(), params[2].to_f64_vec());
        for i in 0..xv.len() {
            let ch = (i / 9) % 2;
            let want = gv[ch] * (xv[i] - want_mean[ch]) / (want_var[ch] + 1e-5).sqrt() + bv[ch];
            assert!((yv[i] - want).abs() < 1e-12);
        }
        assert_eq!(stats.num_batches_tracked, 2, "eval mode leaves the statistics alone");
    }

    /// Training forward and backward in f32 against f64 on the same inputs.
    #[test]
    fn f32_agrees_with_f64() {
        let ps = random_params(&[&[8, 3, 6, 6], &[3], &[3], &[8, 3, 6, 6]], 12);
        let run = |dtype: DType| -> (Vec<f64>, Vec<Vec<f64>>, Vec<f64>) {
            let params: Vec<Tensor> = ps[..3].iter().map(|t| t.to_dtype(dtype)).collect();
            let mut stats = RunningStats::new(3, dtype);
            let mut g = Graph::new(&params);
            let (x, ga, be) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap());
            let y = batch_norm_train(&mut g, x, ga, be, &mut stats, BatchNormConfig::default()).unwrap();
            let yv = g.value(y).to_f64_vec();
            let grads = g.backward_with(y, ps[3].to_dtype(dtype)).unwrap().into_param_grads(3).unwrap();
            let grads = grads.into_iter().map(|t| t.unwrap().to_f64_vec()).collect();
            (yv, grads, stats.var.to_f64_vec())
        };
        let (y64, g64, v64) = run(DType::F64);
        let (y32, g32, v32) = run(DType::F32);
        let max_diff = engine::tensor::max_abs_diff;
        // Values are O(1) and every step is a short f32 computation (rounding ~6e-8 each) on
        // statistics accumulated in f64; Σdy·x̂ over M = 288 terms of O(1) gives ~1e-5 absolute.
        assert!(max_diff(&y32, &y64) < 1e-5);
        assert!(max_diff(&v32, &v64) < 1e-5);
        for (a, b) in g32.iter().zip(&g64) {
            assert!(max_diff(a, b) < 1e-4, "gradient differs by {}", max_diff(a, b));
        }
    }

    #[test]
    fn eval_mode_uses_the_running_statistics() {
        let ps = random_params(&[&[2, 2, 3, 3], &[2], &[2]], 2);
        let stats = RunningStats {
            mean: Tensor::new(&[2], vec![0.5f64, -1.0]).unwrap(),
            var: Tensor::new(&[2], vec![4.0f64, 0.25]).unwrap(),
            num_batches_tracked: 3,
        };
        let mut g = Graph::new(&ps);
        let (x, ga, be) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap());
        let y = batch_norm_eval(&mut g, x, ga, be, &stats, BatchNormConfig::default()).unwrap();
        let (xv, yv, gv, bv) = (ps[0].to_f64_vec(), g.value(y).to_f64_vec(), ps[1].to_f64_vec(), ps[2].to_f64_vec());
        for i in 0..xv.len() {
            let ch = (i / 9) % 2;
            let (m, v) = ([0.5, -1.0][ch], [4.0, 0.25][ch]);
            let want = gv[ch] * (xv[i] - m) / (v + 1e-5f64).sqrt() + bv[ch];
            assert!((yv[i] - want).abs() < 1e-12);
        }
    }

    #[test]
    fn gradient_training_mode() {
        let ps = random_params(&[&[3, 4, 3, 2], &[4], &[4]], 3);
        GradCheck::default()
            .run(&ps, |g| {
                let mut stats = RunningStats::new(4, DType::F64);
                let (x, ga, be) = (g.param(0)?, g.param(1)?, g.param(2)?);
                batch_norm_train(g, x, ga, be, &mut stats, BatchNormConfig::default())
            })
            .unwrap();
    }

    #[test]
    fn gradient_eval_mode() {
        let ps = random_params(&[&[2, 3, 2, 2], &[3], &[3]], 4);
        let stats = RunningStats {
            mean: Tensor::new(&[3], vec![0.1f64, -0.2, 0.3]).unwrap(),
            var: Tensor::new(&[3], vec![0.5f64, 2.0, 1.5]).unwrap(),
            num_batches_tracked: 1,
        };
        GradCheck::default()
            .run(&ps, |g| {
                let (x, ga, be) = (g.param(0)?, g.param(1)?, g.param(2)?);
                batch_norm_eval(g, x, ga, be, &stats, BatchNormConfig::default())
            })
            .unwrap();
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ps = random_params(&[&[2, 3, 2, 2], &[4], &[3], &[1, 3, 1, 1]], 5);
        let mut stats = RunningStats::new(3, DType::F64);
        let mut g = Graph::new(&ps);
        let (x, g4, b3, single) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap(), g.param(3).unwrap());
        assert!(batch_norm_train(&mut g, x, g4, b3, &mut stats, BatchNormConfig::default()).is_err());
        let b3b = g.param(2).unwrap();
        assert!(batch_norm_train(&mut g, single, b3, b3b, &mut stats, BatchNormConfig::default()).is_err());
        assert_eq!(stats.num_batches_tracked, 0);
    }
}
