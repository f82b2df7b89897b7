//! The training step, the epoch loop and the test-set evaluation.

use crate::batches::{self, Normalization};
use crate::ema::Ema;
use crate::graph::StepGraph;
use crate::pipeline::{Batch, Pipeline};
use crate::resnet::ResNet9;
use crate::schedule::OneCycle;
use crate::{Error, Result};
use data::Split;
use data::augment::AugParams;
use ops::Graph;
use ops::cross_entropy::DeviceLabels;
use ops::metrics::DeviceMeter;
use ops::sgd::{self, Sgd, SgdState};
use rand::SeedableRng;
use std::collections::HashMap;
use std::time::Instant;

/// The recipe's knobs. Defaults are the assignment's recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Train on the first N training images only.
    pub subset: Option<usize>,
    pub width: f64,
    /// Multiplier of the logits; 0.125 by default (D. Page's ResNet-9, see the CLI's `--out-scale`).
    pub out_scale: f64,
    pub peak_epoch: usize,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub lr_min: f64,
    pub lr_max: f64,
    /// Mixed precision on the GPU: bf16 convolutions, BN inputs/outputs, ReLU, pooling and
    /// residual adds, with f32 parameters, optimizer, BN statistics, linear layer and loss.
    pub bf16: bool,
    /// NHWC ("channels last") activations and conv weights on the GPU.
    pub channels_last: bool,
    /// Batch norm and the ReLU after it as one op, in training and evaluation
    /// (`ops::batch_norm_relu`: our kernels on the GPU instead of cuDNN's batch norm and a ReLU).
    pub fused_bn_relu: bool,
    /// With the fused batch norm + ReLU, keep the residual add a separate op instead of part of
    /// the block's last batch norm + ReLU (to measure what that fusion gains).
    pub separate_residual_add: bool,
    /// Also evaluate with flip test-time augmentation (see [`evaluate`]): the log and the
    /// metrics then carry both test accuracies.
    pub tta: bool,
    /// Cutout's 8x8 square always wholly inside the image (D. Page's), instead of centred
    /// anywhere and clipped at the border (see `data::augment`).
    pub cutout_inside: bool,
    /// Evaluate and save the exponential moving average of the weights (`crate::ema`, D.
    /// Page's) instead of the trained weights; training itself is unchanged.
    pub ema: bool,
}

/// The most epochs a run may ask for (far beyond any one-cycle run of this network; it keeps
/// the schedule's step counts far from overflow).
pub const MAX_EPOCHS: usize = 10_000;

/// The one-cycle's bounds: 0 <= LRMIN <= LRMAX and 0 < LRMAX < infinity (LRMIN 0 is D. Page's
/// schedule, 0 -> 0.4 -> 0, whose first step then moves nothing); NaN fails.
pub fn check_lrs(lr_min: f64, lr_max: f64) -> Result<()> {
    if lr_max > 0.0 && lr_max.is_finite() && lr_min >= 0.0 && lr_min <= lr_max {
        Ok(())
    } else {
        Err(Error::Invalid(format!("need 0 <= LRMIN <= LRMAX and LRMAX > 0, got LRMIN={lr_min} LRMAX={lr_max}")))
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 24,
            batch_size: 512,
            seed: 0,
            subset: None,
            width: 1.0,
            out_scale: 0.125,
            peak_epoch: 5,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            label_smoothing: 0.0,
            lr_min: 0.0,
            lr_max: 0.0,
            bf16: false,
            channels_last: false,
            fused_bn_relu: false,
            separate_residual_add: false,
            tta: false,
            cutout_inside: false,
            ema: false,
        }
    }
}

