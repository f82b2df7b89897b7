//! The CUDA device: context, its one stream, library handles, a caching allocator
//! for device memory, and our compiled kernels.
//!
//! Libraries are loaded at run time by `cudarc`; [`crate::Device::cuda`] probes them
//! first so a missing one is an error, never a panic. Everything is queued on one
//! stream, so operations run in the order they are issued and the host only waits
//! where it copies results back.
//!
//! ## The caching allocator
//!
//! Every buffer of a CUDA tensor (f32, bf16, or f64 for gradient checks) is a [`CudaBuffer`]
//! taken from the device's pool: a block of bytes tagged with its element type. Dropping
//! it does not free the memory: the block goes back to a free list keyed by its size in
//! bytes, and the next request of that size takes it; the bookkeeping is
//! [`crate::pool::BlockPool`]. A training step allocates the same sizes in the same order
//! every time, so once the first steps have filled the pool (the first also creates the
//! momentum buffers, which take free blocks of their sizes) every request is served from it
//! and the driver is never called ([`CudaDevice::driver_allocations`] counts the calls; a GPU
//! test asserts that an epoch's fourth step makes none). Work of other
//! sizes (a partial batch, the evaluation) runs under [`CudaDevice::best_fit`]: it may take
//! free blocks of up to twice its requests' sizes, i.e. the training step's.
//! Reuse is safe without events because there is one stream: work queued by the block's
//! next owner runs after all work queued by its previous owner.
//!
//! ## CUDA graphs
//!
//! [`CudaDevice::begin_capture`] and [`CudaDevice::end_capture`] record the work queued
//! in between as a [`DeviceGraph`], replayed by one launch. A replay reuses the device
//! addresses of the capture, so those are the graph's memory: every block handed out during
//! the capture (and given back to the pool before it ended) is *reserved* for the graph until
//! it is dropped. Reserved blocks are lent to other work between replays (the evaluation, a
//! partial batch), and a replay is refused while one is lent (see [`crate::pool`]). A capture
//! must not need new memory (a pool miss, a larger workspace or more ones is an error): run
//! the same work once before capturing it. Blocks that a graph may read (the workspace, the
//! ones) are never freed while a graph exists.

mod buffer;
mod graph;
mod kernels;

pub use buffer::{CudaBuffer, dtype_size};
pub use graph::DeviceGraph;
pub use kernels::Precompiled;
use graph::CaptureLog;

use crate::cudnn::CudnnHandle;
use crate::kernel_cache::KernelCache;
use crate::pool::BlockPool;
use crate::{DType, Error, Float, Result};
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DeviceRepr};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the network's first convolution (3 input channels, 3×3, bf16 channels-last) runs:
/// cuDNN runs it as it runs every other convolution, or through cuDNN's graph API whatever the
/// others take, its engine chosen by timing cuDNN's candidates (as PyTorch's step does with
/// `torch.backends.cudnn.benchmark`, where it runs on CUTLASS kernels); or our direct kernels
/// (`ptx/conv_c3.cu`, `ops::conv2d_c3`) compute its forward pass and its weight gradient
/// without cuDNN's padding of 3 channels to 8 (the input needs no gradient, so there is no
/// backward-data).
///
/// Measured on one H200 (2026-11-27, cuDNN 9.19, batch 512, `model profile --first-conv X`,
/// build 98c8127, `bench/results/h200-2026-11-27/build-98c8127/profile.txt`), the forward and
/// the weight gradient, and the step captured as a CUDA graph:
///
/// | `--first-conv` | forward | weight gradient | captured step |
/// | --- | --- | --- | --- |
/// | `cudnn` (legacy plans) | 0.318 ms | 0.198 ms | 3.12 ms |
/// | `cudnn-graph` (timed) | 0.146 ms | 0.117 ms | 3.09 ms |
/// | `direct-forward` | 0.068 ms | 0.198 ms | 3.06 ms |
/// | `direct` | 0.067 ms | 0.079 + 0.006 ms | **2.95 ms** |
///
/// Hence the default: our kernels. With them a 24-epoch run's training took 7.0-7.1 s (six
/// seeds, the same accuracy: 90.84 to 91.34% with `--tta --ema`), where with cuDNN's it took
/// 7.4 s (two seeds at 4bfc9b2, on another H200 that morning); three side-by-side runs took
/// 7.69 to 7.92 s with the test evaluations. The previous design of our kernels (before
/// 96f2041) was slower than cuDNN's: 0.244 and 0.315 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstConv {
    /// cuDNN for the forward pass and the weight gradient.
    Cudnn = 0,
    /// Our forward kernel, cuDNN's weight gradient.
    DirectForward = 1,
    /// Our kernels for both.
    Direct = 2,
    /// cuDNN through its graph API (as `--cudnn-graph` does for every convolution) for both
    /// passes, where it has a plan: the fastest of its first candidates by our timing
    /// (`ops::conv2d_plan::GRAPH_TIMED_CANDIDATES`), whatever [`ConvSearch`] the device has.
    CudnnGraph = 3,
}

impl FirstConv {
    /// The choice a device starts with: the fastest measured (above).
    pub const DEFAULT: FirstConv = FirstConv::Direct;

    fn from_u8(v: u8) -> FirstConv {
        match v {
            0 => FirstConv::Cudnn,
            1 => FirstConv::DirectForward,
            2 => FirstConv::Direct,
            _ => FirstConv::CudnnGraph,
        }
    }

    /// Whether our kernel computes the forward pass.
    pub fn direct_forward(self) -> bool {
        matches!(self, FirstConv::DirectForward | FirstConv::Direct)
    }

    /// Whether our kernels compute the weight gradient.
    pub fn direct_weight_grad(self) -> bool {
        self == FirstConv::Direct
    }

    /// In words, for logs: what runs where.
    pub fn describe(self) -> &'static str {
        match self {
            FirstConv::Cudnn => "cuDNN (--first-conv cudnn)",
            FirstConv::DirectForward => "our direct forward kernel (conv_c3.cu), cuDNN's weight gradient (--first-conv direct-forward)",
            FirstConv::Direct => "our direct kernels (conv_c3.cu) for the forward pass and the weight gradient (--first-conv direct)",
            FirstConv::CudnnGraph => "cuDNN's graph API, the fastest engine timed (--first-conv cudnn-graph)",
        }
    }
}

