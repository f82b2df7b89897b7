//! Stochastic gradient descent with momentum, Nesterov and weight decay,
//! exactly as `torch.optim.SGD` computes it, for each parameter `p` with gradient `g`:
//!
//! ```text
//! d = g + wd·p                                   (weight decay, L2)
//! if momentum ≠ 0:
//!     buf = d                      on the first step (no buffer yet)
//!     buf = momentum·buf + (1 − dampening)·d     afterwards
//!     d = d + momentum·buf         if nesterov
//!     d = buf                      otherwise
//! p = p − lr·d
//! ```
//! Shapes: every buffer has its parameter's shape. Not differentiated: it runs after backward.
//!
//! On the GPU a convolution weight's gradient may also be that of its bf16 channels-last
//! compute copy (`ops::weight_copy`: the same `[K, C, R, S]` shape, stored `[K, R, S, C]`):
//! the kernel reads it in place of the f32 gradient that `weight_copy::grads_to_master` would
//! make from it (the same values: bf16 widens to f32 exactly), one launch and one pass over
//! the gradients fewer per step.

use crate::{DType, Float, Result, Tensor};
use engine::Error;

/// SGD hyper-parameters, with `torch.optim.SGD`'s meaning.
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// Momentum buffers, one per parameter, created on the first step as PyTorch does.
#[derive(Clone, Debug, Default)]
pub struct SgdState {
    pub momentum_buffers: Vec<Option<Tensor>>,
}

/// One update of every parameter that has a gradient (`None` gradients are skipped).
pub fn step(params: &mut [Tensor], grads: &[Option<Tensor>], state: &mut SgdState, cfg: &Sgd) -> Result<()> {
    step_with(params, grads, state, cfg, None)
}

/// [`step`] on CUDA parameters with the LR read from device memory (`lr` `[1]`) when the
/// kernel runs, instead of `cfg.lr`: the update of a training step captured as a CUDA graph,
/// whose replays cannot be given a new LR as an argument. Every parameter must be on the GPU.
pub fn step_with_device_lr(params: &mut [Tensor], grads: &[Option<Tensor>], state: &mut SgdState, cfg: &Sgd, lr: &cudarc::driver::CudaSlice<f32>) -> Result<()> {
    if lr.len() != 1 {
        return Err(Error::shape("sgd", format!("the device LR must be 1 value, got {}", lr.len())));
    }
    let Some(crate::Device::Cuda(dev)) = params.first().map(|p| p.device()) else {
        return Err(Error::Invalid("sgd: a device LR needs the parameters on a GPU".into()));
    };
    if params.iter().any(|p| !p.device().is_cuda()) {
        return Err(Error::Invalid("sgd: a device LR needs every parameter on the GPU".into()));
    }
    step_with(params, grads, state, cfg, Some(engine::cuda::address(lr, dev.stream())))
}

/// [`step`], with the CUDA kernel reading its LR at device address `lr_dev` if given.
fn step_with(params: &mut [Tensor], grads: &[Option<Tensor>], state: &mut SgdState, cfg: &Sgd, lr_dev: Option<u64>) -> Result<()> {
    if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
        return Err(Error::Invalid("Nesterov momentum requires a momentum > 0 and zero dampening".into()));
    }
    if !(cfg.lr >= 0.0 && cfg.momentum >= 0.0 && cfg.weight_decay >= 0.0) {
        return Err(Error::Invalid(format!("invalid SGD settings {cfg:?}")));
    }
    if grads.len() != params.len() {
        return Err(Error::Invalid(format!("{} gradients for {} parameters", grads.len(), params.len())));
    }
    if state.momentum_buffers.is_empty() {
        state.momentum_buffers = vec![None; params.len()];
    }
    if state.momentum_buffers.len() != params.len() {
        return Err(Error::Invalid(format!("{} momentum buffers for {} parameters", state.momentum_buffers.len(), params.len())));
    }
    // Check every gradient and buffer before touching any parameter, so that an error leaves
    // the model and the optimizer state exactly as they were.
    for (i, ((p, g), buf)) in params.iter().zip(grads).zip(&state.momentum_buffers).enumerate() {
        if p.dtype() == DType::BF16 {
            return Err(Error::Invalid(format!("parameter {i} is bf16: parameters are kept in f32 (bf16 copies are made in the forward)")));
        }
        let Some(g) = g else { continue };
        if !is_copy_gradient(p, g) {
            check_like(p, g, "gradient", i)?;
        }
        if p.device().is_cuda() && (p.dtype() != DType::F32 || p.device() != params[0].device()) {
            return Err(Error::Invalid(format!("parameter {i}: the CUDA update takes f32 parameters on one device, got {:?} on {}", p.dtype(), p.device())));
        }
        if let (Some(b), true) = (buf, cfg.momentum != 0.0) {
            check_like(p, b, "momentum buffer", i)?;
        }
    }
    let mut on_gpu = Vec::new();
    for ((p, g), buf) in params.iter_mut().zip(grads).zip(state.momentum_buffers.iter_mut()) {
        let Some(g) = g else { continue };
        if p.device().is_cuda() {
            on_gpu.push((p, g, buf));
            continue;
        }
        match p.dtype() {
            DType::F32 => update::<f32>(p, g, buf, cfg)?,
            DType::F64 => update::<f64>(p, g, buf, cfg)?,
            DType::BF16 => return Err(crate::bf16_unsupported("sgd")),
        }
    }
    if !on_gpu.is_empty() {
        update_cuda(on_gpu, cfg, lr_dev.unwrap_or(0))?;
    }
    Ok(())
}

