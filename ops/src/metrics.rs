//! Training statistics kept on the GPU: each batch's mean loss and number of correctly
//! classified images are written to slot `b` of two device arrays by the batch's own
//! work on the stream, and the host reads the arrays when it chooses (the progress bar,
//! the end of the epoch) instead of waiting for every batch. Not differentiated.
//!
//! [`DeviceMeter::poll`] never waits: each recorded batch also records an event; a poll
//! finds the newest batch whose event has completed and copies the slots up to it on a
//! second stream that waits for that event only, so the training stream keeps running.
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
        logits.expect_rank("metrics", 2, "logits [N, K]")?;
        let (n, k) = (logits.shape()[0], logits.shape()[1]);
        if loss.numel() != 1 || labels.len() != n {
            return Err(Error::shape("metrics", format!("loss {:?}, logits {:?}, {} labels", loss.shape(), logits.shape(), labels.len())));
        }
        let stream = self.dev.stream().clone();
        stream
            .memcpy_dtod(&loss.cuda_buffer()?.view::<f32>()?, &mut self.losses.slice_mut(b..b + 1))
            .map_err(|e| Error::Cuda { op: "metrics: copy loss", msg: e.to_string() })?;
        let f = crate::cuda::function(&self.dev, "reduce.cu", "count_correct")?;
        let (nn, kk, overwrite) = (crate::cuda::count(n)?, crate::cuda::count(k)?, 0i32);
        let labels = labels.view();
        let mut out = self.correct.slice_mut(b..b + 1);
        let lv = logits.cuda_buffer()?.view::<f32>()?;
        let mut launch = stream.launch_builder(&f);
        launch.arg(&lv).arg(&labels).arg(&mut out).arg(&nn).arg(&kk).arg(&overwrite);
        let one_block = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: count_correct(logits [n,k], labels [n], out [1], n, k, accumulate), one block as required.
        unsafe { launch.launch(one_block) }.map_err(crate::cuda::launch_err("count_correct"))?;
        let ev = self.dev.context().new_event(None).map_err(|e| Error::Cuda { op: "metrics: event", msg: e.to_string() })?;
        ev.record(&stream).map_err(|e| Error::Cuda { op: "metrics: event record", msg: e.to_string() })?;
        self.done[b] = Some(ev);
        Ok(())
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