impl TrainConfig {
    /// Refuse settings no run can train with, naming the flag, before anything is written.
    /// The LRs are checked only when `lrs_given` (otherwise the range test sets them: see
    /// [`check_lrs`]).
    pub fn check(&self, lrs_given: bool) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid(msg));
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("--batch-size and --epochs must be at least 1".into());
        }
        if self.epochs > MAX_EPOCHS {
            return bad(format!("--epochs must be at most {MAX_EPOCHS}, got {}", self.epochs));
        }
        if self.subset == Some(0) {
            return bad("--subset must be at least 1 (it is the number of training images)".into());
        }
        let images = self.subset.unwrap_or(data::cifar::TRAIN_RECORDS).min(data::cifar::TRAIN_RECORDS);
        if self.batch_size > images {
            return bad(format!("--batch-size {} is more than the {images} training images", self.batch_size));
        }
        crate::resnet::check_width(self.width)?;
        if !(self.out_scale > 0.0 && self.out_scale.is_finite()) {
            return bad(format!("--out-scale must be a positive number, got {}", self.out_scale));
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return bad(format!("--label-smoothing must be in [0, 1], got {}", self.label_smoothing));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("--momentum must be in [0, 1), got {}", self.momentum));
        }
        if self.nesterov && self.momentum == 0.0 {
            return bad("Nesterov momentum needs --momentum above 0 (or --no-nesterov)".into());
        }
        if self.peak_epoch == 0 || self.peak_epoch > MAX_EPOCHS {
            return bad(format!("--peak-epoch must be between 1 and {MAX_EPOCHS}, got {}", self.peak_epoch));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!("--weight-decay must be a number >= 0, got {}", self.weight_decay));
        }
        if lrs_given { check_lrs(self.lr_min, self.lr_max) } else { Ok(()) }
    }

    /// As string pairs, stored in the optimizer checkpoint's metadata.
    pub fn to_meta(&self) -> HashMap<String, String> {
        HashMap::from([
            ("epochs".into(), self.epochs.to_string()),
            ("batch_size".into(), self.batch_size.to_string()),
            ("seed".into(), self.seed.to_string()),
            ("subset".into(), self.subset.map(|s| s.to_string()).unwrap_or_default()),
            ("width".into(), self.width.to_string()),
            ("out_scale".into(), self.out_scale.to_string()),
            ("peak_epoch".into(), self.peak_epoch.to_string()),
            ("momentum".into(), self.momentum.to_string()),
            ("nesterov".into(), self.nesterov.to_string()),
            ("weight_decay".into(), self.weight_decay.to_string()),
            ("label_smoothing".into(), self.label_smoothing.to_string()),
            ("lr_min".into(), self.lr_min.to_string()),
            ("lr_max".into(), self.lr_max.to_string()),
            ("bf16".into(), self.bf16.to_string()),
            ("channels_last".into(), self.channels_last.to_string()),
            ("fused_bn_relu".into(), self.fused_bn_relu.to_string()),
            ("separate_residual_add".into(), self.separate_residual_add.to_string()),
            ("tta".into(), self.tta.to_string()),
            ("cutout_inside".into(), self.cutout_inside.to_string()),
            ("ema".into(), self.ema.to_string()),
        ])
    }

    /// Inverse of [`TrainConfig::to_meta`].
    pub fn from_meta(m: &HashMap<String, String>) -> Result<TrainConfig> {
        fn get<T: std::str::FromStr>(m: &HashMap<String, String>, k: &str) -> Result<T> {
            m.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Invalid(format!("the checkpoint's metadata has no valid '{k}'")))
        }
        let subset = match m.get("subset").map(String::as_str) {
            None | Some("") => None,
            Some(_) => Some(get(m, "subset")?),
        };
        Ok(TrainConfig {
            epochs: get(m, "epochs")?,
            batch_size: get(m, "batch_size")?,
            seed: get(m, "seed")?,
            subset,
            width: get(m, "width")?,
            out_scale: get(m, "out_scale")?,
            peak_epoch: get(m, "peak_epoch")?,
            momentum: get(m, "momentum")?,
            nesterov: get(m, "nesterov")?,
            weight_decay: get(m, "weight_decay")?,
            label_smoothing: get(m, "label_smoothing")?,
            lr_min: get(m, "lr_min")?,
            lr_max: get(m, "lr_max")?,
            // Absent in checkpoints written before mixed precision existed.
            bf16: if m.contains_key("bf16") { get(m, "bf16")? } else { false },
            channels_last: if m.contains_key("channels_last") { get(m, "channels_last")? } else { false },
            fused_bn_relu: if m.contains_key("fused_bn_relu") { get(m, "fused_bn_relu")? } else { false },
            separate_residual_add: if m.contains_key("separate_residual_add") { get(m, "separate_residual_add")? } else { false },
            tta: if m.contains_key("tta") { get(m, "tta")? } else { false },
            cutout_inside: if m.contains_key("cutout_inside") { get(m, "cutout_inside")? } else { false },
            ema: if m.contains_key("ema") { get(m, "ema")? } else { false },
        })
    }

    /// The element type of the network's convolutional trunk (see `Arch::compute`).
    pub fn compute_dtype(&self) -> Option<engine::DType> {
        self.bf16.then_some(engine::DType::BF16)
    }

    /// Set the network's trunk type and layout from this configuration.
    pub fn apply_to(&self, arch: &mut crate::resnet::Arch) {
        arch.compute = self.compute_dtype();
        arch.layout = if self.channels_last { engine::Layout::Nhwc } else { engine::Layout::Nchw };
        arch.fuse_bn_relu = self.fused_bn_relu;
        arch.fuse_residual = self.fused_bn_relu && !self.separate_residual_add;
    }

    /// The SGD settings at learning rate `lr`.
    pub fn sgd(&self, lr: f64) -> Sgd {
        Sgd { lr, momentum: self.momentum, dampening: 0.0, weight_decay: self.weight_decay, nesterov: self.nesterov }
    }

    /// Number of training images used.
    pub fn train_len(&self, split: &Split) -> usize {
        self.subset.map_or(split.len(), |s| s.min(split.len()))
    }

    /// Batches per epoch (the last partial batch is kept).
    pub fn steps_per_epoch(&self, split: &Split) -> usize {
        self.train_len(split).div_ceil(self.batch_size)
    }

    /// The one-cycle schedule of this run.
    pub fn schedule(&self, split: &Split) -> OneCycle {
        OneCycle {
            lr_min: self.lr_min,
            lr_max: self.lr_max,
            steps_per_epoch: self.steps_per_epoch(split),
            epochs: self.epochs,
            peak_epoch: self.peak_epoch,
        }
    }
}