/// Whether `g` is the gradient of parameter `p`'s bf16 channels-last compute copy, which the
/// CUDA update reads as it is: `p` an f32 NCHW `[K, C, R, S]` on a GPU, `g` bf16 NHWC of the
/// same shape on the same device.
fn is_copy_gradient(p: &Tensor, g: &Tensor) -> bool {
    p.device().is_cuda()
        && p.device() == g.device()
        && p.dtype() == DType::F32
        && p.layout() == engine::Layout::Nchw
        && g.dtype() == DType::BF16
        && g.layout() == engine::Layout::Nhwc
        && p.shape().len() == 4
        && g.shape() == p.shape()
}

/// An error naming parameter `i` unless `t` (its gradient or buffer) has its shape, dtype and
/// memory order (the update is elementwise over the storage: a gradient in another order would
/// be applied permuted).
fn check_like(p: &Tensor, t: &Tensor, what: &str, i: usize) -> Result<()> {
    p.expect_same_kind("sgd", t)?;
    if p.shape() != t.shape() {
        return Err(Error::shape("sgd", format!("parameter {i} has shape {:?} but its {what} has {:?}", p.shape(), t.shape())));
    }
    if p.layout() != t.layout() {
        return Err(Error::shape("sgd", format!("parameter {i} is {:?} but its {what} is {:?}", p.layout(), t.layout())));
    }
    Ok(())
}

fn update<T: Float>(p: &mut Tensor, g: &Tensor, buf: &mut Option<Tensor>, cfg: &Sgd) -> Result<()> {
    let (lr, mom, damp, wd) = (T::of(cfg.lr), T::of(cfg.momentum), T::of(cfg.dampening), T::of(cfg.weight_decay));
    let gs = g.as_slice::<T>()?;
    let first = buf.is_none();
    if cfg.momentum != 0.0 && first {
        *buf = Some(Tensor::zeros(p.shape(), p.dtype()));
    }
    let ps = p.as_mut_slice::<T>()?;
    let mut bs = match buf.as_mut() {
        Some(b) if cfg.momentum != 0.0 => Some(b.as_mut_slice::<T>()?),
        _ => None,
    };
    for i in 0..ps.len() {
        // As PyTorch and the kernel: no weight-decay term at all when it is 0.
        let mut d = if cfg.weight_decay != 0.0 { gs[i] + wd * ps[i] } else { gs[i] };
        if let Some(b) = bs.as_deref_mut() {
            b[i] = if first { d } else { mom * b[i] + (T::one() - damp) * d };
            d = if cfg.nesterov { d + mom * b[i] } else { b[i] };
        }
        ps[i] -= lr * d;
    }
    Ok(())
}

/// Tensors in one `sgd_update_multi` launch (`SGD_MAX_TENSORS` of `ptx/sgd.cu`).
const MAX_TENSORS: usize = 32;

