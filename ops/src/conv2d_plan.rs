//! How each convolution's cuDNN algorithms are chosen, once per shape, for [`crate::conv2d`].
//!
//! A convolution (input, filter, padding, stride, data type, layout, TF32 on/off) runs as
//! three products on cuDNN: forward, backward-data and backward-filter. cuDNN offers several
//! algorithms for each, and which is fastest depends on the shape and the GPU. Two APIs:
//!
//! - **The legacy API** (`CudnnConv::plan`): the algorithm of each kind is chosen by the
//!   device's rule (`engine::cuda::ConvSearch`): by default cuDNN's heuristic ranking (its
//!   first usable algorithm, no timing); `--cudnn-search find` measures with
//!   `cudnnFind*Algorithm` (`choose`, the median of several searches); `timed` times the
//!   heuristics' first [`TIMED_CANDIDATES`] candidates ourselves (`timed_search`).
//! - **The graph (backend) API** (`graph_plan`), where the device sends convolutions
//!   through it: cuDNN's ranking first, or the fastest of the first
//!   [`GRAPH_TIMED_CANDIDATES`] engines by our timing (`timed_graph_plan`).
//!
//! The choice is kept on the device ([`engine::cuda::CudaDevice::conv_plan`],
//! `graph_conv`); every call then reuses it and the device's one workspace buffer. A shape
//! that differs from a planned one only in its batch size (an epoch's last, smaller batch)
//! takes that plan's algorithms without a search of its own (`reuse_at_this_batch`).
//! Nothing here runs a convolution for its result: `conv2d.rs` does that with the plans.

use crate::conv2d::Dims;
use crate::{DType, Result};
use engine::Layout;
use engine::cuda::ConvSearch;
use engine::cudnn;
use engine::cudnn_graph::{self, ConvGraph, ConvOp};
use std::ffi::c_void;
use std::sync::Arc;

/// cuDNN descriptors of one convolution and its plan (cached on the device per shape).
pub(crate) struct CudnnConv {
    pub(crate) x: cudnn::TensorDesc,
    pub(crate) w: cudnn::FilterDesc,
    pub(crate) conv: cudnn::ConvDesc,
    pub(crate) y: cudnn::TensorDesc,
    pub(crate) plan: cudnn::ConvPlan,
}


/// Largest workspace an algorithm may ask for; faster ones needing more are skipped.
const MAX_WORKSPACE: usize = 1 << 30;

/// A convolution cuDNN can run, or its refusal (which kind of algorithm is missing, and why).
pub(crate) enum Planned {
    Ready(CudnnConv),
    Refused(String),
}

/// What identifies convolution `d` in `dtype` and `layout` for the plan caches, with the
/// device's current rules (TF32 for f32 data, deterministic algorithms only).
fn conv_key(dev: &engine::cuda::CudaDevice, d: &Dims, dtype: DType, layout: Layout) -> cudnn::ConvKey {
    let tf32 = dev.allow_tf32() && dtype == DType::F32;
    cudnn::ConvKey { dtype, layout, x: [d.n, d.c, d.h, d.w], w: [d.o, d.c, d.kh, d.kw], pad: d.p, stride: d.s, tf32, deterministic: dev.deterministic() }
}

impl CudnnConv {
    /// Descriptors for `d` in `dtype` and `layout`, and the (cached) plan, or cuDNN's refusal.
    pub(crate) fn plan(dev: &Arc<engine::cuda::CudaDevice>, d: &Dims, dtype: DType, layout: engine::Layout) -> Result<Planned> {
        let key = conv_key(dev, d, dtype, layout);
        let tf32 = key.tf32;
        let x = cudnn::TensorDesc::new(dtype, layout, d.n, d.c, d.h, d.w)?;
        let w = cudnn::FilterDesc::kcrs(dtype, layout, d.o, d.c, d.kh, d.kw)?;
        let conv = cudnn::ConvDesc::new(dtype, d.p, d.s, tf32)?;
        let y = cudnn::TensorDesc::new(dtype, layout, d.n, d.o, d.oh, d.ow)?;
        let choose = |other_batch: Option<(usize, cudnn::ConvPlan)>| {
            let reused = other_batch.and_then(|(n, p)| reuse_at_this_batch(dev, &x, &w, &y, dtype, d, tf32, n, p));
            match reused {
                Some(p) => Ok(cudnn::ConvChoice::Plan(p)),
                None => find(dev, &x, &w, &conv, &y, d, &key),
            }
        };
        match dev.conv_plan(key, choose)? {
            cudnn::ConvChoice::Plan(plan) => Ok(Planned::Ready(CudnnConv { x, w, conv, y, plan })),
            cudnn::ConvChoice::Refused(why) => Ok(Planned::Refused(why)),
        }
    }
}