/// Loss and correct-prediction count of one training step.
#[derive(Clone, Copy, Debug)]
pub struct StepResult {
    pub loss: f64,
    pub correct: usize,
}

/// Forward in training mode (BN batch statistics, running statistics updated), the mean
/// softmax cross-entropy, and backward: the loss `[1]` and the logits, on the batch's
/// device, and one gradient per parameter, for `ops::sgd`: on the GPU's fast path a
/// convolution weight's gradient is its bf16 channels-last copy's, which the update reads
/// as it is.
pub(crate) fn forward_backward(
    model: &mut ResNet9,
    x: engine::Tensor,
    labels: &[u32],
    device_labels: Option<DeviceLabels>,
    cfg: &TrainConfig,
    profiler: Option<engine::profile::Profiler>,
) -> Result<Step> {
    let target = model.arch.copy_target();
    forward_backward_copies(model, x, labels, device_labels, cfg, profiler, target, CopyGrads::AsTheyAre)
}

/// What becomes of the gradients of the convolution weights' compute copies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CopyGrads {
    /// They stand for the weights' own (`ops::sgd` reads them as they are).
    AsTheyAre,
    /// Turned into the weights' own type and layout (`ops::weight_copy::grads_to_master`).
    ToMaster,
}

/// The loss, the logits and one gradient per parameter of a training-mode step on `x`, with
/// the weights' compute copies made in `target` (all at once by `ops::weight_copy`, as on
/// the GPU's fast path) or not (`None`: each unit converts its weight on the tape): for the
/// tests that compare the two.
pub fn step_gradients(
    model: &mut ResNet9,
    x: engine::Tensor,
    labels: &[u32],
    cfg: &TrainConfig,
    target: Option<(engine::DType, engine::Layout)>,
) -> Result<(engine::Tensor, engine::Tensor, Vec<Option<engine::Tensor>>)> {
    let s = forward_backward_copies(model, x, labels, None, cfg, None, target, CopyGrads::ToMaster)?;
    Ok((s.loss, s.logits, s.grads))
}

/// [`forward_backward`], with the convolution weights' compute copies made in `target`
/// (type, layout) before the forward, all at once, and their gradients standing for the
/// weights' own after the backward, as they are or turned into the weights' type and layout
/// all at once (`ops::weight_copy`; `copy_grads`), where `target` is set; without, each unit
/// records the conversion of its weight (if any).
#[allow(clippy::too_many_arguments)]
fn forward_backward_copies(
    model: &mut ResNet9,
    x: engine::Tensor,
    labels: &[u32],
    device_labels: Option<DeviceLabels>,
    cfg: &TrainConfig,
    mut profiler: Option<engine::profile::Profiler>,
    target: Option<(engine::DType, engine::Layout)>,
    copy_grads: CopyGrads,
) -> Result<Step> {
    let copies = match target {
        Some(t) => model.weight_copies(t)?,
        None => Vec::new(),
    };
    if let (Some(p), Some(_)) = (profiler.as_mut(), target) {
        p.mark("weight copies forward");
    }
    let n_params = model.params.len();
    let mut g = Graph::with_extra(&model.params, &copies);
    if let Some(p) = profiler {
        g.set_profiler(p);
    }
    let input = g.input(x);
    let first_copy = target.map(|_| n_params);
    let logits = model.arch.forward_with_copies(&mut g, input, true, &mut model.bn, first_copy)?;
    let loss = cross_entropy(&mut g, logits, labels, device_labels, cfg.label_smoothing)?;
    // Each activation is freed once the walk has passed it (see `Tape::backward_releasing`):
    // the step's peak memory is then about the activations alone.
    let mut grads = g.backward_releasing(loss, &[loss, logits])?.into_param_grads(n_params + copies.len())?;
    if target.is_some() {
        // The copies' gradients (last) become the weights' own.
        let of_copies = grads.split_off(n_params);
        let of_copies: Vec<engine::Tensor> =
            of_copies.into_iter().map(|t| t.ok_or_else(|| Error::Invalid("a convolution weight's copy got no gradient".into()))).collect::<Result<_>>()?;
        let own = match copy_grads {
            CopyGrads::AsTheyAre => of_copies,
            CopyGrads::ToMaster => ops::weight_copy::grads_to_master(&of_copies.iter().collect::<Vec<_>>())?,
        };
        for (i, m) in model.arch.conv_weights().into_iter().zip(own) {
            grads[i] = Some(m);
        }
        if copy_grads == CopyGrads::ToMaster {
            g.mark("weight copies backward");
        }
    }
    let missing = || Error::Invalid("the tape lost an output".into());
    let loss = g.take_value(loss).ok_or_else(missing)?;
    let logits = g.take_value(logits).ok_or_else(missing)?;
    Ok(Step { loss, logits, grads, profiler: g.take_profiler() })
}

