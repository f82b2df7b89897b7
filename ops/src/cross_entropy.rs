//! Softmax cross-entropy, averaged over the batch, with optional label smoothing
//! (PyTorch's `F.cross_entropy(z, y, label_smoothing=s)`).
//!
//! Shapes: logits z `[N, K]`, labels `N` values in `0..K`, loss `[1]`.
//!
//! Forward, per row n: `lse = m + ln Σ_k exp(z_k − m)` with `m = max_k z_k` (stable),
//! `log p_k = z_k − lse`; targets `q = (1 − s)·onehot(y_n) + s/K`;
//! `ℓ_n = −Σ_k q_k·log p_k = (1 − s)·(lse − z_y) + (s/K)·Σ_k (lse − z_k)`;
//! `L = (1/N)·Σ_n ℓ_n`.
//! Backward: `dz[n,k] = (p_k − q_k)·dL/N`.

use crate::cuda::Elem;
use crate::{DType, Float, Gradients, Graph, Result, Tensor, Var};
use engine::Error;

/// Record the mean softmax cross-entropy of logits `[N, K]` against `labels` (N values in 0..K),
/// with label smoothing `s` (target = (1 − s)·onehot + s/K). Output: a scalar `[1]`.
pub fn softmax_cross_entropy(g: &mut Graph<'_>, logits: Var, labels: &[u32], label_smoothing: f64) -> Result<Var> {
    let z = g.value(logits);
    if z.device().is_cuda() {
        check(z, labels, label_smoothing)?;
        let dev = z.cuda_buffer()?.dev().clone();
        let labels = DeviceLabels::new(std::sync::Arc::new(dev.upload(labels)?), 0, labels.len())?;
        return softmax_cross_entropy_on_device(g, logits, labels, label_smoothing);
    }
    let (loss, probs) = forward(z, labels, label_smoothing)?;
    let rec = CrossEntropyRecord { logits, labels: labels.to_vec(), smoothing: label_smoothing, saved: Saved::Probs(probs) };
    Ok(g.push(loss, crate::Op::SoftmaxCrossEntropy(rec), &[logits]))
}

/// Labels already on the device: `len` values of `all` from `offset` (e.g. one batch of an
/// epoch's labels uploaded once). They are not validated here; a label outside 0..K makes
/// that row's loss and gradient NaN (see `ptx/cross_entropy.cu`), which training reports.
#[derive(Clone, Debug)]
pub struct DeviceLabels {
    all: std::sync::Arc<cudarc::driver::CudaSlice<u32>>,
    offset: usize,
    len: usize,
}

impl DeviceLabels {
    pub fn new(all: std::sync::Arc<cudarc::driver::CudaSlice<u32>>, offset: usize, len: usize) -> Result<DeviceLabels> {
        if offset + len > all.len() {
            return Err(Error::shape("DeviceLabels", format!("labels {offset}..{} of a buffer of {}", offset + len, all.len())));
        }
        Ok(DeviceLabels { all, offset, len })
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn view(&self) -> cudarc::driver::CudaView<'_, u32> {
        self.all.slice(self.offset..self.offset + self.len)
    }

    /// An error unless the labels live on `dev` (allocated on its stream: the same opened
    /// device, whose one stream orders their upload before the kernels that read them).
    pub(crate) fn expect_on(&self, op: &'static str, dev: &engine::cuda::CudaDevice) -> Result<()> {
        if !std::sync::Arc::ptr_eq(self.all.stream(), dev.stream()) {
            return Err(Error::Invalid(format!("{op}: the labels are on another device than the logits")));
        }
        Ok(())
    }

    /// A host copy of the labels, through `dev` (the device that holds them; waits for its
    /// stream): for tests that check what a loss reads.
    pub fn to_host(&self, dev: &engine::cuda::CudaDevice) -> Result<Vec<u32>> {
        dev.download_view(&self.view())
    }
}

/// [`softmax_cross_entropy`] on CUDA logits with labels already on the device.
pub fn softmax_cross_entropy_on_device(g: &mut Graph<'_>, logits: Var, labels: DeviceLabels, label_smoothing: f64) -> Result<Var> {
    let z = g.value(logits);
    z.expect_rank("softmax_cross_entropy", 2, "logits [N, K]")?;
    if labels.len() != z.shape()[0] || z.numel() == 0 || !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::shape("softmax_cross_entropy", format!("{} labels for logits {:?} (smoothing {label_smoothing})", labels.len(), z.shape())));
    }
    let loss = forward_cuda(z, &labels, label_smoothing)?;
    let rec = CrossEntropyRecord { logits, labels: Vec::new(), smoothing: label_smoothing, saved: Saved::DeviceLabels(labels) };
    Ok(g.push(loss, crate::Op::SoftmaxCrossEntropy(rec), &[logits]))
}

