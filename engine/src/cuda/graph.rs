//! CUDA graphs on a device: the capture of the work queued on its stream
//! ([`CudaDevice::begin_capture`], [`CudaDevice::end_capture`]) into a [`DeviceGraph`] that
//! one launch replays, the memory reserved for it (see [`super`]'s doc), and the per-kernel
//! trace of events that `model profile` reads (which records nothing during a capture).

use super::{CudaDevice, driver_err};
use crate::{Error, Result};
use cudarc::driver::CudaEvent;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What a running capture has handed out, and why it cannot succeed (if it cannot).
#[derive(Default)]
pub(super) struct CaptureLog {
    /// Device addresses of the blocks handed out or given back during the capture.
    pub(super) blocks: HashSet<u64>,
    pub(super) failure: Option<String>,
}

impl CudaDevice {
    /// An error (and a failed capture) if a graph capture is running: `what` would need new
    /// device memory, which a replay could not have.
    pub(crate) fn refuse_while_capturing(&self, what: &str) -> Result<()> {
        let mut log = self.capture.lock().map_err(|_| Error::Invalid("capture log poisoned".into()))?;
        match log.as_mut() {
            None => Ok(()),
            Some(log) => {
                let msg = format!("{what} was needed while capturing a CUDA graph (run the same work once before capturing it)");
                log.failure.get_or_insert_with(|| msg.clone());
                Err(Error::Cuda { op: "graph capture", msg })
            }
        }
    }

    /// Start recording the work queued on the stream into a graph (nothing runs until the
    /// graph is launched). Relaxed mode: other threads' calls are not checked.
    pub fn begin_capture(&self) -> Result<()> {
        let mut log = self.capture.lock().map_err(|_| Error::Invalid("capture log poisoned".into()))?;
        if log.is_some() {
            return Err(Error::Invalid("a graph capture is already running on this device".into()));
        }
        self.stream
            .begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(driver_err("begin graph capture"))?;
        *log = Some(CaptureLog::default());
        Ok(())
    }

    /// End the capture begun by [`CudaDevice::begin_capture`] (always: the stream is usable
    /// again afterwards, whatever happened) and instantiate the graph. Every block handed out
    /// during the capture must be back in the pool (no tensor made during the capture may
    /// outlive it): they are reserved for the graph. An error if anything in the capture failed.
    pub fn end_capture(self: &Arc<Self>) -> Result<DeviceGraph> {
        // End the capture first, whatever else fails. cudarc's `end_capture` first returns any
        // error a drop stored in the context (`check_err`) without ending the capture, which
        // would leave the stream capturing: take such an error here and fail the capture with it.
        // Auto-free: should a library leave an allocation of its own in the graph, each launch
        // frees it before the next.
        let parked = self.ctx.check_err();
        let graph = self.stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        let log = self.capture.lock().map_err(|_| Error::Invalid("capture log poisoned".into()))?.take();
        let log = log.ok_or_else(|| Error::Invalid("end_capture without begin_capture".into()))?;
        if let Err(e) = parked {
            return Err(Error::Cuda { op: "graph capture", msg: format!("an earlier driver call failed during the capture: {e}") });
        }
        if let Some(why) = log.failure {
            return Err(Error::Cuda { op: "graph capture", msg: why });
        }
        let graph = graph
            .map_err(driver_err("end graph capture"))?
            .ok_or_else(|| Error::Cuda { op: "graph capture", msg: "nothing was captured".into() })?;
        let blocks: Vec<u64> = log.blocks.into_iter().collect();
        graph.upload().map_err(driver_err("upload graph"))?;
        let bytes = self.lock_pool()?.reserve(&blocks).map_err(|live| {
            Error::Invalid(format!("{live} buffers made during the graph capture are still in use after it (a replay would overwrite them)"))
        })?;
        self.graphs_alive.fetch_add(1, Ordering::Relaxed);
        Ok(DeviceGraph { graph, blocks, bytes, dev: self.clone() })
    }

    /// Whether a graph capture is running.
    pub fn is_capturing(&self) -> bool {
        self.capture.lock().map(|l| l.is_some()).unwrap_or(false)
    }

    /// Start recording an event at every lookup of one of our kernels ([`CudaDevice::function`],
    /// which each launch makes just before it) and before every cuDNN and cuBLAS call the ops
    /// make ([`CudaDevice::trace_launch`]), for a per-kernel profile
    /// (`engine::profile::Profiler::with_kernels`). Events recorded before are dropped. A
    /// CUDA graph capture records none (a profile times eager work).
    pub fn start_kernel_trace(&self) -> Result<()> {
        *self.kernel_trace.lock().map_err(|_| Error::Invalid("kernel trace poisoned".into()))? = Some(Vec::new());
        Ok(())
    }