/// The algorithms chosen for the same convolution at batch `n` (`plan`), for this shape's
/// batch, with this shape's workspace sizes; `None` if cuDNN does not take one of them here
/// (then this shape gets its own search). The last batch of an epoch (336 of 50,000 images
/// at batch 512) and of the test set (272 of 10,000) would otherwise each pay for a search of
/// every convolution, all three kinds, in the first epoch: 24 measured searches, about 2 s on
/// an H200 (2026-11-26, from the warm-up times with one and three searches), and the test
/// batches need only the forward. An algorithm's speed hardly depends on the batch size.
#[allow(clippy::too_many_arguments)]
fn reuse_at_this_batch(
    dev: &engine::cuda::CudaDevice,
    x: &cudnn::TensorDesc,
    w: &cudnn::FilterDesc,
    y: &cudnn::TensorDesc,
    dtype: DType,
    d: &Dims,
    tf32: bool,
    n: usize,
    plan: cudnn::ConvPlan,
) -> Option<cudnn::ConvPlan> {
    use cudarc::cudnn::sys;
    // A descriptor of our own: the queries set its math type.
    let conv = cudnn::ConvDesc::new(dtype, d.p, d.s, tf32).ok()?;
    let h = dev.cudnn().ok()?;
    let ok = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
    let (mut fwd, mut bwd_data, mut bwd_filter) = (0usize, 0usize, 0usize);
    conv.set_math(plan.fwd_math).ok()?;
    // SAFETY (three calls): valid handle and descriptors; cuDNN writes one size_t.
    if unsafe { sys::cudnnGetConvolutionForwardWorkspaceSize(h.raw(), x.raw(), w.raw(), conv.raw(), y.raw(), plan.fwd, &mut fwd) } != ok {
        return None;
    }
    conv.set_math(plan.bwd_data_math).ok()?;
    if unsafe { sys::cudnnGetConvolutionBackwardDataWorkspaceSize(h.raw(), w.raw(), y.raw(), conv.raw(), x.raw(), plan.bwd_data, &mut bwd_data) } != ok {
        return None;
    }
    conv.set_math(plan.bwd_filter_math).ok()?;
    if unsafe { sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(h.raw(), x.raw(), y.raw(), conv.raw(), w.raw(), plan.bwd_filter, &mut bwd_filter) } != ok {
        return None;
    }
    if fwd.max(bwd_data).max(bwd_filter) > MAX_WORKSPACE {
        return None;
    }
    Some(cudnn::ConvPlan {
        fwd_bytes: fwd,
        bwd_data_bytes: bwd_data,
        bwd_filter_bytes: bwd_filter,
        searched_at_batch: Some(plan.searched_at_batch.unwrap_or(n)),
        ..plan
    })
}

/// Choose the algorithms of the three kinds by the device's [`ConvSearch`] rule: cuDNN's
/// heuristic ranking (the default: its first usable algorithm); or measure every algorithm
/// and keep the fastest that succeeds within [`MAX_WORKSPACE`] (cuDNN returns them sorted by
/// time; `--cudnn-search find`); or (`--cudnn-search timed`) time only the first
/// [`TIMED_CANDIDATES`] usable algorithms of cuDNN's heuristic ranking ourselves,
/// [`TIMED_RUNS`] runs each on scratch buffers of the shape. If measuring fails (it needs
/// scratch memory of its own), cuDNN's heuristic ranking is used instead. A kind with no usable algorithm either way makes the shape
/// [`cudnn::ConvChoice::Refused`].
///
/// Locks: the plan cache (held by the caller), then the cuDNN handle; the timed runs use a
/// workspace of their own, not the device's shared one, whose lock the convolutions take
/// before the handle's.
fn find(
    dev: &Arc<engine::cuda::CudaDevice>,
    x: &cudnn::TensorDesc,
    w: &cudnn::FilterDesc,
    conv: &cudnn::ConvDesc,
    y: &cudnn::TensorDesc,
    d: &Dims,
    key: &cudnn::ConvKey,
) -> Result<cudnn::ConvChoice> {
    let (dtype, tf32) = (key.dtype, key.tf32);
    // Tensor-core math for bf16 data, or f32 with TF32 allowed; the rules of the plan's key.
    let search = dev.conv_search();
    let repeats = match search {
        ConvSearch::Heuristic => 0,
        ConvSearch::Find { repeats } => repeats.max(1),
        ConvSearch::Timed => 1,
    };
    let rules = SearchRules { tensor_cores: key.tensor_cores(), deterministic: key.deterministic, repeats };
    // Scratch x, w and y (zeros: the values do not change the time) and a descriptor of its
    // own (the candidates' math types are set on it) for our timing; without the memory,
    // cudnnFind as usual.
    let mut scratch = None;
    if search == ConvSearch::Timed {
        let alloc = || -> Result<_> {
            let (mut xs, mut ws, mut ys) = (dev.alloc_zeros_dtype(d.n * d.c * d.h * d.w, dtype)?, dev.alloc_zeros_dtype(d.o * d.ckk(), dtype)?, dev.alloc_zeros_dtype(d.n * d.o * d.ohw(), dtype)?);
            let ptrs = (xs.ptr_mut(), ws.ptr_mut(), ys.ptr_mut());
            Ok(((xs, ws, ys), ptrs, cudnn::ConvDesc::new(dtype, d.p, d.s, tf32)?))
        };
        scratch = alloc().ok();
    }
    let timing = scratch.as_ref().map(|(_, (xp, wp, yp), conv)| Timing { dev, dtype, conv: conv.raw(), x: *xp, w: *wp, y: *yp });
    let h = dev.cudnn()?;
    let planned = plan_all(h.raw(), x.raw(), w.raw(), conv.raw(), y.raw(), rules, timing.as_ref());
    Ok(match planned {
        Ok(plan) => cudnn::ConvChoice::Plan(plan),
        Err(why) => cudnn::ConvChoice::Refused(why),
    })
}

/// Algorithms of each kind that our timed search runs: the first usable ones of cuDNN's
/// heuristic ranking.
pub const TIMED_CANDIDATES: usize = 4;
/// Timed runs of each (after one untimed run); their median is its time.
pub const TIMED_RUNS: usize = 3;
const _: () = assert!(TIMED_RUNS >= 1);
/// The largest workspace a timed candidate may use (its own, allocated for its runs and
/// freed after them, as cudnnFind does; less than [`MAX_WORKSPACE`] to bound that memory).
const TIMED_MAX_WORKSPACE: usize = 256 << 20;

