//! Where training and test batches are assembled: on the host from the memory-mapped
//! files (the CPU device), or on the GPU from the splits uploaded once as raw bytes.
//!
//! On the GPU, each epoch uploads three small arrays (the shuffled record indices, the
//! augmentation parameters of every image and the labels in that order, ~1.4 MB for
//! 50,000 images) and then every batch is one launch of the augmentation kernel reading
//! the resident u8 records: no image passes through the host during training. The
//! labels also stay on the host (read from the memory map, 4 bytes per image) for the
//! accuracy count.

use crate::batches::{self, Normalization};
use crate::Result;
use cudarc::driver::CudaSlice;
use data::Split;
use data::augment::AugParams;
use engine::cuda::CudaDevice;
use engine::{Device, Tensor};
use ops::augment::Norm;
use ops::cross_entropy::DeviceLabels;
use std::ops::Range;
use std::sync::Arc;

/// One batch: the input `[N, 3, 32, 32]` on the model's device and its labels (on the
/// host, and on the device too when the input is there).
pub struct Batch {
    pub x: Tensor,
    pub labels: Vec<u32>,
    pub device_labels: Option<DeviceLabels>,
}

/// The batch assembler of a run.
pub enum Pipeline {
    /// On the host (CPU training).
    Host,
    /// On the GPU.
    Gpu(Box<GpuData>),
}

/// The training and test splits resident on a GPU, and the current epoch's arrays.
pub struct GpuData {
    dev: Arc<CudaDevice>,
    train: CudaSlice<u8>,
    test: CudaSlice<u8>,
    /// `0..test_len`, the test batches' record indices.
    test_idx: CudaSlice<u32>,
    /// The test labels in order.
    test_labels: Arc<CudaSlice<u32>>,
    /// Where the kernels write the labels they read (compared with ours in the GPU test;
    /// training uses the uploaded labels).
    scratch_labels: CudaSlice<u32>,
    epoch: Option<GpuEpoch>,
}

/// One epoch's shuffled indices, augmentation parameters and labels on the device.
struct GpuEpoch {
    idx: CudaSlice<u32>,
    params: CudaSlice<i32>,
    labels: Arc<CudaSlice<u32>>,
}

impl Pipeline {
    /// The assembler for `device`: on a GPU, both splits are uploaded now.
    pub fn new(device: &Device, train: &Split, test: &Split) -> Result<Pipeline> {
        match device {
            Device::Cpu => Ok(Pipeline::Host),
            Device::Cuda(dev) => Ok(Pipeline::Gpu(Box::new(GpuData::upload(dev, train, test)?))),
        }
    }

    /// Prepare the epoch whose images are `order` (record indices) with `params`.
    pub fn begin_epoch(&mut self, split: &Split, order: &[u32], params: &[AugParams]) -> Result<()> {
        if let Pipeline::Gpu(g) = self {
            g.begin_epoch(split, order, params)?;
        }
        Ok(())
    }

    /// The augmented batch of positions `range` of the epoch begun last (`order` and
    /// `params` are the same slices given to [`Pipeline::begin_epoch`]).
    pub fn train_batch(&mut self, split: &Split, order: &[u32], params: &[AugParams], range: Range<usize>, norm: Normalization) -> Result<Batch> {
        match self {
            Pipeline::Host => {
                let (x, labels) = batches::train_batch(split, &order[range.clone()], &params[range], norm)?;
                Ok(Batch { x, labels, device_labels: None })
            }
            Pipeline::Gpu(g) => g.train_batch(split, order, range, norm),
        }
    }

    /// The normalised test batch of records `start..end`, mirrored horizontally when `flip`.
    pub fn test_batch(&mut self, split: &Split, start: usize, end: usize, norm: Normalization, flip: bool) -> Result<Batch> {
        match self {
            Pipeline::Host => {
                let (x, labels) = batches::eval_batch(split, start, end, norm, flip)?;
                Ok(Batch { x, labels, device_labels: None })
            }
            Pipeline::Gpu(g) => g.test_batch(split, start..end, norm, flip),
        }
    }
}

fn norm_of(n: Normalization) -> Norm {
    Norm { mean: n.mean, std: n.std }
}

fn labels_of(split: &Split, idx: impl Iterator<Item = usize>) -> Vec<u32> {
    idx.map(|i| split.label(i) as u32).collect()
}

impl GpuData {
    /// Upload both splits, straight from their memory maps.
    pub fn upload(dev: &Arc<CudaDevice>, train: &Split, test: &Split) -> Result<GpuData> {
        let train_files: Vec<&[u8]> = train.files().collect();
        let test_files: Vec<&[u8]> = test.files().collect();
        let test_idx: Vec<u32> = (0..test.len() as u32).collect();
        let test_labels = labels_of(test, 0..test.len());
        Ok(GpuData {
            dev: dev.clone(),
            train: dev.upload_concat(&train_files)?,
            test: dev.upload_concat(&test_files)?,
            test_idx: dev.upload(&test_idx)?,
            test_labels: Arc::new(dev.upload(&test_labels)?),
            scratch_labels: dev.upload(&vec![0u32; train.len().max(test.len())])?,
            epoch: None,
        })
    }

