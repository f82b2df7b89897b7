//! Copying many tensors to the host without making the caller wait for the GPU.
//!
//! A run copies its checkpoint (weights, batch-norm statistics, momentum: about 53 MB at full
//! width, 79 MB with `--ema`) to the host at the end of every epoch, while the next epoch's work
//! would change those tensors. Copied one tensor at a time into ordinary (pageable) memory, each
//! copy waits for the GPU and goes through the driver's bounce buffer: on an H200 (2026-11-27)
//! that took 14 to 20 ms of the host's time per epoch, with the GPU idle meanwhile.
//!
//! [`Download::start`] instead queues every copy on the device's stream, behind the work that
//! wrote the tensors and ahead of anything queued later, into one page-locked ("pinned") host
//! buffer, which the copy engine fills at the bus's rate, and returns at once. The stream's order
//! is what makes the bytes those of this moment: the next epoch's updates run after the copies.
//! [`Download::finish`], typically on another thread (`model/src/saver.rs`), waits for them
//! and hands the bytes over.
//!
//! Pinned memory is slow to allocate (the driver locks every page), so a [`StagingPool`] keeps
//! the buffers for the next download; a download holds its buffer until it is finished or
//! dropped, so two downloads in flight never share one.
//!
//! Host tensors, and device tensors that are not f32 (whose bytes must be converted), are copied
//! at once, as [`Tensor::to_f32_vec`] does: the bytes are the same either way.

use crate::cuda::{CudaBuffer, driver_err};
use crate::tensor::{DType, Storage};
use crate::{Error, Result, Tensor};
use cudarc::driver::{CudaContext, CudaEvent, PinnedHostSlice};
use std::sync::{Arc, Mutex};

/// Page-locked host buffers kept for the next [`Download`] (cheap to clone: one shared list).
#[derive(Clone, Default)]
pub struct StagingPool {
    free: Arc<Mutex<Vec<Staging>>>,
}

impl StagingPool {
    pub fn new() -> StagingPool {
        StagingPool::default()
    }

    /// How many buffers the pool holds now (not those lent to downloads in flight).
    pub fn len(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// Whether the pool holds no buffer now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A buffer of at least `bytes` bytes on `ctx`'s device: the smallest free one that is large
    /// enough, else a new one (a free buffer too small is released: a run's sizes do not change).
    fn take(&self, ctx: &Arc<CudaContext>, bytes: usize) -> Result<Staging> {
        let mut free = self.free.lock().map_err(|_| Error::Invalid("staging pool lock poisoned".into()))?;
        free.retain(|s| Arc::ptr_eq(s.mem.context(), ctx));
        free.sort_by_key(|s| s.mem.len());
        if let Some(i) = free.iter().position(|s| s.mem.len() >= bytes) {
            return Ok(free.remove(i));
        }
        free.clear();
        drop(free);
        // SAFETY: the memory is uninitialised, which is fine for u8: it is only read after the
        // copies into it have finished, and then only the bytes they wrote.
        // Flags 0: ordinary cached memory (not write-combined, which the host reads slowly).
        let mem = unsafe { ctx.alloc_pinned_with_flags::<u8>(bytes.max(1), 0) }.map_err(driver_err("allocating pinned host memory"))?;
        Ok(Staging { mem })
    }

    fn give_back(&self, staging: Staging) {
        if let Ok(mut free) = self.free.lock() {
            free.push(staging);
        }
    }
}

/// One page-locked buffer. Freed with its context bound to the freeing thread (the last owner of
/// a pool may be the saver's thread).
struct Staging {
    mem: PinnedHostSlice<u8>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = self.mem.context().bind_to_thread();
    }
}

/// Where one tensor's bytes are: already on the host, or at `offset` in the staging buffer.
enum Part {
    Host(Vec<u8>),
    Staged { offset: usize, len: usize },
}

/// Copies to the host queued on a device's stream, or already done (see the module's text).
pub struct Download {
    parts: Vec<Part>,
    /// The staging buffer, the event recorded after the last copy into it, and the pool it goes
    /// back to. `None` when nothing was queued.
    staged: Option<(Staging, CudaEvent, StagingPool)>,
}