fn check(z: &Tensor, labels: &[u32], s: f64) -> Result<(usize, usize)> {
    const OP: &str = "softmax_cross_entropy";
    z.expect_rank(OP, 2, "logits [N, K]")?;
    let (n, k) = (z.shape()[0], z.shape()[1]);
    if labels.len() != n || n == 0 || k == 0 {
        return Err(Error::shape(OP, format!("{} labels for logits {:?}", labels.len(), z.shape())));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= k) {
        return Err(Error::shape(OP, format!("label {l} at row {i} is out of range for {k} classes")));
    }
    if !(0.0..=1.0).contains(&s) {
        return Err(Error::Invalid(format!("label smoothing must be in [0, 1], got {s}")));
    }
    Ok((n, k))
}

/// The loss `[1]` and the softmax probabilities `[N, K]` (saved for the backward).
pub fn forward(z: &Tensor, labels: &[u32], s: f64) -> Result<(Tensor, Tensor)> {
    let nk = check(z, labels, s)?;
    match z.dtype() {
        DType::F32 => forward_cpu::<f32>(z, labels, s, nk),
        DType::F64 => forward_cpu::<f64>(z, labels, s, nk),
        DType::BF16 => Err(crate::bf16_unsupported("cross_entropy")),
    }
}

/// `dz = (p − q)·dL/N` from the saved probabilities.
pub fn backward(probs: &Tensor, labels: &[u32], s: f64, dloss: &Tensor) -> Result<Tensor> {
    let (n, k) = check(probs, labels, s)?;
    match probs.dtype() {
        DType::F32 => backward_cpu::<f32>(probs, labels, s, dloss.scalar()?, (n, k)),
        DType::F64 => backward_cpu::<f64>(probs, labels, s, dloss.scalar()?, (n, k)),
        DType::BF16 => Err(crate::bf16_unsupported("cross_entropy")),
    }
}

fn forward_cpu<T: Float>(z: &Tensor, labels: &[u32], s: f64, (n, k): (usize, usize)) -> Result<(Tensor, Tensor)> {
    let zs = z.as_slice::<T>()?;
    let mut probs = vec![T::zero(); n * k];
    let mut total = 0.0f64;
    for ((row, prow), &y) in zs.chunks_exact(k).zip(probs.chunks_exact_mut(k)).zip(labels) {
        let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        let sum_exp: T = row.iter().map(|&v| (v - m).exp()).sum();
        let lse = m + sum_exp.ln();
        for (p, &v) in prow.iter_mut().zip(row) {
            *p = (v - lse).exp();
        }
        let nll = (lse - row[y as usize]).f64();
        let mean_nll = row.iter().map(|&v| (lse - v).f64()).sum::<f64>() / k as f64;
        total += (1.0 - s) * nll + s * mean_nll;
    }
    let loss = Tensor::new(&[1], vec![T::of(total / n as f64)])?;
    Ok((loss, Tensor::new(&[n, k], probs)?))
}

fn backward_cpu<T: Float>(probs: &Tensor, labels: &[u32], s: f64, dl: f64, (n, k): (usize, usize)) -> Result<Tensor> {
    let ps = probs.as_slice::<T>()?;
    let scale = T::of(dl / n as f64);
    let (off, on) = (T::of(s / k as f64), T::of(1.0 - s + s / k as f64));
    let mut dz = vec![T::zero(); n * k];
    for ((drow, prow), &y) in dz.chunks_exact_mut(k).zip(ps.chunks_exact(k)).zip(labels) {
        for (j, (d, &p)) in drow.iter_mut().zip(prow).enumerate() {
            let q = if j == y as usize { on } else { off };
            *d = (p - q) * scale;
        }
    }
    Tensor::new(&[n, k], dz)
}

fn forward_cuda(z: &Tensor, labels: &DeviceLabels, s: f64) -> Result<Tensor> {
    match z.dtype() {
        DType::F32 => forward_cuda_t::<f32>(z, labels, s as f32),
        DType::F64 => forward_cuda_t::<f64>(z, labels, s),
        DType::BF16 => Err(crate::bf16_unsupported("cross_entropy")),
    }
}