    fn begin_epoch(&mut self, split: &Split, order: &[u32], params: &[AugParams]) -> Result<()> {
        // The kernel reads the copy uploaded in `upload`: the split given here must be that one.
        let records = self.train.len() / data::RECORD_BYTES;
        if split.len() != records {
            return Err(crate::Error::Invalid(format!("a split of {} records for the {records} on the device", split.len())));
        }
        // (The augmentation kernel trusts the indices and values: see `ops::augment::augment_batch`.)
        crate::batches::check_augmented(split, order, params)?;
        let labels = labels_of(split, order.iter().map(|&i| i as usize));
        let flat: &[i32] = bytemuck::cast_slice(params);
        // Refill last epoch's buffers when they fit (a captured training step reads them at
        // their addresses); new ones otherwise.
        if let Some(ep) = self.epoch.as_mut().filter(|ep| ep.idx.len() == order.len())
            && let Some(l) = Arc::get_mut(&mut ep.labels) {
                self.dev.write(order, &mut ep.idx)?;
                self.dev.write(flat, &mut ep.params)?;
                self.dev.write(&labels, l)?;
                return Ok(());
            }
        self.epoch = Some(GpuEpoch {
            idx: self.dev.upload(order)?,
            params: self.dev.upload(flat)?,
            labels: Arc::new(self.dev.upload(&labels)?),
        });
        Ok(())
    }

    /// The current epoch's record indices `[n]`, augmentation values `[5n]` and labels `[n]`
    /// on the device (what a captured training step stages its batches from).
    pub fn epoch_arrays(&self) -> Result<(&CudaSlice<u32>, &CudaSlice<i32>, &CudaSlice<u32>)> {
        let ep = self.epoch.as_ref().ok_or_else(|| crate::Error::Invalid("no epoch begun on the GPU".into()))?;
        Ok((&ep.idx, &ep.params, &ep.labels))
    }

    /// The augmented, normalised batch of the records and parameters staged in `staged`
    /// (the captured step's batch; see `ops::graph_step`), with its device labels.
    pub fn staged_batch(&mut self, staged: &ops::graph_step::StagedBatch, norm: Normalization) -> Result<(Tensor, DeviceLabels)> {
        let n = staged.len();
        // SAFETY: the staged indices and values are copies of this epoch's, checked by
        // begin_epoch (indices inside the training split, values in range).
        let x = unsafe {
            ops::augment::augment_batch(
                &self.dev,
                &self.train,
                &staged.idx.slice(0..n),
                &staged.params.slice(0..5 * n),
                &mut self.scratch_labels.slice_mut(0..n),
                norm_of(norm),
            )
        }?;
        Ok((x, DeviceLabels::new(staged.labels.clone(), 0, n)?))
    }

    fn train_batch(&mut self, split: &Split, order: &[u32], range: Range<usize>, norm: Normalization) -> Result<Batch> {
        let ep = self.epoch.as_ref().ok_or_else(|| crate::Error::Invalid("train_batch before begin_epoch".into()))?;
        if range.end > ep.idx.len() {
            return Err(crate::Error::Invalid(format!("batch {range:?} outside the epoch of {}", ep.idx.len())));
        }
        let n = range.len();
        // SAFETY: this epoch's indices and values, checked by begin_epoch.
        let x = unsafe {
            ops::augment::augment_batch(
                &self.dev,
                &self.train,
                &ep.idx.slice(range.clone()),
                &ep.params.slice(5 * range.start..5 * range.end),
                &mut self.scratch_labels.slice_mut(0..n),
                norm_of(norm),
            )
        }?;
        let labels = labels_of(split, order[range.clone()].iter().map(|&i| i as usize));
        let device_labels = Some(DeviceLabels::new(ep.labels.clone(), range.start, n)?);
        Ok(Batch { x, labels, device_labels })
    }

    fn test_batch(&mut self, split: &Split, range: Range<usize>, norm: Normalization, flip: bool) -> Result<Batch> {
        if range.end > self.test_idx.len() {
            return Err(crate::Error::Invalid(format!("test batch {range:?} outside the split of {}", self.test_idx.len())));
        }
        let n = range.len();
        // SAFETY: test_idx holds 0..the test split's length (made in `new`).
        let x = unsafe {
            ops::augment::normalize_batch(
                &self.dev,
                &self.test,
                &self.test_idx.slice(range.clone()),
                &mut self.scratch_labels.slice_mut(0..n),
                norm_of(norm),
                flip,
            )
        }?;
        let labels = labels_of(split, range.clone());
        let device_labels = Some(DeviceLabels::new(self.test_labels.clone(), range.start, n)?);
        Ok(Batch { x, labels, device_labels })
    }

    /// The device holding the data.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// The labels the kernels wrote for the last batch (for the GPU test).
    pub fn kernel_labels(&self, n: usize) -> Result<Vec<u32>> {
        Ok(self.dev.download(&self.scratch_labels)?[..n].to_vec())
    }
}