/// What [`forward_backward`] returns: the loss `[1]` and logits on the batch's device, one
/// gradient per parameter, and the profiler if one was given.
pub(crate) struct Step {
    pub(crate) loss: engine::Tensor,
    pub(crate) logits: engine::Tensor,
    pub(crate) grads: Vec<Option<engine::Tensor>>,
    pub(crate) profiler: Option<engine::profile::Profiler>,
}

/// One SGD step on a batch, reading the loss back: forward in training mode, mean softmax
/// cross-entropy, backward, update at `lr`. A non-finite loss is an error and leaves the
/// parameters untouched (the BN running statistics have seen the batch).
pub fn train_step(model: &mut ResNet9, state: &mut SgdState, batch: Batch, lr: f64, cfg: &TrainConfig) -> Result<StepResult> {
    let Batch { x, labels, device_labels } = batch;
    let Step { loss, logits, grads, .. } = forward_backward(model, x, &labels, device_labels, cfg, None)?;
    let loss_value = loss.scalar()?;
    if !loss_value.is_finite() {
        return Err(Error::Training(format!("the loss is {loss_value} (not finite)")));
    }
    let (correct, _) = batches::count_correct(&logits, &labels);
    sgd::step(&mut model.params, &grads, state, &cfg.sgd(lr))?;
    Ok(StepResult { loss: loss_value, correct })
}

/// One SGD step on a GPU batch without waiting for it: the loss and the correct count are
/// recorded in slot `b` of `meter`, read later. A non-finite loss is seen when the meter is
/// read, after the update (training then stops; the last checkpoint is intact).
pub fn train_step_metered(model: &mut ResNet9, state: &mut SgdState, batch: Batch, lr: f64, cfg: &TrainConfig, meter: &mut DeviceMeter, b: usize) -> Result<()> {
    let Batch { x, labels, device_labels } = batch;
    let dl = device_labels.ok_or_else(|| Error::Invalid("a metered step needs the labels on the device".into()))?;
    let Step { loss, logits, grads, .. } = forward_backward(model, x, &labels, Some(dl.clone()), cfg, None)?;
    meter.record(b, &loss, &logits, &dl)?;
    sgd::step(&mut model.params, &grads, state, &cfg.sgd(lr))?;
    Ok(())
}

/// How often (in steps) a GPU epoch polls its device-side statistics for the progress bar
/// (a poll never waits for the GPU: it reads the batches that have finished).
pub const PROGRESS_EVERY: usize = 8;

/// One training step (batch assembly included) with every operation marked: the time
/// per operation (GPU time on a GPU, from CUDA events; see `engine::profile`). Batch `b`
/// of the epoch begun on `pipeline` is used. With `by_kernel`, each operation's time is also
/// split launch by launch (our kernels, cuDNN's and cuBLAS's calls; what comes before an
/// operation's first launch is `other`): `Profile::kernels` (see
/// `engine::profile::Profiler::with_kernels`; on the CPU there are no kernel rows).
#[allow(clippy::too_many_arguments)]
pub fn profile_step(
    model: &mut ResNet9,
    state: &mut SgdState,
    split: &Split,
    pipeline: &mut Pipeline,
    order: &[u32],
    params: &[AugParams],
    range: std::ops::Range<usize>,
    norm: Normalization,
    lr: f64,
    cfg: &TrainConfig,
    by_kernel: bool,
) -> Result<engine::profile::Profile> {
    let device = model.device();
    device.synchronize()?;
    let mut prof = if by_kernel { engine::profile::Profiler::with_kernels(&device)? } else { engine::profile::Profiler::new(&device)? };
    let Batch { x, labels, device_labels } = pipeline.train_batch(split, order, params, range, norm)?;
    prof.mark("data: augment batch");
    let step = forward_backward(model, x, &labels, device_labels, cfg, Some(prof))?;
    let mut prof = step.profiler.ok_or_else(|| Error::Invalid("the profiler went missing".into()))?;
    let loss_value = step.loss.scalar()?;
    batches::count_correct(&step.logits, &labels);
    prof.mark("host: read loss and logits");
    if !loss_value.is_finite() {
        return Err(Error::Training(format!("the loss is {loss_value} (not finite)")));
    }
    let grads = step.grads;
    sgd::step(&mut model.params, &grads, state, &cfg.sgd(lr))?;
    prof.mark("sgd update");
    Ok(prof.finish()?)
}

