//! The training step captured once as a CUDA graph and replayed for every full batch
//! (`--cuda-graph`): one launch per step instead of ~150, and no host work per step.
//!
//! A replay repeats the captured kernels with their captured arguments, so everything
//! that changes from step to step is read from device memory:
//! - the batch number `s`: a device counter, set to 0 when an epoch begins and advanced
//!   by the step itself (`ops::graph_step`);
//! - the batch's record indices, augmentation values and labels: staged at the start
//!   of the step from the epoch's arrays (refilled in place every epoch, so their
//!   addresses stay those of the capture);
//! - the LR: staged from this epoch's table of LRs, read by the SGD kernel;
//! - the loss and correct count: filed in slot `s` of a meter that lives as long as
//!   the graph.
//!
//! Order of a run: the first [`WARMUP_STEPS`] full batches run eagerly (they create the
//! momentum buffers, choose the convolution algorithms and fill the memory pool, none
//! of which a capture may do), the next is captured and launched, the rest are
//! launched. The last, partial batch of an epoch has other shapes and runs eagerly. If
//! a capture fails, that batch runs eagerly and the capture is tried again after one more
//! eager step (the failed capture may have needed memory the pool did not have yet), at
//! most [`CAPTURE_ATTEMPTS`] times; then the run says why and goes on eagerly: nothing is
//! lost.
//!
//! Memory: the blocks the captured step uses are reserved for the graph and lent to the
//! eager work between replays (the partial batch, the evaluation; see `engine::pool`), so
//! a graph costs no memory beyond one step's. A replay is refused while a tensor holds a
//! reserved block; should that ever happen, the batch runs eagerly instead and the run says
//! so once.

use crate::Result;
use crate::batches::Normalization;
use crate::pipeline::{GpuData, Pipeline};
use crate::resnet::ResNet9;
use crate::train::{self, TrainConfig};
use cudarc::driver::CudaSlice;
use engine::cuda::{CudaDevice, DeviceGraph};
use ops::graph_step::{self, EpochArrays, StagedBatch};
use ops::metrics::DeviceMeter;
use ops::sgd::{self, SgdState};
use std::sync::Arc;

/// Full batches run eagerly before the capture. Two: the first step creates the momentum
/// buffers (a first SGD step is a different computation), the second is the steady state.
pub const WARMUP_STEPS: usize = 2;
// One step to create the momentum buffers, one in the steady state: fewer cannot fill the pool.
const _: () = assert!(WARMUP_STEPS >= 2);

/// Failed captures after which the run gives up on the graph.
pub const CAPTURE_ATTEMPTS: usize = 3;

/// What the next full batch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Eager,
    Capture,
    Replay,
}

/// The captured step, its device-side inputs and its meter.
pub struct StepGraph {
    dev: Arc<CudaDevice>,
    /// Batch number of the next replay, on the device.
    step: CudaSlice<u32>,
    /// What the host knows `step` holds (`None`: unknown).
    step_host: Option<usize>,
    /// This epoch's LR of every step.
    lrs: CudaSlice<f32>,
    staged: StagedBatch,
    /// The training statistics of every epoch (one meter: the graph writes to its slots).
    pub meter: DeviceMeter,
    graph: Option<DeviceGraph>,
    /// Addresses of the epoch arrays the graph reads, and their length (also captured).
    captured_with: Option<[u64; 4]>,
    warmup_left: usize,
    /// Captures that failed so far.
    failures: usize,
    /// Why the last capture failed, once no attempt is left (every step then runs eagerly).
    failed: Option<String>,
    /// Messages for the run's log (the capture succeeded, or why it failed), taken by
    /// [`StepGraph::take_notices`].
    notices: Vec<String>,
    /// Replays so far.
    replays: usize,
    /// Full batches run eagerly after the capture because a tensor held a block of the graph.
    eager_instead: usize,
}

impl StepGraph {
    /// For batches of `batch_size` and epochs of `steps_per_epoch` steps on `dev`.
    pub fn new(dev: &Arc<CudaDevice>, batch_size: usize, steps_per_epoch: usize) -> Result<StepGraph> {
        graph_step::preload(dev)?;
        Ok(StepGraph {
            dev: dev.clone(),
            step: dev.upload(&[0u32])?,
            step_host: None,
            lrs: dev.upload(&vec![0f32; steps_per_epoch.max(1)])?,
            staged: StagedBatch::new(dev, batch_size)?,
            meter: DeviceMeter::new(dev, steps_per_epoch.max(1))?,
            graph: None,
            captured_with: None,
            warmup_left: WARMUP_STEPS,
            failures: 0,
            failed: None,
            notices: Vec::new(),
            replays: 0,
            eager_instead: 0,
        })
    }