/// How the algorithms of a convolution shape (forward, backward data, backward filter) are
/// chosen, once per shape (see `ops::conv2d`).
///
/// Measured on one H200 (2026-11-26, cuDNN 9.19, bf16 channels-last ResNet-9 at batch 512,
/// `bench/results/h200-2026-11-26/build-5e7fb32/`): all three rules chose plans with the same
/// captured step time (3.92 to 3.96 ms); the three warm-up steps, which hold the search, took
/// 0.30 s with [`ConvSearch::Heuristic`], 2.1 s with [`ConvSearch::Find`] and 4.9 s with
/// [`ConvSearch::Timed`]; and `Find`, which times every algorithm once, chose a slow backward
/// algorithm for the first convolution in some processes (conv backward 4.0 ms per step
/// against 1.55 ms; five of nineteen processes that day ran 0.6 s epochs instead of 0.4 s).
/// Hence the default: the heuristics.
///
/// Through cuDNN's graph API (`--cudnn-graph`), `Find` and `Timed` both time the first
/// `ops::conv2d_plan::GRAPH_TIMED_CANDIDATES` engines cuDNN offers, a few runs each (`Find`'s
/// repeats do not apply; a shape at another batch size takes the engine timed for the
/// first), and `Heuristic` takes the first. Measured on an H200 (2026-11-27, build 98c8127):
/// timing every convolution's engines took 13.8 s of warm-up and left the captured step at
/// 3.10 ms (3.12 ms with the legacy API's heuristics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvSearch {
    /// cuDNN's heuristic ranking (`cudnnGet*Algorithm_v7`): its first usable algorithm,
    /// nothing timed.
    Heuristic,
    /// cuDNN's measured search (`cudnnFind*`: every algorithm, timed once), run `repeats`
    /// times (at least once); the lowest median time picks.
    Find { repeats: usize },
    /// Our own timing of the first few usable algorithms of cuDNN's heuristic ranking, a few
    /// runs each, the fastest median winning (`ops::conv2d_plan::TIMED_CANDIDATES`, `TIMED_RUNS`).
    Timed,
}

/// A graph-API convolution plan, shared by the calls that run it, or why cuDNN has none.
pub type GraphChoice = std::result::Result<Arc<crate::cudnn_graph::ConvGraph>, String>;

/// The launch of a grid-stride kernel `f` (one whose every thread loops `i += blockDim.x ·
/// gridDim.x`, so that any grid is correct) over `n` items: [`grid_stride_config`] with the
/// most threads per block the driver allows `f` (`CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK`,
/// 1024 if it cannot say). Every such kernel of `ptx/` uses at most 56 registers on sm_90 and
/// gets 1024-thread blocks; one that grew past 64 registers gets smaller blocks instead of the
/// driver's refusal of a 1024-thread block (`CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`, which the
/// H100 session of 2026-11-26 met in batch norm + ReLU's NCHW 16-byte pass).
pub fn grid_stride_launch(f: &CudaFunction, n: u32) -> cudarc::driver::LaunchConfig {
    grid_stride_config(n, max_threads_per_block(f))
}

/// The most threads per block the driver allows kernel `f` (its registers and shared memory
/// decide), or 1024 if it cannot say.
pub fn max_threads_per_block(f: &CudaFunction) -> u32 {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK;
    f.get_attribute(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK).ok().and_then(|t| u32::try_from(t).ok()).unwrap_or(1024)
}

/// One thread per item of `n` (at least one block) in blocks of `max_threads` rounded down to
/// whole warps, at most 1024 and at least 32: with 1024, cudarc's `for_num_elems`.
pub fn grid_stride_config(n: u32, max_threads: u32) -> cudarc::driver::LaunchConfig {
    let threads = (max_threads.min(1024) / 32 * 32).max(32);
    cudarc::driver::LaunchConfig { grid_dim: (n.max(1).div_ceil(threads), 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// [`CudaDevice::set_bnr_max_blocks`]'s value for "one wave": as many blocks as the GPU keeps
/// resident at once for the kernel launched (SMs times its occupancy).
pub const BNR_ONE_WAVE: u32 = u32::MAX;


/// A CUDA GPU: its context, the one stream all work is queued on, library handles,
/// the memory pool and the kernel modules compiled for it so far.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    arch: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Modules by source file name, compiled by NVRTC (or read from `kernel_cache`) on first use.
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    /// Where compiled kernels are kept for the next process (`None`: the cache is off).
    kernel_cache: Mutex<Option<KernelCache>>,
    /// How long the steps of opening this device took, in seconds; see [`CudaDevice::open_phases`].
    open_phases: Vec<(&'static str, f64)>,
    /// cuBLAS handle, bound to `stream`.
    blas: cudarc::cublas::CudaBlas,
    /// cuBLAS's workspace, set on the handle (declared after it: dropped after the handle).
    /// Without one, cuBLAS would allocate scratch memory inside a CUDA graph capture.
    _blas_workspace: CudaSlice<u8>,
    /// The graph API's plans per shape and direction, or why there is none. Declared before
    /// the cuDNN handle, so dropped before it: the plans were made with that handle.
    graph_plans: Mutex<HashMap<(crate::cudnn::ConvKey, crate::cudnn_graph::ConvOp), GraphChoice>>,
    /// cuDNN handle, bound to `stream` (cuDNN handles must not be used by two threads at once).
    cudnn: Mutex<CudnnHandle>,
    /// Convolution algorithms chosen per shape (see `ops::conv2d`), and the shared workspace.
    conv_plans: Mutex<HashMap<crate::cudnn::ConvKey, crate::cudnn::ConvChoice>>,
    workspace: Mutex<Option<CudaSlice<u8>>>,
    /// Whether cuDNN convolutions may use TF32 tensor cores for f32 data (PyTorch's default: yes).
    allow_tf32: AtomicBool,
    /// Whether convolutions may only use algorithms cuDNN marks deterministic (PyTorch's
    /// `torch.backends.cudnn.deterministic`; off by default).
    deterministic: AtomicBool,
    /// How each new convolution shape's algorithms are chosen; see [`CudaDevice::set_conv_search`].
    conv_search: Mutex<ConvSearch>,
    /// Whether convolutions go through cuDNN's backend (graph) API; see
    /// [`CudaDevice::set_conv_graph`].
    conv_graph: AtomicBool,
    /// Whether our kernels may move 16 bytes per access where shapes and alignment allow;
    /// see [`CudaDevice::set_vector_kernels`].
    vector_kernels: AtomicBool,
    /// Where a 3-channel first convolution runs, as a [`FirstConv`] number; see
    /// [`CudaDevice::set_first_conv`].
    first_conv: std::sync::atomic::AtomicU8,
    /// The most 256-thread blocks of batch norm + ReLU's channels-last 16-byte passes; see
    /// [`CudaDevice::set_bnr_max_blocks`].
    bnr_max_blocks: std::sync::atomic::AtomicU32,
    /// Streaming multiprocessors (the device attribute), for grids of one wave.
    sm_count: u32,
    /// cuDNN's error the first time its legacy backward-data refused to add into the gradient
    /// so far (β = 1); see [`CudaDevice::add_into_refusal`].
    add_into_refusal: Mutex<Option<String>>,
    /// Blocks per SM the occupancy calculator allowed, by kernel name and block size; see
    /// [`CudaDevice::one_wave`].
    resident_blocks: Mutex<HashMap<(String, u32), u32>>,
    /// Free blocks, graph reservations and the bytes in use (PyTorch's `memory_allocated`).
    pool: Mutex<BlockPool<CudaSlice<u8>>>,
    /// Requests may take a larger free block (see [`CudaDevice::best_fit`]).
    best_fit: AtomicBool,
    /// A block of ones per element type (the largest length asked so far), the source of
    /// [`CudaDevice::ones`]: a device-to-device copy instead of an upload every step.
    ones: Mutex<HashMap<DType, CudaSlice<u8>>>,
    /// Calls into the driver's allocator (pool misses and one-off uploads).
    driver_allocations: AtomicU64,
    /// Requests served from the pool.
    pool_hits: AtomicU64,
    /// Bytes obtained from the driver and not given back, and its peak (PyTorch's
    /// `max_memory_reserved`; includes the dataset, the workspace and the pool's free blocks).
    held: AtomicU64,
    peak_held: AtomicU64,
    /// While a graph capture runs: the blocks handed out so far (see [`CudaDevice::begin_capture`]).
    capture: Mutex<Option<CaptureLog>>,
    /// Number of [`DeviceGraph`]s alive.
    graphs_alive: AtomicUsize,
    /// Workspaces and blocks of ones replaced while a graph existed (it may read them).
    retired: Mutex<Vec<CudaSlice<u8>>>,
    /// While a per-kernel profile runs: an event recorded at each lookup of one of our
    /// kernels and before each cuDNN or cuBLAS call, with its name; see
    /// [`CudaDevice::start_kernel_trace`].
    kernel_trace: Mutex<Option<Vec<(String, CudaEvent)>>>,
}


impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaDevice({}, {:?}, {})", self.ordinal, self.name, self.arch)
    }
}

/// Turn a cudarc driver error into ours, naming the operation.
pub(crate) fn driver_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda { op, msg: e.to_string() }
}