/// The mean cross-entropy, with the labels on the logits' device.
fn cross_entropy(g: &mut Graph<'_>, logits: ops::Var, labels: &[u32], device_labels: Option<DeviceLabels>, s: f64) -> Result<ops::Var> {
    Ok(match device_labels {
        Some(d) => ops::cross_entropy::softmax_cross_entropy_on_device(g, logits, d, s)?,
        None => ops::cross_entropy::softmax_cross_entropy(g, logits, labels, s)?,
    })
}

/// The augmentation parameters of every image of an epoch, from the run's seed; with
/// `cutout_inside`, Cutout's square always wholly inside the image (see `data::augment`).
pub fn epoch_aug_params(seed: u64, epoch: usize, n: usize, cutout_inside: bool) -> Vec<AugParams> {
    // A stream distinct from the shuffle's: mix the epoch into the seed.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (epoch as u64 + 1));
    let sample = if cutout_inside { AugParams::sample_cutout_inside } else { AugParams::sample };
    (0..n).map(|_| sample(&mut rng)).collect()
}

/// What one epoch of training measured.
#[derive(Clone, Copy, Debug)]
pub struct EpochStats {
    pub loss: f64,
    pub accuracy: f64,
    pub seconds: f64,
    /// LR of the epoch's last step.
    pub last_lr: f64,
}

/// Train one epoch (`epoch` counts from 0). `on_step(step_in_epoch, lr, running_loss,
/// running_accuracy)` is called for the progress bar: after every step on the CPU; on the GPU
/// when a poll (every few steps) finds finished batches, and at the end of the epoch. With `ema`, the moving
/// average of the weights is offered every step's result ([`Ema::after_step`]).
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    model: &mut ResNet9,
    state: &mut SgdState,
    split: &Split,
    pipeline: &mut Pipeline,
    norm: Normalization,
    cfg: &TrainConfig,
    epoch: usize,
    mut graph: Option<&mut StepGraph>,
    mut ema: Option<&mut Ema>,
    mut on_step: impl FnMut(usize, f64, f64, f64),
) -> Result<EpochStats> {
    let start = Instant::now();
    let n = cfg.train_len(split);
    let order = data::epoch_order(n, cfg.seed, epoch);
    let params = epoch_aug_params(cfg.seed, epoch, n, cfg.cutout_inside);
    let schedule = cfg.schedule(split);
    let spe = schedule.steps_per_epoch;
    let (mut loss_sum, mut correct, mut seen, mut last_lr) = (0.0, 0usize, 0usize, 0.0);
    pipeline.begin_epoch(split, &order, &params)?;
    if let (Some(sg), Pipeline::Gpu(g)) = (graph.as_deref_mut(), &*pipeline) {
        let lrs: Vec<f64> = (0..spe).map(|b| schedule.lr(epoch * spe + b)).collect();
        sg.begin_epoch(g, &lrs)?;
    }
    // On the GPU the statistics stay on the device: in the captured step's meter, or in one
    // for this epoch.
    let mut local_meter = match (&*pipeline, &graph) {
        (Pipeline::Gpu(g), None) => Some(DeviceMeter::new(g.device(), spe)?),
        _ => None,
    };
    let batch_len = |b: usize| ((b + 1) * cfg.batch_size).min(n) - b * cfg.batch_size;
    let at = |b: usize, e: Error| Error::Training(format!("epoch {}, batch {}: {e}", epoch + 1, b + 1));
    for b in 0..spe {
        let range = b * cfg.batch_size..((b + 1) * cfg.batch_size).min(n);
        // The last, partial batch runs in the full batches' memory blocks (see `best_fit`).
        let _fit = if range.len() < cfg.batch_size { best_fit(&model.device()) } else { None };
        let lr = schedule.lr(epoch * spe + b);
        last_lr = lr;
        let meter = match (graph.as_deref_mut(), local_meter.as_mut()) {
            (Some(sg), _) => {
                sg.step(b, model, state, split, pipeline, &order, &params, range.clone(), norm, lr, cfg).map_err(|e| at(b, e))?;
                Some(&mut sg.meter)
            }
            (None, Some(m)) => {
                let batch = pipeline.train_batch(split, &order, &params, range.clone(), norm)?;
                train_step_metered(model, state, batch, lr, cfg, m, b).map_err(|e| at(b, e))?;
                Some(m)
            }
            (None, None) => None,
        };
        match meter {
            None => {
                let batch = pipeline.train_batch(split, &order, &params, range, norm)?;
                let r = train_step(model, state, batch, lr, cfg).map_err(|e| at(b, e))?;
                loss_sum += r.loss * batch_len(b) as f64;
                correct += r.correct;
                seen += batch_len(b);
                on_step(b, lr, loss_sum / seen as f64, 100.0 * correct as f64 / seen as f64);
            }
            Some(m) => {
                let last = b + 1 == spe;
                // Mid-epoch: whatever batches have finished (never waits); at the end: all.
                let read = if last { Some(m.read(spe)?) } else if (b + 1) % PROGRESS_EVERY == 0 { m.poll()? } else { None };
                if let Some((losses, counts)) = read {
                    if let Some((i, l)) = losses.iter().enumerate().find(|(_, l)| !l.is_finite()) {
                        return Err(at(i, Error::Training(format!("the loss is {l} (not finite)"))));
                    }
                    loss_sum = losses.iter().enumerate().map(|(i, &l)| l as f64 * batch_len(i) as f64).sum();
                    correct = counts.iter().map(|&c| c as usize).sum();
                    seen = (0..losses.len()).map(batch_len).sum();
                    on_step(losses.len() - 1, lr, loss_sum / seen.max(1) as f64, 100.0 * correct as f64 / seen.max(1) as f64);
                }
            }
        }
        if let Some(e) = ema.as_deref_mut() {
            e.after_step(epoch * spe + b + 1, model).map_err(|e| at(b, e))?;
        }
    }
    Ok(EpochStats {
        loss: loss_sum / seen.max(1) as f64,
        accuracy: 100.0 * correct as f64 / seen.max(1) as f64,
        seconds: start.elapsed().as_secs_f64(),
        last_lr,
    })
}

