//! The per-batch inputs of a training step captured as a CUDA graph (see
//! `ptx/graph_step.cu`). A graph replays its kernels with the arguments they were
//! captured with, so what changes from batch to batch is read from device memory: a
//! step counter `s`, from which [`stage_batch`] copies batch `s` of the epoch's
//! arrays into fixed buffers ([`StagedBatch`]) at the start of the step, and which
//! `metrics::DeviceMeter::record_at_device_step` advances at its end. Not differentiated.
//!
//! Shapes: the epoch's record indices `[total]`, augmentation values `[5·total]`, labels
//! `[total]` and LRs `[steps]`; the staged batch: indices `[n]`, values `[5·n]`, labels
//! `[n]`, LR `[1]`. Math: with `j = s·n + i` (clamped to `total − 1`),
//! `idx[i] = idx_all[j]`, `params[5i+k] = params_all[5j+k]`, `labels[i] = labels_all[j]`,
//! `lr = lrs[min(s, steps − 1)]`.

use crate::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};
use engine::Error;
use engine::cuda::CudaDevice;
use std::sync::Arc;

/// The fixed buffers one batch is staged into: their addresses are what a captured step reads.
pub struct StagedBatch {
    pub idx: CudaSlice<u32>,
    pub params: CudaSlice<i32>,
    /// Shared with the step's `DeviceLabels` (the cross-entropy and the meter read it).
    pub labels: Arc<CudaSlice<u32>>,
    pub lr: CudaSlice<f32>,
}

impl StagedBatch {
    /// Buffers for batches of `n` images.
    pub fn new(dev: &CudaDevice, n: usize) -> Result<StagedBatch> {
        Ok(StagedBatch {
            idx: dev.upload(&vec![0u32; n])?,
            params: dev.upload(&vec![0i32; 5 * n])?,
            labels: Arc::new(dev.upload(&vec![0u32; n])?),
            lr: dev.upload(&[0f32])?,
        })
    }

    /// Images per batch.
    pub fn len(&self) -> usize {
        self.idx.len()
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }
}

/// Compile and load the kernels of `ptx/graph_step.cu` now, before a capture (loading a
/// module is not work on the stream, and a capture should record kernels only).
pub fn preload(dev: &CudaDevice) -> Result<()> {
    for k in ["stage_batch", "finish_step"] {
        crate::cuda::function(dev, "graph_step.cu", k)?;
    }
    Ok(())
}

/// The epoch's arrays on the device, from which batches are staged.
pub struct EpochArrays<'a> {
    pub idx: &'a CudaSlice<u32>,
    pub params: &'a CudaSlice<i32>,
    pub labels: &'a CudaSlice<u32>,
    pub lrs: &'a CudaSlice<f32>,
}

/// Queue the copy of batch `*step` of `epoch` into `out` (one launch).
pub fn stage_batch(dev: &Arc<CudaDevice>, step: &CudaSlice<u32>, epoch: &EpochArrays<'_>, out: &mut StagedBatch) -> Result<()> {
    let (n, total, steps) = (out.len(), epoch.idx.len(), epoch.lrs.len());
    if n == 0 || total == 0 || steps == 0 || step.is_empty() {
        return Err(Error::shape("stage_batch", format!("batch of {n}, epoch of {total} images and {steps} steps")));
    }
    if epoch.params.len() != 5 * total || epoch.labels.len() != total || out.params.len() != 5 * n || out.labels.len() != n || out.lr.is_empty() {
        return Err(Error::shape(
            "stage_batch",
            format!("epoch arrays {}/{}/{} and batch buffers {}/{}/{} do not hold 1/5/1 values per image", total, epoch.params.len(), epoch.labels.len(), n, out.params.len(), out.labels.len()),
        ));
    }
    let labels = Arc::get_mut(&mut out.labels).ok_or_else(|| Error::Invalid("stage_batch: the staged labels are still in use by a batch".into()))?;
    let f = crate::cuda::function(dev, "graph_step.cu", "stage_batch")?;
    let (nn, tt, ss) = (crate::cuda::count(n)?, crate::cuda::count(total)?, crate::cuda::count(steps)?);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(step).arg(epoch.idx).arg(epoch.params).arg(epoch.labels).arg(epoch.lrs).arg(&nn).arg(&tt).arg(&ss);
    launch.arg(&mut out.idx).arg(&mut out.params).arg(labels).arg(&mut out.lr);
    // SAFETY: stage_batch(step [1], idx_all [total], params_all [5 total], labels_all [total], lrs [steps],
    // n, total, steps, idx_out [n], params_out [5n], labels_out [n], lr_out [1]): lengths checked above;
    // the kernel clamps its reads to the arrays.
    unsafe { launch.launch(crate::cuda::grid(&f, nn)) }.map_err(crate::cuda::launch_err("stage_batch"))?;
    Ok(())
}