/// The kernel's table of tensors (`SgdTable` of `ptx/sgd.cu`, passed by value). The kernel
/// computes the same formulas as [`update`] in f32, each thread updating [`PER_THREAD`]
/// elements.
#[repr(C)]
#[derive(Clone, Copy)]
struct SgdTable {
    p: [u64; MAX_TENSORS],
    /// f32 gradients, or 0 where `g16` is set.
    g: [u64; MAX_TENSORS],
    buf: [u64; MAX_TENSORS],
    /// 0, or the bf16 channels-last gradient of a compute copy ([`is_copy_gradient`]).
    g16: [u64; MAX_TENSORS],
    n: [u32; MAX_TENSORS],
    first_step: [i32; MAX_TENSORS],
    /// First block of each tensor: prefix sums of its blocks, ⌈n / (256·PER_THREAD)⌉.
    block0: [u32; MAX_TENSORS],
    /// C and R·S of a `g16` gradient `[K, C, R, S]`.
    c16: [u32; MAX_TENSORS],
    rs16: [u32; MAX_TENSORS],
}

/// Elements each thread of `sgd_update_multi` updates (`SGD_PER_THREAD` of the kernel file);
/// a block of THREADS threads covers THREADS·PER_THREAD elements of one tensor.
const PER_THREAD: u32 = 4;
const THREADS: u32 = 256;
// 4 × 32 addresses and 5 × 32 four-byte ints, no padding: the CUDA struct's 1664 bytes.
const _: () = assert!(std::mem::size_of::<SgdTable>() == 1664);

// SAFETY: plain C data with the layout of the CUDA struct (8-byte pointers, then 4-byte ints).
unsafe impl cudarc::driver::DeviceRepr for SgdTable {}

/// Update every CUDA parameter with one `sgd_update_multi` launch per 32 tensors.
/// `items`: (parameter, gradient, momentum buffer) on one device, all f32. `lr_dev`: 0, or the
/// device address of the f32 LR to use instead of `cfg.lr`.
fn update_cuda(items: Vec<(&mut Tensor, &Tensor, &mut Option<Tensor>)>, cfg: &Sgd, lr_dev: u64) -> Result<()> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let mut items = items;
    if lr_dev != 0 && cfg.momentum != 0.0 && items.iter().any(|(_, _, buf)| buf.is_none()) {
        // A graph captures `first_step` too: every replay would be a first step. Checked
        // for every tensor before any buffer is made or any chunk launched, so that the error
        // changes nothing.
        return Err(Error::Invalid("sgd: a step with a device LR (a captured step) needs the momentum buffers made by an earlier step".into()));
    }
    for chunk in items.chunks_mut(MAX_TENSORS) {
        let (none, zero) = ([0u64; MAX_TENSORS], [0u32; MAX_TENSORS]);
        let mut table = SgdTable { p: none, g: none, buf: none, g16: none, n: zero, first_step: [0; MAX_TENSORS], block0: zero, c16: zero, rs16: zero };
        let mut dev = None;
        for (t, (p, g, buf)) in chunk.iter_mut().enumerate() {
            // An f32 parameter, and an f32 gradient unless it is a compute copy's (bf16).
            let copy = is_copy_gradient(p, g);
            let wrong = if p.dtype() != DType::F32 { Some(p.dtype()) } else { (!copy && g.dtype() != DType::F32).then(|| g.dtype()) };
            if let Some(a) = wrong {
                return Err(Error::DType { op: "sgd (CUDA)", a, b: DType::F32 });
            }
            // As the CPU path and PyTorch: a buffer only with momentum, made on its first step.
            table.first_step[t] = i32::from(buf.is_none());
            if buf.is_none() && cfg.momentum != 0.0 {
                **buf = Some(Tensor::zeros(p.shape(), DType::F32).to_device(&p.device())?);
            }
            table.n[t] = crate::cuda::count(p.numel())?;
            table.p[t] = p.cuda_buffer_mut()?.ptr_mut() as u64;
            if copy {
                let sh = g.shape();
                table.g16[t] = g.cuda_buffer()?.ptr() as u64;
                table.c16[t] = crate::cuda::count(sh[1])?;
                table.rs16[t] = crate::cuda::count(sh[2] * sh[3])?;
            } else {
                table.g[t] = g.cuda_buffer()?.ptr() as u64;
            }
            // Null without momentum: the kernel then neither reads nor writes it.
            table.buf[t] = match buf.as_mut() {
                Some(b) if cfg.momentum != 0.0 => b.cuda_buffer_mut()?.ptr_mut() as u64,
                _ => 0,
            };
            dev.get_or_insert_with(|| p.device());
        }
        let Some(crate::Device::Cuda(dev)) = dev else { continue };
        let (block0, blocks) = crate::cuda::block_starts::<MAX_TENSORS>(&table.n[..chunk.len()], THREADS * PER_THREAD);
        table.block0 = block0;
        if blocks == 0 {
            continue;
        }
        let f = crate::cuda::function(&dev, "sgd.cu", "sgd_update_multi")?;
        let (lr, mom, damp, wd) = (cfg.lr as f32, cfg.momentum as f32, cfg.dampening as f32, cfg.weight_decay as f32);
        let (nesterov, count) = (i32::from(cfg.nesterov), chunk.len() as u32);
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(&table).arg(&count).arg(&lr).arg(&lr_dev).arg(&mom).arg(&damp).arg(&wd).arg(&nesterov);
        // One row of blocks, each tensor's after the one before (see `crate::cuda::block_starts`).
        let cfg_launch = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: sgd_update_multi(table, count, lr, lr_ptr, momentum, dampening, wd, nesterov); lr_ptr
        // is null or one f32 on this device (`step_with_device_lr` checks it);
        // every table entry points at n f32 elements of p, g (or n bf16 ones of g16, a
        // [K, C, R, S] shape's [K, R, S, C] order with c16 = C, rs16 = R·S) and buf (shapes and
        // dtypes checked by `step` and above); the tensors stay alive until the stream has run the kernel (they are
        // the model's, the caller's and the optimizer state's, and freed memory is only reused by
        // work queued later on the same stream).
        unsafe { launch.launch(cfg_launch) }.map_err(crate::cuda::launch_err("sgd_update_multi"))?;
    }
    Ok(())
}