/// What our own timed search needs: the device (its stream and events), the data type (for
/// alpha and beta), a convolution descriptor for the candidates' math types, and device
/// addresses of scratch x, w and y of the shape.
struct Timing<'a> {
    dev: &'a engine::cuda::CudaDevice,
    dtype: DType,
    conv: cudarc::cudnn::sys::cudnnConvolutionDescriptor_t,
    x: *mut std::ffi::c_void,
    w: *mut std::ffi::c_void,
    y: *mut std::ffi::c_void,
}

impl Timing<'_> {
    /// The median GPU time of `TIMED_RUNS` runs of `run` (given a workspace of `bytes`), in
    /// ms; `None` if a run fails ([`median_ms_with_workspace`]).
    fn median_ms(&self, bytes: usize, run: impl Fn(*mut std::ffi::c_void) -> cudarc::cudnn::sys::cudnnStatus_t) -> Option<f32> {
        median_ms_with_workspace(self.dev, bytes, |ws| cudnn::check("cudnn convolution (timed search)", run(ws)))
    }
}

/// The median GPU time in ms of [`TIMED_RUNS`] runs of `run` (after one untimed run), each
/// given the address of a workspace of `bytes` of its own; `None` if a run fails. The runs are
/// queued back to back (`time_each`), so the host's work for the next run overlaps the GPU's
/// for the last one. Both timed searches use it: the legacy API's and the graph API's.
fn median_ms_with_workspace(dev: &engine::cuda::CudaDevice, bytes: usize, run: impl Fn(*mut c_void) -> Result<()>) -> Option<f32> {
    let st = dev.stream();
    // SAFETY: scratch that cuDNN writes before it reads. It is freed in the stream's order
    // (cudarc frees a slice on its stream, after the work queued before), and after time_each
    // has synchronised, or below when a run failed.
    let mut ws = unsafe { st.alloc::<u8>(bytes.max(1)) }.ok()?;
    let wp = cudnn::ptr_mut(&mut ws, st);
    let Ok(mut ms) = engine::profile::time_each(dev, TIMED_RUNS, || run(wp)) else {
        // (A run failed before time_each synchronised: let the runs queued finish before the
        // workspace, and the caller's candidates, go.)
        let _ = dev.synchronize();
        return None;
    };
    ms.sort_by(f64::total_cmp);
    Some(ms[ms.len() / 2] as f32)
}

/// Our timed search of one kind, in the shape of a `cudnnFind*` call (so that [`choose`] takes
/// either): the first [`TIMED_CANDIDATES`] `usable` results of `heuristic` that run, each timed by
/// `time_one` (its median ms and the workspace it ran with, or `None` if it cannot run), written
/// to `out` fastest first with `set(p, ms, bytes)` recorded in them; at most `n`, their number
/// in `count`. Not supported when none ran. (The search's parts and cudnnFind's output
/// arguments: more than clippy's seven.)
#[allow(clippy::too_many_arguments)]
fn timed_search<P: Copy>(
    heuristic: &dyn Fn(i32, &mut i32, *mut P) -> cudarc::cudnn::sys::cudnnStatus_t,
    usable: &dyn Fn(&P) -> bool,
    time_one: &dyn Fn(&P) -> Option<(f32, usize)>,
    set: &dyn Fn(&mut P, f32, usize),
    time: &dyn Fn(&P) -> f32,
    n: i32,
    count: &mut i32,
    out: *mut P,
) -> cudarc::cudnn::sys::cudnnStatus_t {
    use cudarc::cudnn::sys::cudnnStatus_t as S;
    const N: usize = 16;
    // SAFETY: cuDNN's perf structs are plain C data for which all-zero bytes are valid (as in choose).
    let mut ranked: [P; N] = unsafe { std::mem::zeroed() };
    let mut got = 0i32;
    let status = heuristic(N as i32, &mut got, ranked.as_mut_ptr());
    if status != S::CUDNN_STATUS_SUCCESS {
        return status;
    }
    // In ranking order, until TIMED_CANDIDATES have run (one that cannot run, e.g. over the
    // workspace cap, takes no place).
    let mut timed: Vec<P> = ranked[..(got.max(0) as usize).min(N)]
        .iter()
        .filter(|p| usable(p))
        .filter_map(|p| {
            let (ms, bytes) = time_one(p)?;
            let mut q = *p;
            set(&mut q, ms, bytes);
            Some(q)
        })
        .take(TIMED_CANDIDATES)
        .collect();
    timed.sort_by(|a, b| time(a).total_cmp(&time(b)));
    timed.truncate(n.max(0) as usize);
    if timed.is_empty() {
        *count = 0;
        return S::CUDNN_STATUS_NOT_SUPPORTED;
    }
    for (i, p) in timed.iter().enumerate() {
        // SAFETY: the caller's `out` has room for `n` results, and i < n.
        unsafe { *out.add(i) = *p };
    }
    *count = timed.len() as i32;
    S::CUDNN_STATUS_SUCCESS
}

/// What the algorithm search may choose, and how it measures.
#[derive(Clone, Copy, Debug)]
struct SearchRules {
    /// Tensor-core math types allowed (bf16 data, or f32 with TF32 allowed).
    tensor_cores: bool,
    /// Only algorithms cuDNN marks `CUDNN_DETERMINISTIC` (`--deterministic`).
    deterministic: bool,
    /// Measured searches per kind; the median time picks (`--cudnn-search find
    /// --cudnn-find-repeats N`). With 0 (`--cudnn-search heuristic`), cuDNN's heuristic
    /// ranking picks instead.
    repeats: usize,
}

