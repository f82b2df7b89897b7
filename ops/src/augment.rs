//! Batch assembly on the GPU: the augmentation kernel of `ptx/augment.cu` (random crop
//! with reflect padding, horizontal flip, Cutout 8x8, normalisation, in one kernel) and
//! its test-time sibling (normalisation only). Not differentiated: it makes the input.
//!
//! Shapes: `data` the whole split as raw CIFAR-10 records (3073 bytes: label, then
//! 3072 CHW pixel bytes); `idx` `[N]` record indices of the batch; `params` `[N·5]`
//! (crop_x, crop_y, flip, cutout_x, cutout_y per image, `data::augment::AugParams`);
//! output x `[N, 3, 32, 32]` f32 and labels `[N]` u32. The math, per output element,
//! is in the kernel's comment and in `data::augment` (the CPU reference, which the GPU
//! test matches bit for bit).

use crate::Result;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};
use engine::cuda::CudaDevice;
use engine::{Error, Tensor};
use std::sync::Arc;

/// Bytes per CIFAR-10 record (label + 3·32·32 pixels).
const RECORD: usize = 3073;

/// Per-channel normalisation constants.
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

fn check(data: &CudaSlice<u8>, n: usize, idx_len: usize, labels_len: usize) -> Result<()> {
    if !data.len().is_multiple_of(RECORD) || data.is_empty() {
        return Err(Error::shape("augment", format!("{} bytes of data are not whole 3073-byte records", data.len())));
    }
    if idx_len != n || labels_len != n {
        return Err(Error::shape("augment", format!("{idx_len} indices and {labels_len} label slots for {n} images")));
    }
    Ok(())
}

/// The augmented, normalised batch of records `idx` with parameters `params` (5 per
/// image), written to a new `[N, 3, 32, 32]` tensor; the records' labels go to `labels`.
///
/// # Safety
///
/// The values in device memory are not checked (that would cost a copy to the host and a
/// wait): every `idx[i]` must be a record of `data` (`< data.len() / 3073`), and every
/// image's crop corner must lie in `0..=8` and its flip be 0 or 1
/// (`data::augment::AugParams::is_valid`). Otherwise the kernel reads outside `data`.
/// (`model`'s pipeline checks both on the host before it uploads them.)
pub unsafe fn augment_batch(
    dev: &Arc<CudaDevice>,
    data: &CudaSlice<u8>,
    idx: &CudaView<'_, u32>,
    params: &CudaView<'_, i32>,
    labels: &mut CudaViewMut<'_, u32>,
    norm: Norm,
) -> Result<Tensor> {
    let n = idx.len();
    check(data, n, idx.len(), labels.len())?;
    if params.len() != 5 * n {
        return Err(Error::shape("augment", format!("{} augmentation values for {n} images (5 each)", params.len())));
    }
    let mut out = dev.alloc(n * 3072)?;
    let f = crate::cuda::function(dev, "augment.cu", "augment_batch")?;
    let count = crate::cuda::count(n)?;
    let mut outv = out.view_mut::<f32>()?;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(data).arg(idx).arg(params).arg(&mut outv).arg(labels).arg(&count);
    for v in norm.mean.iter().chain(&norm.std) {
        launch.arg(v);
    }
    // SAFETY: augment_batch(data, idx [n], params [5n], out [n*3072], labels [n], n, mean0..2, std0..2);
    // the lengths are checked above; the values of idx and params are the caller's contract.
    unsafe { launch.launch(crate::cuda::grid(&f, crate::cuda::count(n * 3072)?)) }.map_err(crate::cuda::launch_err("augment_batch"))?;
    Tensor::from_cuda(&[n, 3, 32, 32], out)
}

/// The normalised (not augmented) batch of records `idx`, every image mirrored horizontally
/// when `flip` (flip test-time augmentation), and their labels.
///
/// # Safety
///
/// Every `idx[i]` must be a record of `data` (`< data.len() / 3073`): the kernel does not
/// check the values in device memory, and reads outside `data` otherwise.
pub unsafe fn normalize_batch(
    dev: &Arc<CudaDevice>,
    data: &CudaSlice<u8>,
    idx: &CudaView<'_, u32>,
    labels: &mut CudaViewMut<'_, u32>,
    norm: Norm,
    flip: bool,
) -> Result<Tensor> {
    let n = idx.len();
    check(data, n, idx.len(), labels.len())?;
    let mut out = dev.alloc(n * 3072)?;
    let f = crate::cuda::function(dev, "augment.cu", "normalize_batch")?;
    let count = crate::cuda::count(n)?;
    let mut outv = out.view_mut::<f32>()?;
    let mut launch = dev.stream().launch_builder(&f);
    let flip = u32::from(flip);
    launch.arg(data).arg(idx).arg(&mut outv).arg(labels).arg(&count).arg(&flip);
    for v in norm.mean.iter().chain(&norm.std) {
        launch.arg(v);
    }
    // SAFETY: normalize_batch(data, idx [n], out [n*3072], labels [n], n, flip, mean0..2, std0..2), as above.
    unsafe { launch.launch(crate::cuda::grid(&f, crate::cuda::count(n * 3072)?)) }.map_err(crate::cuda::launch_err("normalize_batch"))?;
    Tensor::from_cuda(&[n, 3, 32, 32], out)
}