/// Test-set results.
#[derive(Clone, Debug)]
pub struct EvalStats {
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
    pub correct: usize,
    pub total: usize,
    /// (record index, predicted class) of every misclassified image (plain predictions).
    pub misclassified: Vec<(usize, u32)>,
    /// With flip test-time augmentation: the loss and correct count of the mean of the
    /// logits of each image and of its mirror image.
    pub tta: Option<TtaStats>,
}

/// The test-set figures of flip test-time augmentation (see [`evaluate`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TtaStats {
    /// Mean cross-entropy of the averaged logits.
    pub loss: f64,
    pub correct: usize,
}

impl EvalStats {
    /// Accuracy in percent.
    pub fn accuracy(&self) -> f64 {
        100.0 * self.correct as f64 / self.total.max(1) as f64
    }

    /// Accuracy with flip test-time augmentation in percent, if it was measured.
    pub fn tta_accuracy(&self) -> Option<f64> {
        self.tta.map(|t| 100.0 * t.correct as f64 / self.total.max(1) as f64)
    }
}

/// On a GPU, until the value is dropped: allocations that find no free block of their exact
/// size may take one of up to twice it (`engine::cuda::CudaDevice::best_fit`). For the work
/// whose sizes differ from a full training step's: the partial batch, the evaluation. (The
/// training step keeps exact fit: that is what makes its steady state allocation-free.)
fn best_fit(device: &engine::Device) -> Option<engine::cuda::BestFit> {
    match device {
        engine::Device::Cuda(d) => Some(d.best_fit()),
        engine::Device::Cpu => None,
    }
}

/// Loss and correct counts of the batches of one evaluation: on the device (read once at
/// the end) or added up on the host.
struct Tally {
    meter: Option<DeviceMeter>,
    /// Sum of batch mean losses weighted by batch size, and correct predictions (host).
    loss_sum: f64,
    correct: usize,
}

impl Tally {
    fn new(pipeline: &Pipeline, on_device: bool, batches: usize) -> Result<Tally> {
        let meter = match pipeline {
            Pipeline::Gpu(g) if on_device => Some(DeviceMeter::new(g.device(), batches)?),
            _ => None,
        };
        Ok(Tally { meter, loss_sum: 0.0, correct: 0 })
    }