/// [`find`]'s three searches on raw handles; `Err` says which kind has no usable algorithm.
/// With `timing`, our timed search ([`timed_search`]) takes `cudnnFind*`'s place.
fn plan_all(
    hr: cudarc::cudnn::sys::cudnnHandle_t,
    x: cudarc::cudnn::sys::cudnnTensorDescriptor_t,
    w: cudarc::cudnn::sys::cudnnFilterDescriptor_t,
    c: cudarc::cudnn::sys::cudnnConvolutionDescriptor_t,
    y: cudarc::cudnn::sys::cudnnTensorDescriptor_t,
    rules: SearchRules,
    timing: Option<&Timing<'_>>,
) -> std::result::Result<cudnn::ConvPlan, String> {
    use cudarc::cudnn::sys;
    let SearchRules { tensor_cores, deterministic, repeats } = rules;
    // One timed search: its median of runs already steadies the choice.
    let repeats = if timing.is_some() { repeats.min(1) } else { repeats };
    let ok = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
    // With TF32 forbidden for f32 data, only plain FMA math is acceptable.
    let math_ok = |m: sys::cudnnMathType_t| tensor_cores || m == sys::cudnnMathType_t::CUDNN_FMA_MATH;
    let det_ok = |d: sys::cudnnDeterminism_t| !deterministic || d == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC;
    // Before timing a candidate: its math type on the timing descriptor `tc`, and its
    // workspace size (`size` queries it), within TIMED_MAX_WORKSPACE.
    let prepare = |tc: sys::cudnnConvolutionDescriptor_t, math: sys::cudnnMathType_t, size: &dyn Fn(&mut usize) -> sys::cudnnStatus_t| -> Option<usize> {
        // SAFETY: a valid convolution descriptor.
        if unsafe { sys::cudnnSetConvolutionMathType(tc, math) } != ok {
            return None;
        }
        let mut bytes = 0usize;
        (size(&mut bytes) == ok && bytes <= TIMED_MAX_WORKSPACE).then_some(bytes)
    };

    // SAFETY (all the cuDNN calls below): valid handle and descriptors; searches write at most
    // `n` results into `out` and their number into `count`; workspace queries one size_t; the
    // timed runs read and write the scratch buffers of `timing`, which hold this shape's x, w
    // and y, with a workspace of the queried size.
    let fwd_heuristic = |n, count: &mut i32, out| unsafe { sys::cudnnGetConvolutionForwardAlgorithm_v7(hr, x, w, c, y, n, count, out) };
    let fwd_usable = |p: &sys::cudnnConvolutionFwdAlgoPerf_t| p.status == ok && p.memory <= MAX_WORKSPACE && math_ok(p.mathType) && det_ok(p.determinism);
    let fwd_time = |p: &sys::cudnnConvolutionFwdAlgoPerf_t| -> Option<(f32, usize)> {
        let t = timing?;
        let bytes = prepare(t.conv, p.mathType, &|b| unsafe { sys::cudnnGetConvolutionForwardWorkspaceSize(hr, x, w, t.conv, y, p.algo, b) })?;
        let ms = t.median_ms(bytes, |ws| unsafe {
            sys::cudnnConvolutionForward(hr, cudnn::one(t.dtype), x, t.x, w, t.w, t.conv, p.algo, ws, bytes, cudnn::zero(t.dtype), y, t.y)
        })?;
        Some((ms, bytes))
    };
    let f = choose::<sys::cudnnConvolutionFwdAlgoPerf_t>(
        "forward",
        |n, count, out| match timing {
            Some(_) => timed_search(&fwd_heuristic, &fwd_usable, &fwd_time, &|p, ms, b| (p.time, p.memory) = (ms, b), &|p| p.time, n, count, out),
            None => unsafe { sys::cudnnFindConvolutionForwardAlgorithm(hr, x, w, c, y, n, count, out) },
        },
        &fwd_heuristic,
        &fwd_usable,
        |p| (p.algo as u32, p.mathType as u32),
        |p| p.time,
        repeats,
    )?;

    let bwd_data_heuristic = |n, count: &mut i32, out| unsafe { sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(hr, w, y, c, x, n, count, out) };
    let bwd_data_usable = |p: &sys::cudnnConvolutionBwdDataAlgoPerf_t| p.status == ok && p.memory <= MAX_WORKSPACE && math_ok(p.mathType) && det_ok(p.determinism);
    let bwd_data_time = |p: &sys::cudnnConvolutionBwdDataAlgoPerf_t| -> Option<(f32, usize)> {
        let t = timing?;
        let bytes = prepare(t.conv, p.mathType, &|b| unsafe { sys::cudnnGetConvolutionBackwardDataWorkspaceSize(hr, w, y, t.conv, x, p.algo, b) })?;
        // dy is the scratch y, dx the scratch x.
        let ms = t.median_ms(bytes, |ws| unsafe {
            sys::cudnnConvolutionBackwardData(hr, cudnn::one(t.dtype), w, t.w, y, t.y, t.conv, p.algo, ws, bytes, cudnn::zero(t.dtype), x, t.x)
        })?;
        Some((ms, bytes))
    };
    let b = choose::<sys::cudnnConvolutionBwdDataAlgoPerf_t>(
        "backward data",
        |n, count, out| match timing {
            Some(_) => timed_search(&bwd_data_heuristic, &bwd_data_usable, &bwd_data_time, &|p, ms, b| (p.time, p.memory) = (ms, b), &|p| p.time, n, count, out),
            None => unsafe { sys::cudnnFindConvolutionBackwardDataAlgorithm(hr, w, y, c, x, n, count, out) },
        },
        &bwd_data_heuristic,
        &bwd_data_usable,
        |p| (p.algo as u32, p.mathType as u32),
        |p| p.time,
        repeats,
    )?;

    let bwd_filter_heuristic = |n, count: &mut i32, out| unsafe { sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(hr, x, y, c, w, n, count, out) };
    let bwd_filter_usable = |p: &sys::cudnnConvolutionBwdFilterAlgoPerf_t| p.status == ok && p.memory <= MAX_WORKSPACE && math_ok(p.mathType) && det_ok(p.determinism);
    let bwd_filter_time = |p: &sys::cudnnConvolutionBwdFilterAlgoPerf_t| -> Option<(f32, usize)> {
        let t = timing?;
        let bytes = prepare(t.conv, p.mathType, &|b| unsafe { sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(hr, x, y, t.conv, w, p.algo, b) })?;
        // dy is the scratch y, dw the scratch w.
        let ms = t.median_ms(bytes, |ws| unsafe {
            sys::cudnnConvolutionBackwardFilter(hr, cudnn::one(t.dtype), x, t.x, y, t.y, t.conv, p.algo, ws, bytes, cudnn::zero(t.dtype), w, t.w)
        })?;
        Some((ms, bytes))
    };
    let bf = choose::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>(
        "backward filter",
        |n, count, out| match timing {
            Some(_) => timed_search(&bwd_filter_heuristic, &bwd_filter_usable, &bwd_filter_time, &|p, ms, b| (p.time, p.memory) = (ms, b), &|p| p.time, n, count, out),
            None => unsafe { sys::cudnnFindConvolutionBackwardFilterAlgorithm(hr, x, y, c, w, n, count, out) },
        },
        &bwd_filter_heuristic,
        &bwd_filter_usable,
        |p| (p.algo as u32, p.mathType as u32),
        |p| p.time,
        repeats,
    )?;
    // The workspace each chosen algorithm needs with its math type, as cuDNN's query says
    // (the heuristics' `memory` is an estimate, and a workspace too small fails the call);
    // the larger of the two. After every search above: the queries set the math type on `c`
    // (the convolutions set theirs before each call).
    let need = |math: sys::cudnnMathType_t, listed: usize, size: &dyn Fn(&mut usize) -> sys::cudnnStatus_t| -> usize {
        let mut bytes = 0usize;
        // SAFETY: a valid convolution descriptor.
        let queried = unsafe { sys::cudnnSetConvolutionMathType(c, math) } == ok && size(&mut bytes) == ok;
        if queried { bytes.max(listed) } else { listed }
    };
    let fwd_bytes = need(f.mathType, f.memory, &|b| unsafe { sys::cudnnGetConvolutionForwardWorkspaceSize(hr, x, w, c, y, f.algo, b) });
    let bwd_data_bytes = need(b.mathType, b.memory, &|n| unsafe { sys::cudnnGetConvolutionBackwardDataWorkspaceSize(hr, w, y, c, x, b.algo, n) });
    let bwd_filter_bytes = need(bf.mathType, bf.memory, &|n| unsafe { sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(hr, x, y, c, w, bf.algo, n) });
    Ok(cudnn::ConvPlan {
        fwd: f.algo,
        fwd_bytes,
        fwd_math: f.mathType,
        bwd_data: b.algo,
        bwd_data_bytes,
        bwd_data_math: b.mathType,
        bwd_filter: bf.algo,
        bwd_filter_bytes,
        bwd_filter_math: bf.mathType,
        searched_at_batch: None,
    })
}