    /// Start an epoch whose steps have LRs `lrs`, on the arrays `pipeline` has just begun.
    pub fn begin_epoch(&mut self, pipeline: &GpuData, lrs: &[f64]) -> Result<()> {
        let lrs: Vec<f32> = lrs.iter().map(|&l| l as f32).collect();
        self.dev.write(&lrs, &mut self.lrs)?;
        self.dev.write(&[0u32], &mut self.step)?;
        self.step_host = Some(0);
        self.meter.reset();
        if self.captured_with.is_some_and(|a| Some(a) != arrays_address(pipeline).ok()) {
            // New epoch buffers (another size): capture again.
            self.graph = None;
            self.captured_with = None;
        }
        Ok(())
    }

    /// What a batch of `n` images does now.
    pub fn mode(&self, n: usize) -> Mode {
        if n != self.staged.len() || self.failed.is_some() || self.warmup_left > 0 {
            Mode::Eager
        } else if self.graph.is_none() {
            Mode::Capture
        } else {
            Mode::Replay
        }
    }

    /// Train on batch `b` (positions `range` of the epoch, LR `lr`): eagerly, by capturing
    /// the step and launching it, or by launching the captured step (see [`StepGraph::mode`]).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        b: usize,
        model: &mut ResNet9,
        state: &mut SgdState,
        split: &data::Split,
        pipeline: &mut Pipeline,
        order: &[u32],
        params: &[data::augment::AugParams],
        range: std::ops::Range<usize>,
        norm: Normalization,
        lr: f64,
        cfg: &TrainConfig,
    ) -> Result<()> {
        let full = range.len() == self.staged.len();
        let mode = self.mode(range.len());
        if mode == Mode::Capture {
            let Pipeline::Gpu(gpu) = &mut *pipeline else {
                return Err(crate::Error::Invalid("a CUDA graph needs the GPU pipeline".into()));
            };
            match self.capture(b, model, state, gpu, norm, lr, cfg) {
                // Errors launching it are real errors, not a reason to train this batch again.
                Ok(()) => return self.launch(b),
                // This batch runs eagerly below (filling the pool with what the capture lacked);
                // the next full batch tries again.
                Err(e) if self.failures + 1 < CAPTURE_ATTEMPTS => {
                    self.failures += 1;
                    self.notices.push(format!(
                        "CUDA graph capture failed ({} of {CAPTURE_ATTEMPTS} tries), trying again after one more eager step: {e}",
                        self.failures
                    ));
                }
                Err(e) => {
                    self.failures += 1;
                    let why = e.to_string();
                    self.notices.push(format!("CUDA graph capture failed {CAPTURE_ATTEMPTS} times, training goes on without it: {why}"));
                    self.failed = Some(why);
                }
            }
        }
        if mode == Mode::Replay {
            let lent = self.replay(b, model)?;
            if lent == 0 {
                return Ok(());
            }
            if self.eager_instead == 0 {
                self.notices.push(format!(
                    "CUDA graph: batch {} ran eagerly, {lent} of the graph's memory blocks being held by other tensors (a replay would overwrite them)",
                    b + 1
                ));
            }
            self.eager_instead += 1;
        }
        let batch = pipeline.train_batch(split, order, params, range, norm)?;
        train::train_step_metered(model, state, batch, lr, cfg, &mut self.meter, b)?;
        // Only full batches warm up what the capture needs (the pool's blocks of their sizes).
        if full && self.warmup_left > 0 && mode == Mode::Eager {
            self.warmup_left -= 1;
        }
        Ok(())
    }

    /// Capture batch `b`'s step (nothing runs; the caller launches it). On failure nothing
    /// has run and the model is as it was.
    #[allow(clippy::too_many_arguments)]
    fn capture(&mut self, b: usize, model: &mut ResNet9, state: &mut SgdState, gpu: &mut GpuData, norm: Normalization, lr: f64, cfg: &TrainConfig) -> Result<()> {
        self.set_counter(b)?;
        let arrays = arrays_address(gpu)?;
        let tracked: Vec<u64> = model.bn.iter().map(|s| s.num_batches_tracked).collect();
        // Host work only (recording queues nothing): the capture's cost in epoch 1.
        let started = std::time::Instant::now();
        self.dev.begin_capture()?;
        let recorded = self.record_step(model, state, gpu, norm, lr, cfg);
        let graph = self.dev.end_capture();
        let failed = match (recorded, graph) {
            (Ok(()), Ok(g)) => Ok(g),
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
        };
        let graph = match failed {
            Ok(g) => g,
            Err(e) => {
                // The host-side count moved during the capture, but nothing ran.
                for (s, t) in model.bn.iter_mut().zip(tracked) {
                    s.num_batches_tracked = t;
                }
                return Err(e);
            }
        };
        self.captured_with = Some(arrays);
        self.notices.push(format!(
            "CUDA graph: the training step was captured at batch {} in {:.3}s and is replayed from now on ({:.0} MiB of device memory reserved for it, lent to other work between replays)",
            b + 1,
            started.elapsed().as_secs_f64(),
            graph.reserved_bytes() as f64 / 1048576.0
        ));
        self.graph = Some(graph);
        // The capture counted this step's batch in num_batches_tracked already; the caller launches it.
        Ok(())
    }

    /// The work of one step, queued on the capturing stream.
    fn record_step(&mut self, model: &mut ResNet9, state: &mut SgdState, gpu: &mut GpuData, norm: Normalization, lr: f64, cfg: &TrainConfig) -> Result<()> {
        {
            let (idx, params, labels) = gpu.epoch_arrays()?;
            let arrays = EpochArrays { idx, params, labels, lrs: &self.lrs };
            graph_step::stage_batch(&self.dev, &self.step, &arrays, &mut self.staged)?;
        }
        let (x, labels) = gpu.staged_batch(&self.staged, norm)?;
        let step = train::forward_backward(model, x, &[], Some(labels.clone()), cfg, None)?;
        self.meter.record_at_device_step(&mut self.step, &step.loss, &step.logits, &labels)?;
        // `lr` is this step's LR; replays read theirs from the staged slot.
        sgd::step_with_device_lr(&mut model.params, &step.grads, state, &cfg.sgd(lr), &self.staged.lr)?;
        Ok(())
    }

    /// Launch the captured step for batch `b`, unless tensors hold some of its blocks: returns
    /// how many they hold (0: launched; else nothing ran and the caller runs the batch eagerly).
    fn replay(&mut self, b: usize, model: &mut ResNet9) -> Result<usize> {
        self.set_counter(b)?;
        let lent = self.try_launch(b)?;
        if lent == 0 {
            for s in &mut model.bn {
                s.num_batches_tracked += 1;
            }
        }
        Ok(lent)
    }

    /// Launch the step just captured for batch `b` (its blocks were all given back by the capture).
    fn launch(&mut self, b: usize) -> Result<()> {
        match self.try_launch(b)? {
            0 => Ok(()),
            lent => Err(crate::Error::Invalid(format!("{lent} blocks of the graph are held right after its capture"))),
        }
    }

    fn try_launch(&mut self, b: usize) -> Result<usize> {
        let graph = self.graph.as_ref().ok_or_else(|| crate::Error::Invalid("no captured step to launch".into()))?;
        let lent = graph.try_launch()?;
        if lent == 0 {
            self.meter.mark_done(b)?;
            self.step_host = Some(b + 1);
            self.replays += 1;
        }
        Ok(lent)
    }

    /// Make the device counter hold `b` (an upload only when the host does not know it does).
    fn set_counter(&mut self, b: usize) -> Result<()> {
        if self.step_host != Some(b) {
            let v = u32::try_from(b).map_err(|_| crate::Error::Invalid(format!("batch {b} beyond a 32-bit counter")))?;
            self.dev.write(&[v], &mut self.step)?;
            self.step_host = Some(b);
        }
        Ok(())
    }

    /// Launches of the captured step so far (the capture's own launch included).
    pub fn replays(&self) -> usize {
        self.replays
    }

    /// Full batches that ran eagerly after the capture because other tensors held blocks of
    /// the graph (0 in a run where everything works as designed).
    pub fn eager_instead(&self) -> usize {
        self.eager_instead
    }

    /// Bytes of device memory the captured step keeps for itself.
    pub fn reserved_bytes(&self) -> usize {
        self.graph.as_ref().map_or(0, |g| g.reserved_bytes())
    }

    /// Why the capture failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Lines for the run's log since the last call: that the step was captured, or why a
    /// capture failed, or that a replay had to run eagerly.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }
}

/// Device addresses of the current epoch's arrays, and its number of images.
fn arrays_address(gpu: &GpuData) -> Result<[u64; 4]> {
    let (i, p, l) = gpu.epoch_arrays()?;
    let s = gpu.device().stream();
    Ok([engine::cuda::address(i, s), engine::cuda::address(p, s), engine::cuda::address(l, s), i.len() as u64])
}