    /// The events recorded since the trace started or since the last call, in the order they
    /// were queued (empty when no trace runs).
    pub fn take_kernel_trace(&self) -> Result<Vec<(String, CudaEvent)>> {
        let mut t = self.kernel_trace.lock().map_err(|_| Error::Invalid("kernel trace poisoned".into()))?;
        Ok(t.as_mut().map(std::mem::take).unwrap_or_default())
    }

    /// Stop the trace, dropping what it recorded and did not hand out.
    pub fn stop_kernel_trace(&self) {
        if let Ok(mut t) = self.kernel_trace.lock() {
            *t = None;
        }
    }

    /// While a kernel trace runs (and no graph capture does): record an event named `name`
    /// on the stream, where the work queued next begins. [`CudaDevice::function`] calls it for
    /// our kernels; the ops call it before each cuDNN or cuBLAS call, so that a per-kernel
    /// profile charges that library's work to it and not to the kernel of ours before it.
    pub fn trace_launch(&self, name: &str) -> Result<()> {
        let mut t = self.kernel_trace.lock().map_err(|_| Error::Invalid("kernel trace poisoned".into()))?;
        if let Some(events) = t.as_mut() {
            if self.is_capturing() {
                return Ok(());
            }
            let e = self.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(driver_err("event"))?;
            e.record(&self.stream).map_err(driver_err("event record"))?;
            events.push((name.to_string(), e));
        }
        Ok(())
    }
}

/// Work captured by [`CudaDevice::begin_capture`]/[`CudaDevice::end_capture`], replayed by
/// [`DeviceGraph::launch`]; the pool blocks its work uses are reserved for it until it is
/// dropped (lent to other work between replays).
pub struct DeviceGraph {
    graph: cudarc::driver::CudaGraph,
    /// Addresses of the reserved blocks, and their total size.
    blocks: Vec<u64>,
    bytes: usize,
    dev: Arc<CudaDevice>,
}

impl DeviceGraph {
    /// Queue one replay of the captured work on the device's stream. An error, and nothing
    /// queued, while a tensor holds one of the graph's blocks (see [`DeviceGraph::blocks_lent`]).
    pub fn launch(&self) -> Result<()> {
        match self.try_launch()? {
            0 => Ok(()),
            lent => Err(Error::Invalid(format!(
                "{lent} of the CUDA graph's {} memory blocks are held by tensors made since its capture: a replay would overwrite them",
                self.blocks.len()
            ))),
        }
    }

    /// Queue one replay if none of the graph's blocks is lent; returns how many are (0: queued,
    /// else nothing was queued). One look at the pool for both the check and the decision.
    pub fn try_launch(&self) -> Result<usize> {
        let lent = self.blocks_lent()?;
        if lent == 0 {
            self.graph.launch().map_err(driver_err("launch graph"))?;
        }
        Ok(lent)
    }

    /// How many of the graph's blocks tensors hold now (a replay needs none).
    pub fn blocks_lent(&self) -> Result<usize> {
        Ok(self.dev.lock_pool()?.lent_among(&self.blocks))
    }

    /// Bytes of pool blocks reserved for this graph's work.
    pub fn reserved_bytes(&self) -> usize {
        self.bytes
    }
}

impl fmt::Debug for DeviceGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceGraph({} blocks, {} bytes on {})", self.blocks.len(), self.reserved_bytes(), self.dev.name)
    }
}

impl Drop for DeviceGraph {
    fn drop(&mut self) {
        // A replay may still be running: let it finish before its blocks can be handed out
        // (later work is ordered after it anyway) and before the executable graph is destroyed.
        // Not during a capture, where a synchronisation is illegal and would invalidate it
        // (the capture's work is ordered after the replay on the one stream anyway).
        if !self.dev.is_capturing() {
            let _ = self.dev.stream.synchronize();
        }
        if let Ok(mut pool) = self.dev.pool.lock() {
            pool.unreserve(&self.blocks);
        }
        // The last graph gone (and no capture running): nothing reads the retired blocks any more.
        if self.dev.graphs_alive.fetch_sub(1, Ordering::Relaxed) == 1 && !self.dev.is_capturing()
            && let Ok(mut r) = self.dev.retired.lock() {
                for b in r.drain(..) {
                    self.dev.held.fetch_sub(b.len() as u64, Ordering::Relaxed);
                }
            }
    }
}