/// The fastest usable algorithm by the median of `repeats` measured searches (the device's
/// [`ConvSearch`], see [`engine::cuda::CudaDevice::set_conv_search`]), or the
/// first usable result of cuDNN's heuristics if `repeats` is 0, or the search fails or offers
/// nothing usable;
/// `Err` says what each said. `P` is one of cuDNN's `*AlgoPerf_t` structs; `id` gives its
/// (algorithm, math type) and `time` its measured milliseconds.
fn choose<P: Copy>(
    kind: &str,
    measured: impl Fn(i32, &mut i32, *mut P) -> cudarc::cudnn::sys::cudnnStatus_t,
    heuristic: impl Fn(i32, &mut i32, *mut P) -> cudarc::cudnn::sys::cudnnStatus_t,
    usable: impl Fn(&P) -> bool,
    id: impl Fn(&P) -> (u32, u32),
    time: impl Fn(&P) -> f32,
    repeats: usize,
) -> std::result::Result<P, String> {
    const N: usize = 16;
    let mut tried = Vec::new();
    // One search: its usable results, or what went wrong.
    let search = |f: &dyn Fn(i32, &mut i32, *mut P) -> cudarc::cudnn::sys::cudnnStatus_t| -> std::result::Result<(i32, Vec<P>), String> {
        // SAFETY: the perf structs are plain C data (enums, floats, sizes) for which all-zero
        // bytes are valid values (every enum has a variant 0).
        let mut out: [P; N] = unsafe { std::mem::zeroed() };
        let mut count = 0i32;
        cudnn::check("cudnn algorithm search", f(N as i32, &mut count, out.as_mut_ptr())).map_err(|e| e.to_string())?;
        Ok((count, out[..(count.max(0) as usize).min(N)].iter().filter(|p| usable(p)).copied().collect()))
    };
    let mut runs = Vec::new();
    for _ in 0..repeats {
        match search(&measured) {
            Ok((count, usable_ones)) if usable_ones.is_empty() => {
                tried.push(format!("cudnnFind: {count} algorithms, none usable"));
                break;
            }
            Ok((_, usable_ones)) => runs.push(usable_ones),
            Err(e) => {
                tried.push(format!("cudnnFind: {e}"));
                break;
            }
        }
    }
    if let Some(p) = fastest_by_median(&runs, &id, &time) {
        return Ok(p);
    }
    match search(&heuristic) {
        Ok((_, usable_ones)) if !usable_ones.is_empty() => return Ok(usable_ones[0]),
        Ok((count, _)) => tried.push(format!("heuristics: {count} algorithms, none usable")),
        Err(e) => tried.push(format!("heuristics: {e}")),
    }
    Err(format!("cuDNN offers no {kind} algorithm within {} MiB of workspace ({})", MAX_WORKSPACE >> 20, tried.join("; ")))
}