impl CudaDevice {
    /// Open device `ordinal` (the libraries must already be known to load). `phases`: the
    /// steps taken before (library probes, the driver's start) with their seconds; the context,
    /// cuBLAS and cuDNN are added to them ([`CudaDevice::open_phases`]).
    pub(crate) fn open(ordinal: usize, mut phases: Vec<(&'static str, f64)>) -> Result<CudaDevice> {
        let mut clock = std::time::Instant::now();
        let mut lap = |name: &'static str, phases: &mut Vec<(&'static str, f64)>| {
            phases.push((name, clock.elapsed().as_secs_f64()));
            clock = std::time::Instant::now();
        };
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::CudaUnavailable(format!("could not create a context on device {ordinal}: {e}")))?;
        let name = ctx.name().map_err(driver_err("device name"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err("compute capability"))?;
        // One stream orders all our work, so cudarc's per-buffer events (for multi-stream
        // synchronisation) would only cost time.
        // SAFETY: no other stream of this context ever touches our buffers.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own (not the legacy default stream, which implicitly waits for
        // every other stream and cannot be captured into a CUDA graph).
        let stream = ctx.new_stream().map_err(driver_err("create stream"))?;
        lap("context", &mut phases);
        let blas = cudarc::cublas::CudaBlas::new(stream.clone())
            .map_err(|e| Error::CudaUnavailable(format!("could not create a cuBLAS handle: {e}")))?;
        // 32 MiB: NVIDIA's suggested cuBLAS workspace for Hopper.
        const BLAS_WORKSPACE: usize = 32 << 20;
        // SAFETY: scratch memory that cuBLAS writes before it reads.
        let blas_workspace = unsafe { stream.alloc::<u8>(BLAS_WORKSPACE) }.map_err(driver_err("cuBLAS workspace"))?;
        // SAFETY: a valid handle and a device buffer of BLAS_WORKSPACE bytes that outlives it
        // (a field of the device, dropped after the handle).
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), crate::cudnn::ptr(&blas_workspace, &stream) as *mut _, BLAS_WORKSPACE)
        }
        .result()
        .map_err(|e| Error::CudaUnavailable(format!("could not set the cuBLAS workspace: {e}")))?;
        lap("cuBLAS", &mut phases);
        ctx.bind_to_thread().map_err(driver_err("bind context"))?;
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("multiprocessor count"))?
            .max(1) as u32;
        let cudnn = CudnnHandle::new(&stream)
            .map_err(|e| Error::CudaUnavailable(format!("could not create a cuDNN handle: {e}")))?;
        lap("cuDNN", &mut phases);
        Ok(CudaDevice {
            blas,
            _blas_workspace: blas_workspace,
            cudnn: Mutex::new(cudnn),
            conv_plans: Mutex::new(HashMap::new()),
            workspace: Mutex::new(None),
            allow_tf32: AtomicBool::new(true),
            deterministic: AtomicBool::new(false),
            conv_search: Mutex::new(ConvSearch::Heuristic),
            conv_graph: AtomicBool::new(false),
            graph_plans: Mutex::new(HashMap::new()),
            vector_kernels: AtomicBool::new(true),
            first_conv: std::sync::atomic::AtomicU8::new(FirstConv::DEFAULT as u8),
            bnr_max_blocks: std::sync::atomic::AtomicU32::new(BNR_ONE_WAVE),
            kernel_trace: Mutex::new(None),
            sm_count,
            add_into_refusal: Mutex::new(None),
            resident_blocks: Mutex::new(HashMap::new()),
            ordinal,
            name,
            arch: format!("sm_{major}{minor}"),
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            kernel_cache: Mutex::new(KernelCache::from_env()),
            open_phases: phases,
            pool: Mutex::new(BlockPool::new()),
            best_fit: AtomicBool::new(false),
            ones: Mutex::new(HashMap::new()),
            driver_allocations: AtomicU64::new(0),
            pool_hits: AtomicU64::new(0),
            held: AtomicU64::new(0),
            peak_held: AtomicU64::new(0),
            capture: Mutex::new(None),
            graphs_alive: AtomicUsize::new(0),
            retired: Mutex::new(Vec::new()),
        })
    }

    /// The steps of opening this device and their seconds, in order: the library probes and
    /// the driver's start ([`crate::Device::cuda`]), the context and stream, the cuBLAS handle
    /// and its workspace, the cuDNN handle (all three are created here, not at first use).
    /// Loading cuDNN's and cuBLAS's kernels at their first use is not in them: the first
    /// convolution and the first matrix product pay for that.
    pub fn open_phases(&self) -> &[(&'static str, f64)] {
        &self.open_phases
    }

    /// Where compiled kernels are kept between processes, or `None` when the cache is off
    /// (`kernel_cache::location`).
    pub fn kernel_cache(&self) -> Option<KernelCache> {
        self.kernel_cache.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keep the kernel files loaded from now on in `cache` (`None`: no cache) instead of the
    /// folder the environment named when the device was opened (the GPU tests use a folder of
    /// their own).
    pub fn set_kernel_cache(&self, cache: Option<KernelCache>) {
        *self.kernel_cache.lock().unwrap_or_else(|e| e.into_inner()) = cache;
    }

    /// The device's index as the driver numbers it.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture kernels are compiled for, e.g. "sm_90".
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream all of this device's work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLAS handle (on this device's stream).
    pub fn blas(&self) -> &cudarc::cublas::CudaBlas {
        &self.blas
    }

    /// The cuDNN handle (on this device's stream), held for the duration of one call.
    pub fn cudnn(&self) -> Result<MutexGuard<'_, CudnnHandle>> {
        self.cudnn.lock().map_err(|_| Error::Invalid("cuDNN handle lock poisoned".into()))
    }

    /// Whether f32 convolutions may run on TF32 tensor cores (10-bit mantissa products,
    /// f32 accumulation). On by default, like PyTorch's `torch.backends.cudnn.allow_tf32`.
    pub fn allow_tf32(&self) -> bool {
        self.allow_tf32.load(Ordering::Relaxed)
    }

    /// Allow or forbid TF32 in f32 convolutions (tests compare against the CPU both ways).
    pub fn set_allow_tf32(&self, allow: bool) {
        self.allow_tf32.store(allow, Ordering::Relaxed);
    }

    /// Whether convolutions are restricted to algorithms cuDNN marks deterministic (the same
    /// inputs give the same bits every run). Off by default: the fastest algorithm may sum
    /// with atomics, in an order that changes from run to run.
    pub fn deterministic(&self) -> bool {
        self.deterministic.load(Ordering::Relaxed)
    }

    /// How each new convolution shape's algorithms are chosen.
    pub fn conv_search(&self) -> ConvSearch {
        *self.conv_search.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Choose how the algorithms of convolution shapes planned from now on are picked (the
    /// plans already made are kept). See [`ConvSearch`] for the measurements behind the default.
    pub fn set_conv_search(&self, search: ConvSearch) {
        *self.conv_search.lock().unwrap_or_else(|e| e.into_inner()) = search;
    }

    /// Why cuDNN's legacy backward-data could not add dx into the gradient so far (β = 1), if
    /// it refused once (`ops::conv2d::DataGrad::Into`): from then on dx is made anew and added
    /// by a separate pass, as it is through graph plans. `None`: never refused.
    pub fn add_into_refusal(&self) -> Option<String> {
        self.add_into_refusal.lock().ok().and_then(|r| r.clone())
    }

    /// Record cuDNN's refusal to add into dx (the first one is kept).
    pub fn note_add_into_refusal(&self, why: String) {
        if let Ok(mut r) = self.add_into_refusal.lock() {
            r.get_or_insert(why);
        }
    }

    /// Whether convolutions go through cuDNN's backend (graph) API first.
    pub fn conv_graph(&self) -> bool {
        self.conv_graph.load(Ordering::Relaxed)
    }

    /// Send convolutions through cuDNN's backend (graph) API (`crate::cudnn_graph`), the way
    /// recent PyTorch reaches cuDNN, or (the default) through the legacy API with an
    /// algorithm number. A shape and direction the graph API has no plan for runs on the
    /// legacy API, and [`CudaDevice::graph_refusals`] says why. On an H200 (2026-11-26)
    /// PyTorch's convolutions took 0.65 ms forward and 1.42 ms backward per training step
    /// where ours took 0.84 and 1.55 ms; this is the way to its kernels. Through it, with the
    /// engines timed, our captured step was no faster on an H200 (2026-11-27: 3.10 ms against
    /// 3.12 ms): its other seven convolutions took 0.634 ms forward and 1.349 ms backward,
    /// the legacy API's 0.618 and 1.335 ms.
    pub fn set_conv_graph(&self, on: bool) {
        self.conv_graph.store(on, Ordering::Relaxed);
    }

    /// The graph-API plan for convolution `key` in direction `op`, built with `build` the
    /// first time (a refusal is remembered too, so a shape is tried once). `build` is given
    /// the engine of a plan chosen by timing for the same convolution and direction at another
    /// batch size, with that batch (the largest such, if several), for it to reuse
    /// (`ops::conv2d_plan::graph_plan`).
    pub fn graph_conv(
        &self,
        key: crate::cudnn::ConvKey,
        op: crate::cudnn_graph::ConvOp,
        build: impl FnOnce(Option<(i64, usize)>) -> GraphChoice,
    ) -> Result<GraphChoice> {
        let mut plans = self.graph_plans.lock().map_err(|_| Error::Invalid("graph plan cache poisoned".into()))?;
        if let Some(p) = plans.get(&(key, op)) {
            return Ok(p.clone());
        }
        self.refuse_while_capturing("planning a new convolution with cuDNN's graph API")?;
        let timed_at_other_batch = plans
            .iter()
            .filter_map(|((k, o), c)| match c {
                Ok(g) if *o == op && k.same_but_batch(&key) && g.timed.is_some() => Some((g.engine, k.x[0])),
                _ => None,
            })
            .max_by_key(|&(_, batch)| batch);
        let p = build(timed_at_other_batch);
        plans.insert((key, op), p.clone());
        Ok(p)
    }

    /// One line per graph-API plan made: the shape, the direction, the engine and its workspace.
    pub fn graph_plan_lines(&self) -> Vec<String> {
        self.graph_lines(true)
    }

    /// What the graph API said for each shape and direction it has no plan for.
    pub fn graph_refusals(&self) -> Vec<String> {
        self.graph_lines(false)
    }

    fn graph_lines(&self, plans_not_refusals: bool) -> Vec<String> {
        let Ok(plans) = self.graph_plans.lock() else { return Vec::new() };
        let mut lines: Vec<String> = plans
            .iter()
            .filter(|(_, c)| c.is_ok() == plans_not_refusals)
            .map(|((k, op), c)| {
                let what = match c {
                    Ok(g) => format!("{g:?}"),
                    Err(why) => why.clone(),
                };
                format!("{:?} {:?} x {:?} w {:?} pad {} stride {} {op:?}: {what}", k.dtype, k.layout, k.x, k.w, k.pad, k.stride)
            })
            .collect();
        lines.sort();
        lines
    }

    /// Whether our kernels' 16-byte variants may run (batch norm + ReLU's passes and
    /// reductions, max-pooling, bf16 add and accumulation).
    pub fn vector_kernels(&self) -> bool {
        self.vector_kernels.load(Ordering::Relaxed)
    }

    /// Where a bf16 channels-last 3×3 convolution of 3 input channels (the network's first)
    /// runs: cuDNN (its legacy or its graph API), or our direct kernels (`ops::conv2d_c3`) for
    /// its forward pass, or for its forward pass and its weight gradient.
    pub fn first_conv(&self) -> FirstConv {
        FirstConv::from_u8(self.first_conv.load(Ordering::Relaxed))
    }

    /// Choose where the 3-channel first convolution runs (default [`FirstConv::DEFAULT`]), so
    /// that a profile can measure each choice. The results differ in the last bits (another
    /// order of the same sums).
    pub fn set_first_conv(&self, at: FirstConv) {
        self.first_conv.store(at as u8, Ordering::Relaxed);
    }

    /// Cap the blocks (of 256 threads) of batch norm + ReLU's channels-last 16-byte passes at
    /// `blocks` (each thread then visits several 16-byte groups of one channel group and reads
    /// that group's per-channel values once); [`BNR_ONE_WAVE`] (the default): as many as the
    /// GPU runs at once for that kernel, so that no partial last wave of blocks runs at part
    /// occupancy (with the backward pass's 3 blocks per SM, 1024 blocks are 2.6 waves on an
    /// H100 or H200); or with 0 launch one thread per group, as before any cap existed, where
    /// every thread reads its channels' values for its one group. A profile of each measures
    /// what they gain; the results are the same bits either way.
    pub fn set_bnr_max_blocks(&self, blocks: u32) {
        self.bnr_max_blocks.store(blocks, Ordering::Relaxed);
    }

    /// The most 256-thread blocks batch norm + ReLU's channels-last 16-byte passes launch
    /// (0: one thread per 16-byte group, no cap; [`BNR_ONE_WAVE`]: one wave).
    pub fn bnr_max_blocks(&self) -> u32 {
        self.bnr_max_blocks.load(Ordering::Relaxed)
    }

    /// Streaming multiprocessors of the device.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// One wave of blocks of `threads` threads of kernel `name` (`f`): the SMs times the blocks
    /// one SM keeps resident for it, from the driver's occupancy calculator (registers, shared
    /// memory), asked once per kernel and block size and then kept, so that a launch sized by
    /// it costs no driver query. If the driver cannot say, 1024 (about one wave of 256-thread
    /// blocks on an H100 or H200 at 2048 threads per SM).
    pub fn one_wave(&self, name: &str, threads: u32, f: &cudarc::driver::CudaFunction) -> u32 {
        let key = (name.to_string(), threads);
        // A poisoned lock still holds whole entries (an insert cannot be half done).
        let mut cache = self.resident_blocks.lock().unwrap_or_else(|e| e.into_inner());
        let per_sm = match cache.get(&key) {
            Some(&n) => Some(n),
            None => match f.occupancy_max_active_blocks_per_multiprocessor(threads, 0, None) {
                Ok(n) => {
                    cache.insert(key, n);
                    Some(n)
                }
                Err(_) => None,
            },
        };
        match per_sm {
            Some(n) if n > 0 => n.saturating_mul(self.sm_count),
            _ => 1024,
        }
    }

    /// Allow (the default) or forbid the 16-byte variants of our kernels, which move 8 bf16 or
    /// 4 f32 values per access where the shapes and the buffers' alignment allow. Forbidden,
    /// our kernels move one value per access and max-pooling's forward is cuDNN's, as before
    /// them, so that a profile can measure what they gain. The results are the same except
    /// for the rounding of the batch norm statistics, whose reductions split differently.
    pub fn set_vector_kernels(&self, on: bool) {
        self.vector_kernels.store(on, Ordering::Relaxed);
    }

    /// Restrict convolutions to deterministic algorithms, or lift the restriction. Shapes
    /// searched before keep their plans under the old setting (the setting is part of the key).
    pub fn set_deterministic(&self, on: bool) {
        self.deterministic.store(on, Ordering::Relaxed);
    }

    /// The convolution plan for `key` (or cuDNN's refusal), computing it with `choose` the
    /// first time. `choose` gets the plan of the same convolution at another batch size, if
    /// one was made (the largest such batch): its algorithms can serve this batch too (see
    /// `ops::conv2d`). An error from `choose` is not remembered.
    pub fn conv_plan(
        &self,
        key: crate::cudnn::ConvKey,
        choose: impl FnOnce(Option<(usize, crate::cudnn::ConvPlan)>) -> Result<crate::cudnn::ConvChoice>,
    ) -> Result<crate::cudnn::ConvChoice> {
        let mut plans = self.conv_plans.lock().map_err(|_| Error::Invalid("convolution plan cache poisoned".into()))?;
        if let Some(p) = plans.get(&key) {
            return Ok(p.clone());
        }
        // The search runs and times kernels: impossible while a capture only records them.
        self.refuse_while_capturing("a cuDNN algorithm search for a new convolution shape")?;
        let other_batch = plans
            .iter()
            .filter_map(|(k, c)| match c {
                crate::cudnn::ConvChoice::Plan(p) if k.same_but_batch(&key) => Some((k.x[0], *p)),
                _ => None,
            })
            .max_by_key(|(n, _)| *n);
        let p = choose(other_batch)?;
        plans.insert(key, p.clone());
        Ok(p)
    }

    /// Number of convolution shapes planned (or refused) so far.
    pub fn conv_plan_count(&self) -> usize {
        self.conv_plans.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// The refusals among them: what cuDNN said for each shape it has no algorithm for.
    pub fn conv_refusals(&self) -> Vec<String> {
        let plans = match self.conv_plans.lock() {
            Ok(p) => p,
            Err(_) => return Vec::new(),
        };
        plans
            .iter()
            .filter_map(|(k, c)| match c {
                crate::cudnn::ConvChoice::Refused(why) => Some(format!("{k:?}: {why}")),
                crate::cudnn::ConvChoice::Plan(_) => None,
            })
            .collect()
    }

    /// The plans chosen so far, one line per shape: the shape and each kind's algorithm and
    /// math type (sorted, so two processes' choices can be compared line by line).
    pub fn conv_plan_lines(&self) -> Vec<String> {
        let plans = match self.conv_plans.lock() {
            Ok(p) => p,
            Err(_) => return Vec::new(),
        };
        let mut lines: Vec<String> = plans
            .iter()
            .filter_map(|(k, c)| match c {
                crate::cudnn::ConvChoice::Plan(p) => Some(format!(
                    "{:?} {:?} x {:?} w {:?} pad {} stride {}{}: forward {:?} ({:?}), backward data {:?} ({:?}), backward filter {:?} ({:?}){}",
                    k.dtype,
                    k.layout,
                    k.x,
                    k.w,
                    k.pad,
                    k.stride,
                    if k.tf32 { ", TF32 allowed" } else { "" },
                    p.fwd,
                    p.fwd_math,
                    p.bwd_data,
                    p.bwd_data_math,
                    p.bwd_filter,
                    p.bwd_filter_math,
                    p.searched_at_batch.map_or(String::new(), |n| format!(" (searched at batch {n})"))
                )),
                crate::cudnn::ConvChoice::Refused(_) => None,
            })
            .collect();
        lines.sort();
        lines
    }

    /// Run `f` with a workspace of at least `bytes` bytes (one buffer, grown when a
    /// larger request comes, reused by every cuDNN call on this device).
    pub fn with_workspace<T>(&self, bytes: usize, f: impl FnOnce(&mut CudaSlice<u8>) -> Result<T>) -> Result<T> {
        let mut ws = self.workspace.lock().map_err(|_| Error::Invalid("workspace lock poisoned".into()))?;
        let need = bytes.max(1);
        if ws.as_ref().is_none_or(|w| w.len() < need) {
            self.refuse_while_capturing(&format!("a cuDNN workspace of {need} bytes"))?;
            self.driver_allocations.fetch_add(1, Ordering::Relaxed);
            if let Some(old) = ws.take() {
                self.retire_or_free(old);
            }
            // SAFETY: a workspace is scratch memory that cuDNN writes before it reads.
            let fresh = match unsafe { self.stream.alloc::<u8>(need) } {
                Ok(w) => w,
                Err(_) => {
                    // As for tensors: give the pool's free blocks back and try once more.
                    self.release_cached();
                    self.synchronize()?;
                    // SAFETY: as above.
                    unsafe { self.stream.alloc::<u8>(need) }.map_err(|e| self.oom("workspace", need, e))?
                }
            };
            self.add_held(need);
            *ws = Some(fresh);
        }
        f(ws.as_mut().expect("set above"))
    }

    /// Calls into the driver's allocator so far. In steady-state training this stops growing.
    pub fn driver_allocations(&self) -> u64 {
        self.driver_allocations.load(Ordering::Relaxed)
    }

    /// Requests served from the pool so far.
    pub fn pool_hits(&self) -> u64 {
        self.pool_hits.load(Ordering::Relaxed)
    }

    fn lock_pool(&self) -> Result<MutexGuard<'_, BlockPool<CudaSlice<u8>>>> {
        self.pool.lock().map_err(|_| Error::Invalid("memory pool poisoned".into()))
    }

    /// Bytes of the pool's free blocks that no CUDA graph reserves (what
    /// [`CudaDevice::release_cached`] gives back).
    pub fn pool_free_bytes(&self) -> usize {
        self.pool.lock().map(|p| p.free_unreserved_bytes()).unwrap_or(0)
    }

    /// Give every free block of the pool that no CUDA graph reserves back to the driver.
    pub fn release_cached(&self) {
        if let Ok(mut p) = self.pool.lock() {
            let blocks = p.drain_unreserved();
            let bytes: usize = blocks.iter().map(|b| b.len()).sum();
            drop(blocks);
            self.held.fetch_sub(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Peak bytes of pooled memory in use at once: blocks held by tensors, and the blocks
    /// of live CUDA graphs (like PyTorch's `torch.cuda.max_memory_allocated`; the dataset
    /// and cuDNN's workspace are not pooled and not counted here).
    pub fn peak_in_use_bytes(&self) -> u64 {
        self.pool.lock().map(|p| p.peak_in_use()).unwrap_or(0)
    }

    /// Peak bytes obtained from the driver through this device and not yet given back (like
    /// PyTorch's `torch.cuda.max_memory_reserved`): pooled blocks, free or not, the dataset
    /// splits and the workspace. Not included: the small one-off uploads of [`CudaDevice::upload`]
    /// (per-epoch indices, labels and augmentation parameters, ~1.4 MB) and cuBLAS/cuDNN's own memory.
    pub fn peak_held_bytes(&self) -> u64 {
        self.peak_held.load(Ordering::Relaxed)
    }

    fn add_held(&self, bytes: usize) {
        let now = self.held.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        self.peak_held.fetch_max(now, Ordering::Relaxed);
    }

    /// Until the guard is dropped, a request with no free block of its exact size may take
    /// the smallest free block of up to twice its size (see [`crate::pool`]): for work whose
    /// sizes differ from the training step's (the last, partial batch of an epoch, the
    /// evaluation), so that it runs in the step's blocks (also those of a CUDA graph, lent
    /// between replays) instead of new ones. The training step itself allocates with exact
    /// fit, which keeps its steady state free of driver allocations.
    pub fn best_fit(self: &Arc<Self>) -> BestFit {
        let previous = self.best_fit.swap(true, Ordering::Relaxed);
        BestFit { dev: self.clone(), previous }
    }

    /// A buffer of `n` f32 whose contents are unspecified (for outputs a kernel or
    /// library call overwrites completely). From the pool when a block of that size is free.
    pub fn alloc(self: &Arc<Self>, n: usize) -> Result<CudaBuffer> {
        self.alloc_dtype(n, DType::F32)
    }

    /// A buffer of `n` elements of `dtype`, contents unspecified (see [`CudaDevice::alloc`]).
    /// Its block may be up to twice as large (see [`crate::pool`]).
    pub fn alloc_dtype(self: &Arc<Self>, n: usize, dtype: DType) -> Result<CudaBuffer> {
        // At least one byte: the driver's answer to a zero-byte request is not a usable block.
        let bytes = (n * dtype_size(dtype)).max(1);
        let reused = self.lock_pool()?.take(bytes, self.best_fit.load(Ordering::Relaxed));
        let (addr, block) = match reused {
            Some(b) => {
                self.pool_hits.fetch_add(1, Ordering::Relaxed);
                b
            }
            None => {
                self.refuse_while_capturing(&format!("a new block of {bytes} bytes"))?;
                let block = self.driver_alloc(bytes)?;
                self.lock_pool()?.add_new(bytes);
                (address(&block, &self.stream), block)
            }
        };
        if let Some(log) = self.capture.lock().ok().as_deref_mut().and_then(Option::as_mut) {
            log.blocks.insert(addr);
        }
        Ok(CudaBuffer { bytes: Some(block), addr, dtype, len: n, dev: self.clone() })
    }

    /// A buffer of `n` f32 zeros (from the pool, then cleared on the stream).
    pub fn alloc_zeros(self: &Arc<Self>, n: usize) -> Result<CudaBuffer> {
        self.alloc_zeros_dtype(n, DType::F32)
    }

    /// A buffer of `n` zeros of `dtype`.
    pub fn alloc_zeros_dtype(self: &Arc<Self>, n: usize, dtype: DType) -> Result<CudaBuffer> {
        let mut b = self.alloc_dtype(n, dtype)?;
        let bytes = b.size_bytes();
        if bytes > 0 {
            let block = b.bytes.as_mut().expect("just allocated");
            self.stream.memset_zeros(&mut block.slice_mut(0..bytes)).map_err(driver_err("memset"))?;
        }
        Ok(b)
    }

    /// A pooled buffer holding a copy of `values` (f32 or f64).
    pub fn upload_elems<T: Float + DeviceRepr>(self: &Arc<Self>, values: &[T]) -> Result<CudaBuffer> {
        self.refuse_while_capturing("an upload from the host")?;
        let mut b = self.alloc_dtype(values.len(), T::DTYPE)?;
        let name = self.name.clone();
        self.stream.memcpy_htod(values, &mut b.view_mut::<T>()?).map_err(|e| Error::Cuda {
            op: "upload",
            msg: format!("copying {} bytes to {name}: {e}", std::mem::size_of_val(values)),
        })?;
        Ok(b)
    }

    /// A pooled buffer of `n` ones of `dtype`, copied on the device from a cached block (the
    /// tape's seed dL/dL and the linear layer's bias products need ones every step; an
    /// upload from pageable host memory may wait for the stream).
    pub fn ones(self: &Arc<Self>, n: usize, dtype: DType) -> Result<CudaBuffer> {
        let bytes = n * dtype_size(dtype);
        let mut cache = self.ones.lock().map_err(|_| Error::Invalid("ones cache poisoned".into()))?;
        if cache.get(&dtype).is_none_or(|b| b.len() < bytes) {
            self.refuse_while_capturing(&format!("a block of {n} ones"))?;
            if let Some(old) = cache.remove(&dtype) {
                self.retire_or_free(old);
            }
            let host: Vec<u8> = match dtype {
                DType::F32 => (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect(),
                DType::F64 => (0..n).flat_map(|_| 1.0f64.to_le_bytes()).collect(),
                DType::BF16 => (0..n).flat_map(|_| crate::tensor::bf16_bits(1.0).to_le_bytes()).collect(),
            };
            let block = self.upload(&host)?;
            self.add_held(block.len());
            cache.insert(dtype, block);
        }
        let src = cache.get(&dtype).expect("inserted above");
        let mut out = self.alloc_dtype(n, dtype)?;
        if bytes > 0 {
            let dst = out.bytes.as_mut().expect("just allocated");
            self.stream.memcpy_dtod(&src.slice(0..bytes), &mut dst.slice_mut(0..bytes)).map_err(driver_err("copy ones"))?;
        }
        Ok(out)
    }

    /// A pooled bf16 buffer holding the bit patterns `bits`.
    pub fn upload_bf16_bits(self: &Arc<Self>, bits: &[u16]) -> Result<CudaBuffer> {
        self.refuse_while_capturing("an upload from the host")?;
        let mut b = self.alloc_dtype(bits.len(), DType::BF16)?;
        let name = self.name.clone();
        self.stream.memcpy_htod(bits, &mut b.view_bf16_mut()?).map_err(|e| Error::Cuda {
            op: "upload",
            msg: format!("copying {} bytes to {name}: {e}", std::mem::size_of_val(bits)),
        })?;
        Ok(b)
    }

    /// Copy host values of any type to a new device buffer outside the pool (for data
    /// uploaded once: the dataset, per-epoch indices and labels).
    pub fn upload<T: DeviceRepr>(&self, values: &[T]) -> Result<CudaSlice<T>> {
        self.refuse_while_capturing("an upload from the host")?;
        self.driver_allocations.fetch_add(1, Ordering::Relaxed);
        self.stream.clone_htod(values).map_err(|e| Error::Cuda {
            op: "upload",
            msg: format!("copying {} bytes ({} MiB) to {}: {e}{}", std::mem::size_of_val(values),
                std::mem::size_of_val(values) >> 20, self.name, self.memory_report()),
        })
    }

    /// Overwrite a device buffer with host values (same length), keeping its address (buffers
    /// that a captured graph reads, e.g. an epoch's indices, are refilled this way).
    pub fn write<T: DeviceRepr>(&self, values: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        self.refuse_while_capturing("an upload from the host")?;
        if values.len() != dst.len() {
            return Err(Error::Invalid(format!("writing {} values into a device buffer of {}", values.len(), dst.len())));
        }
        self.stream.memcpy_htod(values, dst).map_err(|e| Error::Cuda {
            op: "upload",
            msg: format!("copying {} bytes to {}: {e}", std::mem::size_of_val(values), self.name),
        })
    }

    /// Copy several host byte slices back to back into one new device buffer (e.g. the
    /// memory-mapped files of a dataset split, without a host copy of their concatenation).
    pub fn upload_concat(&self, parts: &[&[u8]]) -> Result<CudaSlice<u8>> {
        self.refuse_while_capturing("an upload from the host")?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        self.driver_allocations.fetch_add(1, Ordering::Relaxed);
        // SAFETY: every byte is written by the copies below before anything reads it.
        let mut buf = unsafe { self.stream.alloc::<u8>(total) }.map_err(|e| self.oom("dataset", total, e))?;
        self.add_held(total);
        let mut at = 0;
        for p in parts {
            let mut dst = buf.slice_mut(at..at + p.len());
            self.stream.memcpy_htod(*p, &mut dst).map_err(|e| Error::Cuda {
                op: "upload",
                msg: format!("copying {} bytes to {}: {e}", p.len(), self.name),
            })?;
            at += p.len();
        }
        Ok(buf)
    }

    /// Copy a device buffer back to the host (waits for the stream's work on it).
    pub fn download<T: DeviceRepr>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        self.refuse_while_capturing("a copy to the host")?;
        self.stream.clone_dtoh(buf).map_err(driver_err("download"))
    }

    /// Copy a view of device memory back to the host (waits for the stream's work on it).
    pub fn download_view<T: DeviceRepr>(&self, view: &CudaView<'_, T>) -> Result<Vec<T>> {
        self.refuse_while_capturing("a copy to the host")?;
        self.stream.clone_dtoh(view).map_err(driver_err("download"))
    }

    /// Wait until all work queued on the stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.refuse_while_capturing("waiting for the GPU")?;
        self.stream.synchronize().map_err(driver_err("synchronize"))
    }

    /// Free and total device memory in bytes, as the driver reports them.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(driver_err("memory info"))
    }


    /// A new block from the driver. On failure the pool's free blocks are released and
    /// the request retried once; a second failure is an error with the sizes involved.
    fn driver_alloc(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        self.driver_allocations.fetch_add(1, Ordering::Relaxed);
        // SAFETY: callers of `alloc` either overwrite the buffer or clear it (`alloc_zeros`).
        let got = match unsafe { self.stream.alloc::<u8>(bytes) } {
            Ok(s) => Ok(s),
            Err(_) => {
                let cached = self.pool_free_bytes();
                self.release_cached();
                // Let the frees queued on the stream complete before retrying.
                self.synchronize()?;
                unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| {
                    let mut err = self.oom("tensor", bytes, e);
                    if let Error::Cuda { msg, .. } = &mut err {
                        msg.push_str(&format!(" ({} MiB of cached free blocks were released first)", cached >> 20));
                    }
                    err
                })
            }
        };
        if got.is_ok() {
            self.add_held(bytes);
        }
        got
    }

    /// An out-of-memory (or other allocation) error naming the request and the device's memory.
    fn oom(&self, what: &str, bytes: usize, e: cudarc::driver::DriverError) -> Error {
        Error::Cuda {
            op: "alloc",
            msg: format!("allocating a {what} of {bytes} bytes ({} MiB) on {}: {e}{}", bytes >> 20, self.name, self.memory_report()),
        }
    }

    /// "; device memory: F MiB free of T MiB", or nothing if the driver cannot say.
    fn memory_report(&self) -> String {
        match self.memory_info() {
            Ok((free, total)) => format!("; device memory: {} MiB free of {} MiB", free >> 20, total >> 20),
            Err(_) => String::new(),
        }
    }

    /// Return the block at `addr` to the pool. During a capture the block joins the capture's
    /// blocks: a buffer made before the capture and dropped during it may have been read or
    /// written by the captured work, so a replay uses it too (and it must not be lent to other
    /// work as if free).
    fn recycle(&self, addr: u64, block: CudaSlice<u8>) {
        if let Some(log) = self.capture.lock().ok().as_deref_mut().and_then(Option::as_mut) {
            log.blocks.insert(addr);
        }
        match self.pool.lock() {
            Ok(mut p) => p.give_back(addr, block),
            // A poisoned pool (a thread panicked holding it): the block is freed instead, unless
            // a graph exists (it may be that graph's, and a replay would write freed memory).
            Err(_) if self.graphs_alive.load(Ordering::Relaxed) > 0 => std::mem::forget(block),
            Err(_) => {
                self.held.fetch_sub(block.len() as u64, Ordering::Relaxed);
            }
        }
    }


    /// Free `block` (a replaced workspace or block of ones), or keep it for good if a graph
    /// exists or is being captured (its replays may read it).
    fn retire_or_free(&self, block: CudaSlice<u8>) {
        let capturing = self.capture.lock().map(|l| l.is_some()).unwrap_or(true);
        let keep = self.graphs_alive.load(Ordering::Relaxed) > 0 || capturing;
        match self.retired.lock() {
            Ok(mut r) if keep => r.push(block),
            _ => {
                self.held.fetch_sub(block.len() as u64, Ordering::Relaxed);
                drop(block);
            }
        }
    }

}

/// The device address of a block (for identifying blocks, and for kernels' pointer tables).
pub fn address<T>(s: &impl cudarc::driver::DevicePtr<T>, stream: &CudaStream) -> u64 {
    crate::cudnn::ptr(s, stream) as usize as u64
}

/// The scope of [`CudaDevice::best_fit`]: dropping it restores the previous fit.
pub struct BestFit {
    dev: Arc<CudaDevice>,
    previous: bool,
}

impl Drop for BestFit {
    fn drop(&mut self) {
        self.dev.best_fit.store(self.previous, Ordering::Relaxed);
    }
}


#[cfg(test)]
mod tests {
    use super::{FirstConv, grid_stride_config};
    use cudarc::driver::LaunchConfig;

    /// The device keeps its [`FirstConv`] as a number: each choice reads back as itself, and
    /// only the two direct choices give our kernels a pass.
    #[test]
    fn first_conv_choices_read_back_as_themselves() {
        for at in [FirstConv::Cudnn, FirstConv::CudnnGraph, FirstConv::DirectForward, FirstConv::Direct] {
            assert_eq!(FirstConv::from_u8(at as u8), at);
        }
        let ours = |at: FirstConv| (at.direct_forward(), at.direct_weight_grad());
        assert_eq!(ours(FirstConv::Cudnn), (false, false));
        assert_eq!(ours(FirstConv::CudnnGraph), (false, false));
        assert_eq!(ours(FirstConv::DirectForward), (true, false));
        assert_eq!(ours(FirstConv::Direct), (true, true));
    }

    /// Grid-stride launches: with 1024 threads allowed, cudarc's `for_num_elems` (what every
    /// kernel of `ptx/` gets today); with fewer, blocks of whole warps within the limit, one
    /// thread per item and no whole block idle; at least one block of 32 whatever the limit.
    #[test]
    fn grid_stride_launches_fit_the_kernels_limit() {
        for n in [0u32, 1, 31, 1024, 1025, 50_000, 16 << 20] {
            let l = grid_stride_config(n, 1024);
            let want = LaunchConfig::for_num_elems(n.max(1));
            assert_eq!((l.grid_dim, l.block_dim), (want.grid_dim, want.block_dim), "n = {n}");
            for (limit, block) in [(576u32, 576u32), (1000, 992), (2048, 1024), (40, 32), (0, 32)] {
                let l = grid_stride_config(n, limit);
                assert_eq!(l.block_dim, (block, 1, 1), "n = {n}, limit {limit}");
                let threads = l.grid_dim.0 * block;
                assert!(threads >= n && (threads - n.max(1)) < block, "n = {n}, limit {limit}: {threads} threads");
            }
        }
    }
}