impl Download {
    /// Start copying `tensors` to the host, each as little-endian f32 bytes (what
    /// [`Tensor::to_f32_vec`] gives), on their device's stream. Device f32 tensors are copied
    /// asynchronously into a buffer from `pool`; the rest at once. Refused during a CUDA graph
    /// capture, and for device tensors on more than one device.
    pub fn start(tensors: &[&Tensor], pool: &StagingPool) -> Result<Download> {
        let mut parts = Vec::with_capacity(tensors.len());
        let mut queued: Vec<(&CudaBuffer, usize)> = Vec::new();
        let mut bytes = 0usize;
        for t in tensors {
            match t.storage() {
                Storage::Cuda(b) if b.dtype() == DType::F32 => {
                    if let Some((first, _)) = queued.first()
                        && !Arc::ptr_eq(first.dev(), b.dev())
                    {
                        return Err(Error::Device { op: "Download::start", a: first.dev().name().into(), b: b.dev().name().into() });
                    }
                    // 16-byte aligned parts: each copy starts on a boundary the copy engine likes.
                    let offset = bytes.next_multiple_of(16);
                    let len = b.len() * 4;
                    parts.push(Part::Staged { offset, len });
                    queued.push((b, offset));
                    bytes = offset + len;
                }
                _ => parts.push(Part::Host(bytemuck::cast_slice(&t.to_f32_vec()).to_vec())),
            }
        }
        let Some((first, _)) = queued.first() else {
            return Ok(Download { parts, staged: None });
        };
        let dev = first.dev().clone();
        dev.refuse_while_capturing("a copy to the host")?;
        let mut staging = pool.take(dev.context(), bytes)?;
        let stream = dev.stream();
        // The buffer's own event was never recorded, so this returns at once.
        let host = staging.mem.as_mut_slice().map_err(driver_err("pinned host memory"))?;
        for (b, offset) in &queued {
            let dst: &mut [f32] = bytemuck::cast_slice_mut(&mut host[*offset..*offset + b.len() * 4]);
            // A slice of ordinary Rust memory to cudarc: the copy is queued, not waited for.
            stream.memcpy_dtoh(&b.view::<f32>()?, dst).map_err(driver_err("copy to the host"))?;
        }
        let event = stream.record_event(None).map_err(driver_err("record an event after the copies to the host"))?;
        Ok(Download { parts, staged: Some((staging, event, pool.clone())) })
    }

    /// Wait for the copies and return each tensor's bytes, in the order given to
    /// [`Download::start`]. The staging buffer goes back to its pool.
    pub fn finish(mut self) -> Result<Vec<Vec<u8>>> {
        let staged = self.staged.take();
        let host = match &staged {
            Some((staging, event, _)) => {
                event.synchronize().map_err(driver_err("wait for the copies to the host"))?;
                // SAFETY: the copies into the buffer have finished (the event above), and
                // nothing else writes it while this download holds it.
                Some(unsafe { std::slice::from_raw_parts(staging.mem.as_ptr().map_err(driver_err("pinned host memory"))?, staging.mem.len()) })
            }
            None => None,
        };
        let out = std::mem::take(&mut self.parts)
            .into_iter()
            .map(|p| match p {
                Part::Host(v) => v,
                Part::Staged { offset, len } => host.expect("a staged part has a staging buffer")[offset..offset + len].to_vec(),
            })
            .collect();
        if let Some((staging, _, pool)) = staged {
            pool.give_back(staging);
        }
        Ok(out)
    }
}

impl Drop for Download {
    /// A download dropped unfinished (the run stopped by an error) waits for its copies before
    /// its buffer is reused or freed: the copy engine may still be writing it.
    fn drop(&mut self) {
        if let Some((staging, event, pool)) = self.staged.take()
            && event.synchronize().is_ok()
        {
            pool.give_back(staging);
        }
        // If the wait failed (a broken context) the buffer is freed here, as the context's
        // other memory will be.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random values, not zeros: a copy that dropped or moved bytes shows.
    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::new(shape, v).unwrap()
    }

    #[test]
    fn host_tensors_come_back_as_their_f32_bytes() {
        let f32s = random(&[3, 5], 1);
        let f64s = random(&[7], 2).to_dtype(DType::F64);
        let bf16s = random(&[2, 2, 3], 3).to_dtype(DType::BF16);
        let pool = StagingPool::new();
        let bytes = Download::start(&[&f32s, &f64s, &bf16s], &pool).unwrap().finish().unwrap();
        assert_eq!(bytes.len(), 3);
        for (t, b) in [&f32s, &f64s, &bf16s].iter().zip(&bytes) {
            assert_eq!(b.as_slice(), bytemuck::cast_slice::<f32, u8>(&t.to_f32_vec()));
        }
        // Nothing was staged, so the pool made no buffer.
        assert!(pool.is_empty());
    }

    #[test]
    fn no_tensors_is_no_bytes() {
        assert!(Download::start(&[], &StagingPool::new()).unwrap().finish().unwrap().is_empty());
    }
}