/// Of the algorithms usable in every search of `runs` (each a list of results, identified by
/// `id`), the one with the lowest median `time`; ties go to the earlier in the first run.
/// With no algorithm common to all runs, the first run's fastest; `None` without runs.
fn fastest_by_median<P: Copy>(runs: &[Vec<P>], id: impl Fn(&P) -> (u32, u32), time: impl Fn(&P) -> f32) -> Option<P> {
    let first = runs.first()?;
    let median = |p: &P| -> Option<f32> {
        let mut ts = runs.iter().map(|r| r.iter().find(|q| id(q) == id(p)).map(&time)).collect::<Option<Vec<f32>>>()?;
        ts.sort_by(f32::total_cmp);
        Some(ts[ts.len() / 2])
    };
    let mut best: Option<(f32, P)> = None;
    for p in first {
        if let Some(t) = median(p)
            && best.is_none_or(|(bt, _)| t < bt)
        {
            best = Some((t, *p));
        }
    }
    best.map(|(_, p)| p).or_else(|| first.first().copied())
}


/// The graph-API plan of direction `op` for this convolution where the device sends
/// convolutions through cuDNN's backend API (`CudaDevice::set_conv_graph`) and cuDNN has
/// one; `None`: the legacy API runs it (the device keeps the graph API's reason,
/// `CudaDevice::graph_refusals`).
///
/// Which plan: without a search (`--cudnn-search heuristic`, the default) the first that
/// cuDNN's ranking offers and our rules accept; with `find` or `timed`, the fastest of the
/// first [`GRAPH_TIMED_CANDIDATES`] by our timing ([`timed_graph_plan`]), as PyTorch's
/// `torch.backends.cudnn.benchmark` chooses among the graph API's engines. The first
/// convolution on the graph API alone (`--first-conv cudnn-graph`) is always timed: it is one
/// shape and its few candidates take milliseconds, and PyTorch's timing is what puts its first
/// convolution on CUTLASS kernels, 0.16 ms for both passes where our legacy-API plans take
/// 0.51 ms (H200, `bench/results/h200-2026-11-27/build-e6f273d/`).
pub(crate) fn graph_plan(dev: &Arc<engine::cuda::CudaDevice>, d: &Dims, dtype: DType, layout: Layout, op: ConvOp) -> Result<Option<Arc<ConvGraph>>> {
    // `--first-conv cudnn-graph`: the 3-channel first convolution through the graph API alone.
    let first_on_graph = dev.first_conv() == engine::cuda::FirstConv::CudnnGraph && d.c == 3;
    if !dev.conv_graph() && !first_on_graph {
        return Ok(None);
    }
    let key = conv_key(dev, d, dtype, layout);
    let choice = dev.graph_conv(key, op, |timed_at_other_batch| {
        // (Read here, when a plan is made, not on every call.)
        if first_on_graph || dev.conv_search() != ConvSearch::Heuristic {
            // The last batch of an epoch (336 of 50,000 images) and of the test set (272 of
            // 10,000) take the engine timed at the full batch, as the legacy API's plans do
            // (`reuse_at_this_batch`): an engine's speed hardly depends on the batch size.
            if let Some((engine, batch)) = timed_at_other_batch
                && let Some(g) = graph_plan_of_engine(dev, op, &key, engine, batch)
            {
                return Ok(Arc::new(g));
            }
            if let Some(g) = timed_graph_plan(dev, d, op, &key) {
                return Ok(Arc::new(g));
            }
        }
        let h = dev.cudnn().map_err(|e| e.to_string())?;
        cudnn_graph::plan(&h, op, &key, MAX_WORKSPACE).map(Arc::new)
    })?;
    Ok(choice.ok())
}

/// The plan of `engine` (timed for the same convolution at batch `batch`) for `key`, without
/// a search; `None` if cuDNN does not offer that engine, usable, at this shape.
fn graph_plan_of_engine(dev: &engine::cuda::CudaDevice, op: ConvOp, key: &cudnn::ConvKey, engine: i64, batch: usize) -> Option<ConvGraph> {
    let h = dev.cudnn().ok()?;
    let which = cudnn_graph::Candidates { limit: 1, runtime_compiled: true, engine: Some(engine) };
    let mut g = cudnn_graph::plans(&h, op, key, MAX_WORKSPACE, which).ok()?.into_iter().next()?;
    g.reused_from_batch = Some(batch);
    Some(g)
}

/// Graph-API plans a timed search runs: the first usable ones in cuDNN's order (PyTorch's
/// `torch.backends.cudnn.benchmark_limit` is 10 too).
pub const GRAPH_TIMED_CANDIDATES: usize = 10;