    /// Batch `b`: the mean loss of `logits` `[n, 10]` against the labels, and the correct
    /// count. Returns the host's predictions when they were computed on the host.
    fn add(&mut self, b: usize, logits: engine::Tensor, labels: &[u32], device_labels: Option<DeviceLabels>) -> Result<Option<Vec<u32>>> {
        let mut g = Graph::new(&[]);
        let logits = g.input(logits);
        let loss = cross_entropy(&mut g, logits, labels, device_labels.clone(), 0.0)?;
        match (&mut self.meter, &device_labels) {
            (Some(m), Some(dl)) => {
                m.record(b, g.value(loss), g.value(logits), dl)?;
                Ok(None)
            }
            _ => {
                self.loss_sum += g.value(loss).scalar()? * labels.len() as f64;
                let (c, preds) = batches::count_correct(g.value(logits), labels);
                self.correct += c;
                Ok(Some(preds))
            }
        }
    }

    /// The summed loss (weighted by batch sizes `lens`) and the correct count.
    fn finish(self, lens: &[usize]) -> Result<(f64, usize)> {
        match &self.meter {
            Some(m) => {
                let (losses, counts) = m.read(lens.len())?;
                let loss = losses.iter().zip(lens).map(|(&l, &k)| l as f64 * k as f64).sum();
                Ok((loss, counts.iter().map(|&c| c as usize).sum()))
            }
            None => Ok((self.loss_sum, self.correct)),
        }
    }
}

/// The convolution weights' compute copies for an evaluation, made once for all its batches
/// (empty where the network converts each weight in its unit; see `Arch::copy_target`).
fn eval_copies(model: &ResNet9) -> Result<Vec<engine::Tensor>> {
    match model.arch.copy_target() {
        Some(t) => model.weight_copies(t),
        None => Ok(Vec::new()),
    }
}

/// The logits `[n, 10]` of a batch in eval mode (BN running statistics), with the weights'
/// compute `copies` if any (from [`eval_copies`]); the forward's tape is dropped here, so only
/// one batch's activations are alive at a time.
fn eval_logits(model: &mut ResNet9, x: engine::Tensor, copies: &[engine::Tensor]) -> Result<engine::Tensor> {
    Ok(eval_forward(model, x, copies, None)?.0)
}

/// [`eval_logits`], with every operation marked on `profiler` if one is given (handed back).
fn eval_forward(
    model: &mut ResNet9,
    x: engine::Tensor,
    copies: &[engine::Tensor],
    profiler: Option<engine::profile::Profiler>,
) -> Result<(engine::Tensor, Option<engine::profile::Profiler>)> {
    let mut g = Graph::with_extra(&model.params, copies);
    if let Some(p) = profiler {
        g.set_profiler(p);
    }
    let input = g.input(x);
    let first = (!copies.is_empty()).then_some(model.params.len());
    let logits = model.arch.forward_with_copies(&mut g, input, false, &mut model.bn, first)?;
    let logits = g.take_value(logits).ok_or_else(|| Error::Invalid("the tape lost the logits".into()))?;
    Ok((logits, g.take_profiler()))
}

/// One evaluation batch (test records `start..end`, eval mode) with every operation marked,
/// as [`profile_step`] does for a training step: the time per operation of the batch's
/// assembly and forward pass, and of reading its logits back (not the weights' copies, which
/// an evaluation makes once for all its batches: they are made before the timing starts).
pub fn profile_eval_batch(model: &mut ResNet9, split: &Split, pipeline: &mut Pipeline, start: usize, end: usize, norm: Normalization) -> Result<engine::profile::Profile> {
    let device = model.device();
    let copies = eval_copies(model)?;
    device.synchronize()?;
    let mut prof = engine::profile::Profiler::new(&device)?;
    let Batch { x, .. } = pipeline.test_batch(split, start, end, norm, false)?;
    prof.mark("data: test batch");
    let (logits, prof) = eval_forward(model, x, &copies, Some(prof))?;
    let mut prof = prof.ok_or_else(|| Error::Invalid("the profiler went missing".into()))?;
    logits.to_f32_vec();
    prof.mark("host: read logits");
    Ok(prof.finish()?)
}