fn backward_cuda(z: &Tensor, labels: &DeviceLabels, s: f64, dloss: &Tensor) -> Result<Tensor> {
    match z.dtype() {
        DType::F32 => backward_cuda_t::<f32>(z, labels, s as f32, dloss),
        DType::F64 => backward_cuda_t::<f64>(z, labels, s, dloss),
        DType::BF16 => Err(crate::bf16_unsupported("cross_entropy")),
    }
}

/// Per-row losses with `cross_entropy_forward` (one thread per row), then their mean
/// with the one-block `sum_reduce` (scale 1/N). Both of `ptx/`.
fn forward_cuda_t<T: Elem>(z: &Tensor, labels: &DeviceLabels, smoothing: T) -> Result<Tensor> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let (n, k) = (crate::cuda::count(z.shape()[0])?, crate::cuda::count(z.shape()[1])?);
    let zb = z.cuda_buffer()?;
    let dev = zb.dev().clone();
    labels.expect_on("softmax_cross_entropy", &dev)?;
    let mut rows = dev.alloc_dtype(n as usize, T::DTYPE)?;
    let mut loss = dev.alloc_dtype(1, T::DTYPE)?;
    let f = crate::cuda::function_for::<T>(&dev, "cross_entropy.cu", "cross_entropy_forward")?;
    let labels = labels.view();
    let (zv, mut rv) = (zb.view::<T>()?, rows.view_mut::<T>()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&zv).arg(&labels).arg(&mut rv).arg(&n).arg(&k).arg(&smoothing);
    // SAFETY: cross_entropy_forward(logits [n,k], labels [n], loss [n], n, k, smoothing); sizes as allocated/checked.
    unsafe { launch.launch(crate::cuda::grid(&f, n)) }.map_err(crate::cuda::launch_err("cross_entropy_forward"))?;
    let (scale, accumulate) = (T::one() / T::of(n as f64), 0i32);
    let f = crate::cuda::function_for::<T>(&dev, "reduce.cu", "sum_reduce")?;
    let (rv, mut lv) = (rows.view::<T>()?, loss.view_mut::<T>()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&rv).arg(&mut lv).arg(&n).arg(&scale).arg(&accumulate);
    let one_block = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: sum_reduce(x [n], out [1], n, scale, accumulate) must run as one block, as configured.
    unsafe { launch.launch(one_block) }.map_err(crate::cuda::launch_err("sum_reduce"))?;
    Tensor::from_cuda(&[1], loss)
}

/// `cross_entropy_backward` of `ptx/` (one thread per row): `dz = (softmax(z) − q)·dL/N`,
/// the softmax recomputed from the logits. dL is read by the kernel from device memory.
fn backward_cuda_t<T: Elem>(z: &Tensor, labels: &DeviceLabels, smoothing: T, dloss: &Tensor) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    let (n, k) = (crate::cuda::count(z.shape()[0])?, crate::cuda::count(z.shape()[1])?);
    if dloss.numel() != 1 {
        return Err(Error::shape("softmax_cross_entropy backward", format!("dL {:?} is not a scalar", dloss.shape())));
    }
    z.expect_same_kind("softmax_cross_entropy backward", dloss)?;
    labels.expect_on("softmax_cross_entropy backward", z.cuda_buffer()?.dev())?;
    let inv_n = T::one() / T::of(n as f64);
    let labels = labels.view();
    let (dev, mut dz) = crate::cuda::output_like(z)?;
    let f = crate::cuda::function_for::<T>(&dev, "cross_entropy.cu", "cross_entropy_backward")?;
    let (zv, dlv, mut dzv) = (z.cuda_buffer()?.view::<T>()?, dloss.cuda_buffer()?.view::<T>()?, dz.view_mut::<T>()?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&zv).arg(&labels).arg(&mut dzv).arg(&n).arg(&k).arg(&smoothing).arg(&dlv).arg(&inv_n);
    // SAFETY: cross_entropy_backward(logits [n,k], labels [n], dlogits [n,k], n, k, smoothing, dloss [1], inv_n).
    unsafe { launch.launch(crate::cuda::grid(&f, n)) }.map_err(crate::cuda::launch_err("cross_entropy_backward"))?;
    Tensor::from_cuda(z.shape(), dz)
}