/// The fastest of the first [`GRAPH_TIMED_CANDIDATES`] graph-API plans for `key` in
/// direction `op` (engines cuDNN compiles at run time left out: finalizing one can take
/// seconds), each run once and then [`TIMED_RUNS`] times on scratch buffers of the shape
/// (zeros: the values do not change the time) with a workspace of its own of at most
/// [`TIMED_MAX_WORKSPACE`]; its median is its time ([`fastest`] picks). `None` where there is
/// nothing to time or no memory for the scratch buffers: the caller then takes cuDNN's
/// ranking first, as without a search.
///
/// Locks: the graph plan cache (held by the caller), then the cuDNN handle, taken and
/// released for the plans and for each run; never the device's shared workspace.
fn timed_graph_plan(dev: &Arc<engine::cuda::CudaDevice>, d: &Dims, op: ConvOp, key: &cudnn::ConvKey) -> Option<ConvGraph> {
    let candidates = {
        let h = dev.cudnn().ok()?;
        let which = cudnn_graph::Candidates { limit: GRAPH_TIMED_CANDIDATES, runtime_compiled: false, engine: None };
        cudnn_graph::plans(&h, op, key, TIMED_MAX_WORKSPACE, which).ok()?
    };
    let dtype = key.dtype;
    // x (or dx), w (or dw), y (or dy) of the shape, whichever direction reads or writes them.
    let (mut xs, mut ws, mut ys) =
        (dev.alloc_zeros_dtype(d.n * d.c * d.h * d.w, dtype).ok()?, dev.alloc_zeros_dtype(d.o * d.ckk(), dtype).ok()?, dev.alloc_zeros_dtype(d.n * d.o * d.ohw(), dtype).ok()?);
    let (xp, wp, yp) = (xs.ptr_mut(), ws.ptr_mut(), ys.ptr_mut());
    let times: Vec<Option<f32>> = candidates.iter().map(|g| graph_median_ms(dev, g, xp, wp, yp)).collect();
    let best = fastest(&times)?;
    let first_ms = if best == 0 { None } else { times[0] };
    let timed = cudnn_graph::Timed { ms: times[best]?, candidates: times.iter().flatten().count(), first_ms };
    let mut g = candidates.into_iter().nth(best)?;
    g.timed = Some(timed);
    Some(g)
}

/// The median GPU time in ms of [`TIMED_RUNS`] runs of graph plan `g` (after one untimed run)
/// on the buffers at `x`, `w`, `y`, with a workspace of its own; `None` if a run fails.
fn graph_median_ms(dev: &engine::cuda::CudaDevice, g: &ConvGraph, x: *mut c_void, w: *mut c_void, y: *mut c_void) -> Option<f32> {
    median_ms_with_workspace(dev, g.workspace, |ws| {
        let h = dev.cudnn()?;
        // SAFETY: x, w and y hold the plan's shapes in its type and layout (allocated for
        // this key by the caller), and the workspace at least g.workspace bytes.
        unsafe { cudnn_graph::execute(&h, g, x, w, y, ws) }
    })
}