#[cfg(test)]
// Tolerances: a few f64 updates of O(1) values, in an order of operations that may differ
// from the hand-written reference's (rounding ~1e-16 each); 1e-14 leaves room.
mod tests {
    use super::*;
    use crate::gradcheck::random_params;

    /// Each tensor's blocks follow the previous tensor's, ⌈n / per_block⌉ of them: an empty
    /// tensor owns none (and starts where the next does), and the total is the grid's size.
    #[test]
    fn block_starts_are_prefix_sums_of_whole_blocks() {
        let (starts, total) = crate::cuda::block_starts::<MAX_TENSORS>(&[1024, 1, 0, 2049, 5], 1024);
        assert_eq!(&starts[..5], &[0, 1, 2, 2, 5]);
        assert_eq!(total, 6);
        assert_eq!(crate::cuda::block_starts::<MAX_TENSORS>(&[0, 0], 1024).1, 0);
        // The ResNet's largest weight, 512·512·3·3, at 256 threads × PER_THREAD.
        assert_eq!(crate::cuda::block_starts::<MAX_TENSORS>(&[2_359_296], THREADS * PER_THREAD).1, 2304);
    }

    /// Three steps written out by hand (the torch formulas, one scalar at a time).
    fn by_hand(p0: f64, gs: [f64; 3], c: &Sgd) -> f64 {
        let (mut p, mut buf) = (p0, None::<f64>);
        for g in gs {
            let mut d = g + c.weight_decay * p;
            if c.momentum != 0.0 {
                let b = match buf {
                    None => d,
                    Some(b) => c.momentum * b + (1.0 - c.dampening) * d,
                };
                buf = Some(b);
                d = if c.nesterov { d + c.momentum * b } else { b };
            }
            p -= c.lr * d;
        }
        p
    }

