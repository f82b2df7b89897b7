//! Training statistics kept on the GPU: each batch's mean loss and number of correctly
//! classified images are written to slot `b` of two device arrays by the batch's own
//! work on the stream, and the host reads the arrays when it chooses (the progress bar,
//! the end of the epoch) instead of waiting for every batch. Not differentiated.
//!
//! [`DeviceMeter::poll`] never waits: each recorded batch also records an event; a poll
//! finds the newest batch whose event has completed and copies the slots up to it on a
//! second stream that waits for that event only, so the training stream keeps running.
//!
//! A step captured as a CUDA graph cannot name its slot `b` (a replay repeats the
//! captured arguments): [`DeviceMeter::record_at_device_step`] counts into a fixed slot and
//! files it in slot `*step` on the device (`finish_step` of `ptx/graph_step.cu`), and the
//! host marks each replay done with [`DeviceMeter::mark_done`].
//!
//! Shapes: losses `[steps]` f32, correct `[steps]` u32; per batch, the loss `[1]`, the
//! logits `[N, K]` and the labels `[N]` on the device.
//! `correct[b] = #{ r : argmax_k logits[r, k] = labels[r] }` (first maximum on ties), by
//! `count_correct` of `ptx/reduce.cu`.

use crate::cross_entropy::DeviceLabels;
use crate::{Result, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use engine::Error;
use engine::cuda::CudaDevice;
use std::sync::Arc;

/// Per-batch loss and correct count of one epoch, on the device.
pub struct DeviceMeter {
    dev: Arc<CudaDevice>,
    losses: CudaSlice<f32>,
    correct: CudaSlice<u32>,
    /// Completion marker of each recorded batch.
    done: Vec<Option<cudarc::driver::CudaEvent>>,
    /// The stream polls copy on (non-blocking: it does not wait for the training stream).
    reader: Arc<cudarc::driver::CudaStream>,
    /// Batches already returned by `poll`.
    polled: usize,
    /// The correct count of a graph-captured step, before `finish_step` files it.
    correct_slot: CudaSlice<u32>,
}

impl DeviceMeter {
    /// Room for `steps` batches.
    pub fn new(dev: &Arc<CudaDevice>, steps: usize) -> Result<DeviceMeter> {
        let reader = dev.context().new_stream().map_err(|e| Error::Cuda { op: "metrics: reader stream", msg: e.to_string() })?;
        Ok(DeviceMeter {
            dev: dev.clone(),
            losses: dev.upload(&vec![0f32; steps])?,
            correct: dev.upload(&vec![0u32; steps])?,
            done: (0..steps).map(|_| None).collect(),
            reader,
            polled: 0,
            correct_slot: dev.upload(&[0u32])?,
        })
    }

    /// Number of batch slots.
    pub fn steps(&self) -> usize {
        self.losses.len()
    }

    /// Queue the recording of batch `b`: its loss `[1]` and its correct count from
    /// `logits` `[N, K]` and `labels` `[N]`.
    pub fn record(&mut self, b: usize, loss: &Tensor, logits: &Tensor, labels: &DeviceLabels) -> Result<()> {
        if b >= self.steps() {
            return Err(Error::Invalid(format!("batch {b} of a meter for {} batches", self.steps())));
        }
        check(&self.dev, loss, logits, labels)?;
        self.dev
            .stream()
            .memcpy_dtod(&loss.cuda_buffer()?.view::<f32>()?, &mut self.losses.slice_mut(b..b + 1))
            .map_err(|e| Error::Cuda { op: "metrics: copy loss", msg: e.to_string() })?;
        count_correct(&self.dev, logits, labels, &mut self.correct.slice_mut(b..b + 1))?;
        self.mark_done(b)
    }

    /// Queue the recording of the batch whose number is `*step` on the device, then advance
    /// `*step` (for a step captured as a CUDA graph; see the module's comment). The host calls
    /// [`DeviceMeter::mark_done`] after each launch of the graph.
    pub fn record_at_device_step(&mut self, step: &mut CudaSlice<u32>, loss: &Tensor, logits: &Tensor, labels: &DeviceLabels) -> Result<()> {
        check(&self.dev, loss, logits, labels)?;
        count_correct(&self.dev, logits, labels, &mut self.correct_slot.slice_mut(0..1))?;
        let f = crate::cuda::function(&self.dev, "graph_step.cu", "finish_step")?;
        let steps = crate::cuda::count(self.steps())?;
        let lv = loss.cuda_buffer()?.view::<f32>()?;
        let mut launch = self.dev.stream().launch_builder(&f);
        launch.arg(step).arg(&lv).arg(&self.correct_slot).arg(&mut self.losses).arg(&mut self.correct).arg(&steps);
        let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: finish_step(step [1], loss [1], correct_in [1], losses [steps], correct [steps], steps).
        unsafe { launch.launch(one) }.map_err(crate::cuda::launch_err("finish_step"))?;
        Ok(())
    }

    /// Mark batch `b` as queued: its statistics are complete when the stream reaches this point.
    pub fn mark_done(&mut self, b: usize) -> Result<()> {
        if b >= self.steps() {
            return Err(Error::Invalid(format!("batch {b} of a meter for {} batches", self.steps())));
        }
        let ev = self.dev.context().new_event(None).map_err(|e| Error::Cuda { op: "metrics: event", msg: e.to_string() })?;
        ev.record(self.dev.stream()).map_err(|e| Error::Cuda { op: "metrics: event record", msg: e.to_string() })?;
        self.done[b] = Some(ev);
        Ok(())
    }

    /// Forget every recorded batch (a new epoch that reuses this meter and its addresses).
    pub fn reset(&mut self) {
        self.done.iter_mut().for_each(|d| *d = None);
        self.polled = 0;
    }

    /// Without waiting for the GPU: the losses and correct counts of batches `0..k` for the
    /// largest `k` whose work has finished, if that is more than the last poll returned.
    pub fn poll(&mut self) -> Result<Option<(Vec<f32>, Vec<u32>)>> {
        let Some(k) = (self.polled..self.done.len()).rev().find(|&b| self.done[b].as_ref().is_some_and(|e| e.is_complete())).map(|b| b + 1) else {
            return Ok(None);
        };
        let ev = self.done[k - 1].as_ref().expect("found above");
        let err = |e: cudarc::driver::DriverError| Error::Cuda { op: "metrics: poll", msg: e.to_string() };
        // The event has completed, so this wait is immediate; it orders the copies after batch k.
        self.reader.wait(ev).map_err(err)?;
        let losses = self.reader.clone_dtoh(&self.losses.slice(0..k)).map_err(err)?;
        let correct = self.reader.clone_dtoh(&self.correct.slice(0..k)).map_err(err)?;
        self.polled = k;
        Ok(Some((losses, correct)))
    }

    /// The losses and correct counts of batches `0..upto` (waits for their work).
    pub fn read(&self, upto: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        let upto = upto.min(self.steps());
        let mut losses = self.dev.download(&self.losses)?;
        let mut correct = self.dev.download(&self.correct)?;
        losses.truncate(upto);
        correct.truncate(upto);
        Ok((losses, correct))
    }
}

/// An error unless `loss` is `[1]` and `logits` `[N, K]` (K ≥ 1) has one label per row, both
/// f32 on the meter's device `dev` (the same opened device: one stream orders their work).
fn check(dev: &Arc<CudaDevice>, loss: &Tensor, logits: &Tensor, labels: &DeviceLabels) -> Result<()> {
    logits.expect_rank("metrics", 2, "logits [N, K]")?;
    // (count_correct reads each row's first logit: there must be one.)
    if loss.numel() != 1 || labels.len() != logits.shape()[0] || logits.shape()[1] == 0 {
        return Err(Error::shape("metrics", format!("loss {:?}, logits {:?}, {} labels", loss.shape(), logits.shape(), labels.len())));
    }
    labels.expect_on("metrics", dev)?;
    for t in [loss, logits] {
        if t.dtype() != crate::DType::F32 {
            return Err(Error::DType { op: "metrics", a: t.dtype(), b: crate::DType::F32 });
        }
        if !Arc::ptr_eq(t.cuda_buffer()?.dev(), dev) {
            return Err(Error::Invalid("metrics: the loss and logits must be on the meter's device".into()));
        }
    }
    Ok(())
}

/// Queue `out[0] = #{ r : argmax_k logits[r, k] = labels[r] }` (`count_correct` of `ptx/reduce.cu`).
fn count_correct(dev: &Arc<CudaDevice>, logits: &Tensor, labels: &DeviceLabels, out: &mut cudarc::driver::CudaViewMut<'_, u32>) -> Result<()> {
    let f = crate::cuda::function(dev, "reduce.cu", "count_correct")?;
    let (n, k) = (logits.shape()[0], logits.shape()[1]);
    let (nn, kk, accumulate) = (crate::cuda::count(n)?, crate::cuda::count(k)?, 0i32);
    let labels = labels.view();
    let lv = logits.cuda_buffer()?.view::<f32>()?;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&lv).arg(&labels).arg(out).arg(&nn).arg(&kk).arg(&accumulate);
    let one_block = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: count_correct(logits [n,k], labels [n], out [1], n, k, accumulate), one block as required.
    unsafe { launch.launch(one_block) }.map_err(crate::cuda::launch_err("count_correct"))?;
    Ok(())
}