/// What the backward keeps: the softmax probabilities (CPU), or the labels already on the
/// device (CUDA, where the kernel recomputes the softmax from the logits).
enum Saved {
    Probs(Tensor),
    DeviceLabels(DeviceLabels),
}

/// The loss's record: the logits node, the labels, the smoothing and what the backward needs.
pub struct CrossEntropyRecord {
    logits: Var,
    labels: Vec<u32>,
    smoothing: f64,
    saved: Saved,
}

impl CrossEntropyRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads the logits (the CUDA rule recomputes the softmax from them).
    pub(crate) fn reads(&self, v: Var, _out: Var) -> bool {
        v == self.logits
    }

    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        let dz = match &self.saved {
            Saved::Probs(p) => backward(p, &self.labels, self.smoothing, dy)?,
            Saved::DeviceLabels(l) => backward_cuda(g.value(self.logits), l, self.smoothing, dy)?,
        };
        grads.accumulate(self.logits, dz)
    }
}

#[cfg(test)]
// Tolerances: 1e-12 for f64 losses of O(1) logits (rounding ~1e-15); 1e-9 where the logits
// are ~1000 (f64's spacing there is 1.1e-13, and the log-sum-exp subtracts them).
mod tests {
    use super::*;
    use crate::gradcheck::{GradCheck, random_params};

    #[test]
    fn equal_logits_give_ln_k() {
        let z = Tensor::new(&[2, 10], vec![0.7f64; 20]).unwrap();
        let (l, _) = forward(&z, &[3, 9], 0.0).unwrap();
        assert!((l.scalar().unwrap() - 10f64.ln()).abs() < 1e-12);
        // With smoothing, still ln K: every class has the same log-probability.
        let (l, _) = forward(&z, &[3, 9], 0.3).unwrap();
        assert!((l.scalar().unwrap() - 10f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn smoothing_matches_the_direct_formula_and_is_stable() {
        let z = Tensor::new(&[1, 3], vec![1000.0f64, 1001.0, 998.0]).unwrap();
        let (l, _) = forward(&z, &[0], 0.1).unwrap();
        let zs = [1000.0f64, 1001.0, 998.0];
        let lse = 1001.0 + zs.iter().map(|v| (v - 1001.0).exp()).sum::<f64>().ln();
        let logp: Vec<f64> = zs.iter().map(|v| v - lse).collect();
        let want = -(0.9 + 0.1 / 3.0) * logp[0] - (0.1 / 3.0) * (logp[1] + logp[2]);
        assert!((l.scalar().unwrap() - want).abs() < 1e-9, "{} vs {want}", l.scalar().unwrap());
    }

    #[test]
    fn f32_agrees_with_f64() {
        let z = random_params(&[&[8, 10]], 3).remove(0);
        let labels = [0u32, 9, 3, 3, 5, 1, 7, 2];
        let dl = Tensor::new(&[1], vec![1.0f64]).unwrap();
        let (l64, p64) = forward(&z, &labels, 0.2).unwrap();
        let (l32, p32) = forward(&z.to_dtype(DType::F32), &labels, 0.2).unwrap();
        // exp/ln of O(1) values in f32: relative error ~1e-7 per step, a few steps per element.
        assert!((l32.scalar().unwrap() - l64.scalar().unwrap()).abs() < 1e-5);
        assert!(p32.max_abs_diff(&p64).unwrap() < 1e-6);
        let d64 = backward(&p64, &labels, 0.2, &dl).unwrap();
        let d32 = backward(&p32, &labels, 0.2, &dl.to_dtype(DType::F32)).unwrap();
        assert!(d32.max_abs_diff(&d64).unwrap() < 1e-6);
    }

    #[test]
    fn gradient_with_and_without_smoothing() {
        for s in [0.0, 0.2] {
            let ps = random_params(&[&[4, 5]], 1);
            let labels = [0u32, 4, 2, 2];
            GradCheck::default()
                .run(&ps, |g| {
                    let z = g.param(0)?;
                    softmax_cross_entropy(g, z, &labels, s)
                })
                .unwrap();
        }
    }

    #[test]
    fn bad_labels_are_errors() {
        let z = random_params(&[&[2, 3]], 2).remove(0);
        assert!(forward(&z, &[0, 3], 0.0).unwrap_err().to_string().contains("label 3"));
        assert!(forward(&z, &[0], 0.0).is_err());
        assert!(forward(&z, &[0, 1], 1.5).is_err());
    }
}