    #[test]
    fn three_steps_match_the_torch_formulas() {
        let configs = [
            Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false },
            Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: false },
            Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 5e-4, nesterov: true },
            Sgd { lr: 0.2, momentum: 0.8, dampening: 0.3, weight_decay: 1e-2, nesterov: false },
        ];
        let ps = random_params(&[&[2, 3], &[2, 3], &[2, 3], &[2, 3]], 9);
        for c in configs {
            let mut params = vec![ps[0].clone()];
            let mut state = SgdState::default();
            for g in &ps[1..] {
                step(&mut params, &[Some(g.clone())], &mut state, &c).unwrap();
            }
            let got = params[0].to_f64_vec();
            assert_eq!(got.len(), 6);
            for (i, &v) in got.iter().enumerate() {
                let gs = [ps[1].to_f64_vec()[i], ps[2].to_f64_vec()[i], ps[3].to_f64_vec()[i]];
                let want = by_hand(ps[0].to_f64_vec()[i], gs, &c);
                assert!((v - want).abs() < 1e-14, "{c:?}: {v} vs {want}");
            }
        }
    }

    #[test]
    fn missing_gradients_are_skipped_and_errors_reported() {
        let ps = random_params(&[&[3], &[3], &[4]], 1);
        let c = Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: true };
        let mut params = vec![ps[0].clone()];
        let mut state = SgdState::default();
        step(&mut params, &[None], &mut state, &c).unwrap();
        assert_eq!(params[0].to_f64_vec(), ps[0].to_f64_vec());
        assert!(step(&mut params, &[Some(ps[2].clone())], &mut state, &c).is_err());
        assert!(step(&mut params, &[], &mut state, &c).is_err());
        let bad = Sgd { dampening: 0.1, ..c };
        assert!(step(&mut params, &[Some(ps[1].clone())], &mut state, &bad).is_err());
        let bad = Sgd { momentum: 0.0, ..c };
        assert!(step(&mut params, &[Some(ps[1].clone())], &mut state, &bad).is_err());
        let bad = Sgd { lr: -0.1, ..c };
        assert!(step(&mut params, &[Some(ps[1].clone())], &mut state, &bad).is_err());
        assert!(step(&mut params, &[Some(ps[1].to_dtype(DType::F32))], &mut state, &c).is_err());
        assert_eq!(params[0].to_f64_vec(), ps[0].to_f64_vec(), "failed steps change nothing");
        // A compute copy's gradient (bf16, channels-last) is read as it is on a GPU only.
        let w = random_params(&[&[2, 3, 3, 3]], 2).remove(0).to_dtype(DType::F32);
        let copy_grad = w.to_dtype(DType::BF16).with_layout(engine::Layout::Nhwc).unwrap();
        let mut weights = vec![w.clone()];
        assert!(step(&mut weights, &[Some(copy_grad)], &mut SgdState::default(), &c).is_err());
        assert_eq!(weights[0].to_f64_vec(), w.to_f64_vec());
        // A gradient of the parameter's type in another memory order would be applied permuted.
        let permuted = crate::layout::forward(&w, engine::Layout::Nhwc).unwrap();
        let e = step(&mut weights, &[Some(permuted)], &mut SgdState::default(), &c).unwrap_err().to_string();
        assert!(e.contains("parameter 0 is Nchw but its gradient is Nhwc"), "{e}");
        assert_eq!(weights[0].to_f64_vec(), w.to_f64_vec());
    }


    /// A bad gradient for the second parameter, or a momentum buffer of the wrong shape,
    /// is reported before the first parameter is updated.
    #[test]
    fn errors_leave_every_parameter_unchanged() {
        let ps = random_params(&[&[3], &[2, 2], &[3], &[3, 2]], 2);
        let c = Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: false };
        let mut params = vec![ps[0].clone(), ps[1].clone()];
        let mut state = SgdState::default();
        let err = step(&mut params, &[Some(ps[2].clone()), Some(ps[3].clone())], &mut state, &c).unwrap_err();
        assert!(err.to_string().contains("parameter 1"), "{err}");
        assert_eq!(params[0].to_f64_vec(), ps[0].to_f64_vec());

        let mut state = SgdState { momentum_buffers: vec![Some(Tensor::zeros(&[4], DType::F64)), None] };
        let err = step(&mut params, &[Some(ps[2].clone()), Some(ps[1].clone())], &mut state, &c).unwrap_err();
        assert!(err.to_string().contains("momentum buffer"), "{err}");
        assert_eq!(params[0].to_f64_vec(), ps[0].to_f64_vec());
        assert_eq!(params[1].to_f64_vec(), ps[1].to_f64_vec());
    }
}