/// The index of the smallest time of `times` (`None`: a candidate that could not be timed; a
/// time that is not finite counts as none); a tie goes to the earlier, which cuDNN ranked
/// higher. `None` if none was timed.
fn fastest(times: &[Option<f32>]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, t) in times.iter().enumerate() {
        if let Some(t) = *t
            && t.is_finite()
            && best.is_none_or(|(_, b)| t < b)
        {
            best = Some((i, t));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The algorithm choice by median: one fast outlier timing does not win, an algorithm
    /// missing from a search is not chosen, and the fallbacks hold.
    #[test]
    fn fastest_by_median_ignores_one_lucky_timing() {
        // (algorithm, time in ms) per search; algorithm 1 was timed fast once only.
        let runs = vec![vec![(1u32, 0.5f32), (2, 1.0), (3, 1.2)], vec![(2, 1.0), (3, 1.1), (1, 2.0)], vec![(2, 1.1), (1, 2.1), (3, 1.3)]];
        let pick = |runs: &[Vec<(u32, f32)>]| fastest_by_median(runs, |p| (p.0, 0), |p| p.1).map(|p| p.0);
        assert_eq!(pick(&runs), Some(2));
        assert_eq!(pick(&runs[..1]), Some(1), "one search: its fastest");
        // Algorithm 2 missing from the last search: 3 (median 1.2) beats 1 (median 2.0).
        let mut gap = runs.clone();
        gap[2].retain(|p| p.0 != 2);
        assert_eq!(pick(&gap), Some(3));
        // Nothing common to all searches: the first search's fastest.
        assert_eq!(pick(&[vec![(1, 1.0)], vec![(2, 1.0)]]), Some(1));
        assert_eq!(pick(&[]), None);
    }

    /// `choose` with stand-in searches (cuDNN's perf structs replaced by (algorithm, time)
    /// pairs): `repeats` measured searches are made and the median picks; with 0 none is made
    /// and the heuristic ranking's first usable algorithm wins (`--cudnn-search heuristic`); a
    /// failed measured search falls back to the heuristics; nothing usable is an error.
    #[test]
    fn choose_searches_as_often_as_asked_and_falls_back_to_heuristics() {
        use cudarc::cudnn::sys::cudnnStatus_t as S;
        use std::cell::Cell;
        let measured_calls = Cell::new(0);
        // Each measured search: algorithms 7 (slow), 3, 5 (fastest); the heuristics rank 9
        // (unusable), 3, 7.
        let fill = |out: *mut (u32, f32), list: &[(u32, f32)], count: &mut i32| {
            for (i, p) in list.iter().enumerate() {
                // SAFETY: choose passes room for 16 results; the lists here are shorter.
                unsafe { *out.add(i) = *p };
            }
            *count = list.len() as i32;
        };
        let measured = |ok: bool| {
            let calls = &measured_calls;
            move |_n: i32, count: &mut i32, out: *mut (u32, f32)| {
                calls.set(calls.get() + 1);
                if !ok {
                    return S::CUDNN_STATUS_EXECUTION_FAILED;
                }
                fill(out, &[(7, 3.0), (3, 2.0), (5, 1.0)], count);
                S::CUDNN_STATUS_SUCCESS
            }
        };
        let heuristic = |_n: i32, count: &mut i32, out: *mut (u32, f32)| {
            fill(out, &[(9, 0.0), (3, 0.0), (7, 0.0)], count);
            S::CUDNN_STATUS_SUCCESS
        };
        let usable = |p: &(u32, f32)| p.0 != 9;
        let pick = |ok: bool, repeats: usize| choose("forward", measured(ok), heuristic, usable, |p| (p.0, 0), |p| p.1, repeats).map(|p| p.0);
        assert_eq!(pick(true, 1), Ok(5));
        assert_eq!(measured_calls.replace(0), 1);
        assert_eq!(pick(true, 3), Ok(5));
        assert_eq!(measured_calls.replace(0), 3);
        assert_eq!(pick(true, 0), Ok(3), "no measured search: the heuristics' first usable");
        assert_eq!(measured_calls.replace(0), 0);
        assert_eq!(pick(false, 2), Ok(3), "a failed search falls back to the heuristics");
        assert_eq!(measured_calls.replace(0), 1, "and is not repeated");
        let none = choose("forward", measured(true), heuristic, |_| false, |p| (p.0, 0), |p| p.1, 1);
        assert!(none.unwrap_err().contains("no forward algorithm"));
    }

    /// The timed graph search keeps the smallest time; a tie goes to the candidate cuDNN
    /// ranked higher, and candidates that could not be timed (or whose time is not a number)
    /// never win.
    #[test]
    fn the_fastest_graph_candidate_is_the_smallest_time_ties_to_the_earlier() {
        assert_eq!(fastest(&[Some(0.31), Some(0.08), Some(0.12)]), Some(1));
        assert_eq!(fastest(&[Some(0.2), Some(0.1), Some(0.1)]), Some(1));
        assert_eq!(fastest(&[None, Some(0.5), None, Some(0.4)]), Some(3));
        assert_eq!(fastest(&[Some(f32::NAN), Some(0.5), Some(f32::INFINITY)]), Some(1));
        assert_eq!(fastest(&[Some(0.05)]), Some(0));
        assert_eq!(fastest(&[None, Some(f32::NAN)]), None);
        assert_eq!(fastest(&[]), None);
    }

    /// Our timed search with stand-ins ((algorithm, time, workspace) for cuDNN's perf structs):
    /// it runs the usable algorithms in the heuristic ranking's order until TIMED_CANDIDATES
    /// have run (one that cannot run takes no place), records each one's measured time and
    /// workspace, lists them fastest first (at most `n`), and reports "not supported" when none
    /// ran, so that choose falls back to the heuristics.
    #[test]
    fn timed_search_times_the_top_usable_candidates_only() {
        use cudarc::cudnn::sys::cudnnStatus_t as S;
        use std::cell::RefCell;
        type P = (u32, f32, usize);
        // Ranked: 9 (unusable), then 1..=6; algorithm 3 cannot run; measured times 1: 2.0,
        // 2: 0.5, 4: 1.0, 5: 3.0; 6 (it would be the fastest) comes after four have run.
        let heuristic = |_n: i32, count: &mut i32, out: *mut P| {
            let ranked: [P; 7] = [(9, 0.0, 0), (1, 0.0, 0), (2, 0.0, 0), (3, 0.0, 0), (4, 0.0, 0), (5, 0.0, 0), (6, 0.0, 0)];
            for (i, p) in ranked.iter().enumerate() {
                // SAFETY: timed_search passes room for 16.
                unsafe { *out.add(i) = *p };
            }
            *count = ranked.len() as i32;
            S::CUDNN_STATUS_SUCCESS
        };
        let ran = RefCell::new(Vec::new());
        let time_one = |p: &P| {
            ran.borrow_mut().push(p.0);
            match p.0 {
                1 => Some((2.0, 100)),
                2 => Some((0.5, 200)),
                4 => Some((1.0, 400)),
                5 => Some((3.0, 500)),
                6 => Some((0.1, 600)),
                _ => None,
            }
        };
        let set = |p: &mut P, ms: f32, bytes: usize| (p.1, p.2) = (ms, bytes);
        let search = |n: i32, usable: &dyn Fn(&P) -> bool| {
            let mut out = [(0u32, 0f32, 0usize); 16];
            let mut count = -1;
            let status = timed_search(&heuristic, usable, &time_one, &set, &|p| p.1, n, &mut count, out.as_mut_ptr());
            (status, out[..count.max(0) as usize].to_vec())
        };
        let (status, got) = search(16, &|p| p.0 != 9);
        assert_eq!(status, S::CUDNN_STATUS_SUCCESS);
        assert_eq!(got, vec![(2, 0.5, 200), (4, 1.0, 400), (1, 2.0, 100), (5, 3.0, 500)]);
        assert_eq!(ran.replace(Vec::new()), vec![1, 2, 3, 4, 5], "until TIMED_CANDIDATES have run, no more");
        assert_eq!(TIMED_CANDIDATES, 4);
        assert_eq!(search(2, &|p| p.0 != 9).1, vec![(2, 0.5, 200), (4, 1.0, 400)], "at most n");
        let (status, got) = search(16, &|p| p.0 == 3);
        assert_eq!((status, got), (S::CUDNN_STATUS_NOT_SUPPORTED, vec![]), "nothing ran");
    }
}