/// Evaluate on a whole split in eval mode (BN running statistics), in batches. With
/// `predictions`, every misclassified image is listed (the logits come back to the host
/// batch by batch); without, on a GPU, the loss and correct counts stay on the device until
/// one read at the end.
///
/// With `tta` (flip test-time augmentation, as in D. Page, "How to Train Your ResNet 8: Bag
/// of Tricks", myrtle.ai, 2019): each batch is also evaluated mirrored horizontally, and
/// [`EvalStats::tta`] scores the mean of the two logits, `(f(x) + f(flip(x))) / 2`. The plain
/// figures are computed as well, from the same first forward pass.
pub fn evaluate(model: &mut ResNet9, split: &Split, pipeline: &mut Pipeline, norm: Normalization, batch_size: usize, predictions: bool, tta: bool) -> Result<EvalStats> {
    // In the training step's memory blocks, as far as they fit (see `best_fit`).
    let _fit = best_fit(&model.device());
    let n = split.len();
    let batches = n.div_ceil(batch_size.max(1));
    let mut plain = Tally::new(pipeline, !predictions, batches)?;
    let mut flipped = if tta { Some(Tally::new(pipeline, !predictions, batches)?) } else { None };
    let mut misclassified = Vec::new();
    let mut start = 0;
    let mut lens = Vec::new();
    let copies = eval_copies(model)?;
    while start < n {
        let end = (start + batch_size).min(n);
        let b = lens.len();
        let Batch { x, labels, device_labels } = pipeline.test_batch(split, start, end, norm, false)?;
        let logits = eval_logits(model, x, &copies)?;
        if let Some(t) = &mut flipped {
            let mirrored = eval_logits(model, pipeline.test_batch(split, start, end, norm, true)?.x, &copies)?;
            let mean = ops::scale::forward(&ops::add::forward(&logits, &mirrored)?, 0.5)?;
            t.add(b, mean, &labels, device_labels.clone())?;
        }
        if let Some(preds) = plain.add(b, logits, &labels, device_labels)? {
            for (i, (p, l)) in preds.iter().zip(&labels).enumerate() {
                if p != l {
                    misclassified.push((start + i, *p));
                }
            }
        }
        lens.push(end - start);
        start = end;
    }
    let (loss_sum, correct) = plain.finish(&lens)?;
    let tta = match flipped {
        Some(t) => {
            let (loss_sum, correct) = t.finish(&lens)?;
            Some(TtaStats { loss: loss_sum / n.max(1) as f64, correct })
        }
        None => None,
    };
    Ok(EvalStats { loss: loss_sum / n.max(1) as f64, correct, total: n, misclassified, tta })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::{DType, Layout, Tensor};

    /// The recipe round-trips through the checkpoint's metadata, `--cutout-inside` included, and
    /// a checkpoint written before that setting existed reads as Cutout centred anywhere.
    #[test]
    fn settings_round_trip_through_the_metadata() {
        let cfg = TrainConfig { cutout_inside: true, tta: true, ema: true, label_smoothing: 0.2, lr_min: 0.004, lr_max: 0.4, separate_residual_add: true, ..TrainConfig::default() };
        let mut meta = cfg.to_meta();
        assert_eq!(TrainConfig::from_meta(&meta).unwrap(), cfg);
        // Written before --ema existed: the trained weights were evaluated.
        let mut old = meta.clone();
        old.remove("ema");
        assert_eq!(TrainConfig::from_meta(&old).unwrap(), TrainConfig { ema: false, ..cfg.clone() });
        meta.remove("cutout_inside");
        assert_eq!(TrainConfig::from_meta(&meta).unwrap(), TrainConfig { cutout_inside: false, ..cfg.clone() });
        meta.insert("cutout_inside".into(), "maybe".into());
        assert!(TrainConfig::from_meta(&meta).unwrap_err().to_string().contains("cutout_inside"));
    }

    /// The weights' compute copies made outside the tape, and their gradients turned back
    /// into the weights' own, change nothing: on the CPU (f32 NCHW copies, the reference path
    /// of `ops::weight_copy`) the loss, the logits and every parameter's gradient are bit for
    /// bit those of the step that uses the weights directly. The copies' gradients must reach
    /// the convolution weights and nothing else.
    #[test]
    fn a_step_with_weight_copies_equals_one_without() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x = Tensor::randn(&[4, 3, 32, 32], DType::F32, 1.0, &mut rng);
        let labels = vec![2u32, 7, 7, 0];
        let cfg = TrainConfig { width: 0.125, ..TrainConfig::default() };
        let step = |target: Option<(DType, Layout)>| {
            let mut net = ResNet9::new(cfg.width, 0.125, DType::F32, &mut rand_chacha::ChaCha8Rng::seed_from_u64(6)).unwrap();
            let s = forward_backward_copies(&mut net, x.clone(), &labels, None, &cfg, None, target, CopyGrads::ToMaster).unwrap();
            let grads: Vec<Vec<f32>> = s.grads.iter().map(|g| g.as_ref().unwrap().to_f32_vec()).collect();
            (s.loss.to_f32_vec(), s.logits.to_f32_vec(), grads, net.arch.conv_weights())
        };
        let (loss, logits, grads, convs) = step(None);
        let (loss_c, logits_c, grads_c, _) = step(Some((DType::F32, Layout::Nchw)));
        assert_eq!(loss, loss_c);
        assert_eq!(logits, logits_c);
        assert_eq!(grads.len(), grads_c.len(), "one gradient per parameter, the copies' folded in");
        for (i, (a, b)) in grads.iter().zip(&grads_c).enumerate() {
            assert_eq!(a, b, "parameter {i} (convolution weight: {})", convs.contains(&i));
        }
        assert_eq!(convs.len(), 8);
    }
}
