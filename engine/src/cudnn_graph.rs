//! One convolution through cuDNN's backend ("graph") API: the way recent PyTorch reaches
//! cuDNN, and the only way to cuDNN's newest kernels (on Hopper, the `sm90_xmma_*`
//! implicit-GEMM kernels PyTorch's profile shows). The legacy API (`cudnnConvolutionForward`
//! with an algorithm number, `ops::conv2d`) stays the default; this path is opt-in
//! (`CudaDevice::set_conv_graph`): on an H200 (2026-11-27, build 98c8127) it made the captured
//! step no faster (3.10 ms with every engine timed, against 3.12 ms), and for the first
//! convolution alone (`--first-conv cudnn-graph`, timed: 0.146 + 0.117 ms against the legacy
//! plans' 0.318 + 0.198 ms) it lost to our kernels (0.067 + 0.085 ms).
//!
//! A convolution here is a graph of one operation, built once per shape and direction:
//!
//! ```text
//! tensor descriptors x, w, y (ids 1, 2, 3; dims [N,C,H,W], [K,C,R,S], [N,K,OH,OW] with
//!     the layout's strides)
//!   + a convolution descriptor (cross-correlation, padding, stride, compute type)
//!   -> an operation (forward: x, w -> y; backward data: w, dy -> dx; backward filter:
//!      x, dy -> dw; the gradient takes the id of the tensor it is the gradient of)
//!   -> an operation graph -> cuDNN's heuristics rank engine configurations (mode A, then
//!      its fallback list)
//!   -> the first that our rules accept and that finalizes as an execution plan, or, for a
//!      timed search (`ops::conv2d`), the first ten such, each timed, the fastest kept
//! ```
//!
//! Running it is one `cudnnBackendExecute` with a variant pack: the three ids, the three
//! device addresses, the workspace. Every descriptor is destroyed when its owner drops.

use crate::cudnn::{ConvKey, CudnnHandle, check, compute_type, data_type};
use crate::{DType, Layout};
use cudarc::cudnn::sys;
use sys::cudnnBackendAttributeName_t as Attr;
use sys::cudnnBackendAttributeType_t as Ty;
use sys::cudnnBackendDescriptorType_t as Kind;

/// The three directions of a convolution, each its own graph, and backward-data adding into
/// the gradient so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvOp {
    /// y = conv(x, w).
    Forward,
    /// dx from w and dy.
    BackwardData,
    /// dx from w and dy added into dx as it was (β = 1): the join of a residual block's
    /// gradients (`ops::conv2d::DataGrad::Into`).
    BackwardDataAdd,
    /// dw from x and dy.
    BackwardFilter,
}

/// The tensors' ids in every graph and variant pack: x (or dx), w (or dw), y (or dy).
const X: i64 = 1;
const W: i64 = 2;
const Y: i64 = 3;

/// A backend descriptor, destroyed on drop.
struct Desc(sys::cudnnBackendDescriptor_t);

// SAFETY: a backend descriptor is plain host memory owned by this value, not tied to the
// thread that made it.
unsafe impl Send for Desc {}

impl Desc {
    fn new(kind: Kind) -> crate::Result<Desc> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: cudnnBackendCreateDescriptor writes a new descriptor into `raw`.
        check("cudnnBackendCreateDescriptor", unsafe { sys::cudnnBackendCreateDescriptor(kind, &mut raw) })?;
        Ok(Desc(raw))
    }

    /// Set attribute `name` to `values`, elements of the C type that `ty` names (the caller
    /// matches them: i64 for INT64, f32 for FLOAT, raw descriptors for BACKEND_DESCRIPTOR...).
    fn set<T>(&self, name: Attr, ty: Ty, values: &[T]) -> crate::Result<()> {
        let n = i64::try_from(values.len()).map_err(|_| crate::Error::Invalid("too many attribute values".into()))?;
        // SAFETY: `values` holds n elements of the type `ty` names; cuDNN copies them.
        check("cudnnBackendSetAttribute", unsafe { sys::cudnnBackendSetAttribute(self.0, name, ty, n, values.as_ptr().cast()) })
    }

    fn set_descs(&self, name: Attr, descs: &[&Desc]) -> crate::Result<()> {
        let raw: Vec<sys::cudnnBackendDescriptor_t> = descs.iter().map(|d| d.0).collect();
        self.set(name, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw)
    }

    fn finalize(&self) -> crate::Result<()> {
        // SAFETY: a descriptor whose required attributes were set.
        check("cudnnBackendFinalize", unsafe { sys::cudnnBackendFinalize(self.0) })
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnBackendCreateDescriptor and destroyed once; a failure
        // cannot be reported here.
        unsafe { sys::cudnnBackendDestroyDescriptor(self.0) };
    }
}

/// The strides of `dims` ([N, C, H, W] order) stored in `layout`: NCHW row-major, or NHWC
/// (C fastest, then W, then H, then N). The filter uses the same rule: KCRS or KRSC.
pub fn strides(dims: [usize; 4], layout: Layout) -> [i64; 4] {
    let [_, c, h, w] = dims.map(|v| v as i64);
    match layout {
        Layout::Nchw => [c * h * w, h * w, w, 1],
        Layout::Nhwc => [h * w * c, 1, w * c, c],
    }
}

/// A tensor descriptor with id `uid`, 16-byte alignment (every buffer of our pool is 256-byte
/// aligned).
fn tensor(uid: i64, dtype: DType, layout: Layout, dims: [usize; 4]) -> crate::Result<Desc> {
    let t = Desc::new(Kind::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    t.set(Attr::CUDNN_ATTR_TENSOR_DATA_TYPE, Ty::CUDNN_TYPE_DATA_TYPE, &[data_type(dtype)])?;
    t.set(Attr::CUDNN_ATTR_TENSOR_DIMENSIONS, Ty::CUDNN_TYPE_INT64, &dims.map(|v| v as i64))?;
    t.set(Attr::CUDNN_ATTR_TENSOR_STRIDES, Ty::CUDNN_TYPE_INT64, &strides(dims, layout))?;
    t.set(Attr::CUDNN_ATTR_TENSOR_UNIQUE_ID, Ty::CUDNN_TYPE_INT64, &[uid])?;
    t.set(Attr::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, Ty::CUDNN_TYPE_INT64, &[16i64])?;
    t.finalize()?;
    Ok(t)
}

/// The operation of direction `op` on tensors x, w, y with convolution `conv`; alpha 1 and
/// beta 0 (1 for [`ConvOp::BackwardDataAdd`]) in the compute type (f32, or f64 for f64 data).
fn operation(op: ConvOp, dtype: DType, x: &Desc, w: &Desc, y: &Desc, conv: &Desc) -> crate::Result<Desc> {
    let (kind, names) = match op {
        ConvOp::Forward => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
            [
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA,
            ],
        ),
        ConvOp::BackwardData | ConvOp::BackwardDataAdd => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
            [
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA,
            ],
        ),
        ConvOp::BackwardFilter => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
            [
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA,
            ],
        ),
    };
    let [xn, wn, yn, cn, alpha, beta] = names;
    let d = Desc::new(kind)?;
    d.set_descs(xn, &[x])?;
    d.set_descs(wn, &[w])?;
    d.set_descs(yn, &[y])?;
    d.set_descs(cn, &[conv])?;
    let b = if op == ConvOp::BackwardDataAdd { 1.0 } else { 0.0 };
    if dtype == DType::F64 {
        d.set(alpha, Ty::CUDNN_TYPE_DOUBLE, &[1.0f64])?;
        d.set(beta, Ty::CUDNN_TYPE_DOUBLE, &[b])?;
    } else {
        d.set(alpha, Ty::CUDNN_TYPE_FLOAT, &[1.0f32])?;
        d.set(beta, Ty::CUDNN_TYPE_FLOAT, &[b as f32])?;
    }
    d.finalize()?;
    Ok(d)
}

/// Why an engine is refused by `s`'s rules, from its numerical notes (cuDNN's
/// `cudnnBackendNumericalNote_t` values): tensor cores where they are not allowed; inputs
/// converted to a narrower type than the data's, or sums in a narrower type than f32 (the
/// legacy API's algorithms, and PyTorch's engine filter, do neither); atomics where
/// determinism is asked for (the rules of `key`). `None`: accepted.
pub fn refusal(notes: &[u32], key: &ConvKey) -> Option<&'static str> {
    use sys::cudnnBackendNumericalNote_t as N;
    let has = |n: N| notes.contains(&(n as u32));
    if !key.tensor_cores() && has(N::CUDNN_NUMERICAL_NOTE_TENSOR_CORE) {
        return Some("tensor cores not allowed");
    }
    if has(N::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS) {
        return Some("converts the inputs to a narrower type");
    }
    if has(N::CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION) {
        return Some("sums in reduced precision");
    }
    if key.deterministic && has(N::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) {
        return Some("not deterministic");
    }
    None
}

/// The descriptors an operation graph was built from (tensors, convolution, operation,
/// graph), kept alive as long as any plan made from them.
struct Shared {
    _descs: Vec<Desc>,
}

// SAFETY: the descriptors are finalized before they are shared and never read or changed
// through this value afterwards; it only keeps them alive (and destroys them once, on drop).
unsafe impl Sync for Shared {}

/// A finalized execution plan for one convolution direction and shape.
pub struct ConvGraph {
    /// Finalized: only read from here on (`execute`), never changed.
    plan: Desc,
    /// The engine configuration the plan was made from, and the graph's descriptors.
    _config: Desc,
    _made_from: std::sync::Arc<Shared>,
    /// Workspace bytes the plan needs.
    pub workspace: usize,
    /// cuDNN's global index of the engine chosen, how many engine configurations its
    /// heuristics ranked before it (0: the first), and whether it came from the fallback
    /// list rather than the ranking, for the logs.
    pub engine: i64,
    pub rank: usize,
    pub fallback: bool,
    /// Where the plan was chosen by timing (`ops::conv2d`'s timed graph search): its time,
    /// and what it was chosen from.
    pub timed: Option<Timed>,
    /// Where the plan runs the engine timed for the same convolution at another batch size
    /// instead of a search of its own: that batch size.
    pub reused_from_batch: Option<usize>,
}

/// How a plan chosen by timing compared: its median time, the number of candidates timed,
/// and, where another was chosen, the time of the first candidate timed (the first usable in
/// cuDNN's order, leaving out engines compiled at run time and workspaces over the timed
/// search's cap; `None` also where that one could not be timed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timed {
    pub ms: f32,
    pub candidates: usize,
    pub first_ms: Option<f32>,
}

// SAFETY: shared references to a ConvGraph only read its finalized descriptors (`execute`
// passes the plan to cuDNN, which does not change it); nothing reachable through `&ConvGraph`
// calls `set` or `finalize`.
unsafe impl Sync for ConvGraph {}

impl std::fmt::Debug for ConvGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = if self.fallback { "fallback list" } else { "heuristic ranking" };
        write!(f, "engine {} (#{} of cuDNN's {list}), {} bytes of workspace", self.engine, self.rank, self.workspace)?;
        if let Some(t) = self.timed {
            write!(f, ", {:.3} ms: the fastest of {} timed", t.ms, t.candidates)?;
            if let Some(first) = t.first_ms {
                write!(f, " (the first usable in cuDNN's order: {first:.3} ms)")?;
            }
        }
        if let Some(n) = self.reused_from_batch {
            write!(f, ", the engine timed at batch {n}")?;
        }
        Ok(())
    }
}

/// Build the plan of direction `op` for `s`: the first engine configuration of cuDNN's
/// heuristic ranking (mode A), then of its fallback list, that [`refusal`] accepts, that
/// finalizes into an execution plan and that needs at most `max_workspace` bytes. `Err`
/// says why none did (the reasons of the first eight configurations refused).
pub fn plan(h: &CudnnHandle, op: ConvOp, key: &ConvKey, max_workspace: usize) -> std::result::Result<ConvGraph, String> {
    let mut plans = plans(h, op, key, max_workspace, Candidates { limit: 1, runtime_compiled: true, engine: None })?;
    Ok(plans.remove(0))
}

/// Which engine configurations [`plans`] makes plans of, beyond [`refusal`]'s rules and the
/// workspace cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidates {
    /// At most this many plans.
    pub limit: usize,
    /// Engines cuDNN compiles at run time too (its behaviour note `RUNTIME_COMPILATION`;
    /// finalizing one can take seconds).
    pub runtime_compiled: bool,
    /// Only configurations of this engine (cuDNN's global index): the one timed for the same
    /// convolution at another batch size.
    pub engine: Option<i64>,
}

/// Up to `which.limit` plans of direction `op` for `key`, in the order [`plan`] tries them
/// (cuDNN's ranking, then its fallback list; with a limit over 1, an engine listed in both is
/// taken once), each accepted by [`refusal`] and `which`, finalized and within `max_workspace`
/// bytes: the candidates of a timed search. `Err` (never an empty list) says why none was
/// usable.
pub fn plans(h: &CudnnHandle, op: ConvOp, key: &ConvKey, max_workspace: usize, which: Candidates) -> std::result::Result<Vec<ConvGraph>, String> {
    let Candidates { limit, runtime_compiled, engine: only_engine } = which;
    let e = |e: crate::Error| e.to_string();
    let x = tensor(X, key.dtype, key.layout, key.x).map_err(e)?;
    let w = tensor(W, key.dtype, key.layout, key.w).map_err(e)?;
    let y = tensor(Y, key.dtype, key.layout, key.y()).map_err(e)?;
    let conv = Desc::new(Kind::CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR).map_err(e)?;
    let (pad, stride) = (key.pad as i64, key.stride as i64);
    (|| {
        conv.set(Attr::CUDNN_ATTR_CONVOLUTION_COMP_TYPE, Ty::CUDNN_TYPE_DATA_TYPE, &[compute_type(key.dtype)])?;
        conv.set(Attr::CUDNN_ATTR_CONVOLUTION_CONV_MODE, Ty::CUDNN_TYPE_CONVOLUTION_MODE, &[sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION])?;
        conv.set(Attr::CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, Ty::CUDNN_TYPE_INT64, &[2i64])?;
        conv.set(Attr::CUDNN_ATTR_CONVOLUTION_DILATIONS, Ty::CUDNN_TYPE_INT64, &[1i64, 1])?;
        conv.set(Attr::CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, Ty::CUDNN_TYPE_INT64, &[stride, stride])?;
        conv.set(Attr::CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, Ty::CUDNN_TYPE_INT64, &[pad, pad])?;
        conv.set(Attr::CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, Ty::CUDNN_TYPE_INT64, &[pad, pad])?;
        conv.finalize()
    })()
    .map_err(e)?;
    let operation = operation(op, key.dtype, &x, &w, &y, &conv).map_err(e)?;
    let graph = Desc::new(Kind::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR).map_err(e)?;
    (|| {
        graph.set(Attr::CUDNN_ATTR_OPERATIONGRAPH_HANDLE, Ty::CUDNN_TYPE_HANDLE, &[h.raw()])?;
        graph.set_descs(Attr::CUDNN_ATTR_OPERATIONGRAPH_OPS, &[&operation])?;
        graph.finalize()
    })()
    .map_err(e)?;
    let mut tried = Vec::new();
    let mut offered = 0;
    let mut taken: Vec<(Desc, Desc, usize, i64, usize, bool)> = Vec::new();
    let mut engines_taken = Vec::new();
    // cuDNN's ranking (mode A), then its fallback list, which holds engines the ranking may
    // leave out.
    'modes: for mode in [sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A, sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK] {
        let configs = match engine_configs(&graph, mode) {
            Ok(c) => c,
            Err(why) => {
                tried.push(format!("{mode:?}: {why}"));
                continue;
            }
        };
        offered += configs.len();
        for (rank, config) in configs.into_iter().enumerate() {
            let (engine, notes, behaviour) = match engine_of(&config) {
                Ok(v) => v,
                Err(why) => {
                    tried.push(format!("{mode:?} #{rank}: {why}"));
                    continue;
                }
            };
            if only_engine.is_some_and(|e| e != engine) {
                continue;
            }
            if let Some(why) = refusal(&notes, key) {
                tried.push(format!("{mode:?} #{rank} (engine {engine}): {why}"));
                continue;
            }
            if !runtime_compiled && behaviour.contains(&(sys::cudnnBackendBehaviorNote_t::CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION as u32)) {
                tried.push(format!("{mode:?} #{rank} (engine {engine}): compiled at run time"));
                continue;
            }
            // The fallback list may repeat an engine of the ranking, in its own configuration:
            // a candidate list times each engine once.
            if limit > 1 && engines_taken.contains(&engine) {
                continue;
            }
            let attempt = || -> crate::Result<(Desc, usize)> {
                let p = Desc::new(Kind::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
                p.set(Attr::CUDNN_ATTR_EXECUTION_PLAN_HANDLE, Ty::CUDNN_TYPE_HANDLE, &[h.raw()])?;
                p.set_descs(Attr::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[&config])?;
                p.finalize()?;
                let mut bytes = 0i64;
                let mut n = 0i64;
                // SAFETY: a finalized plan; cuDNN writes one int64.
                check("cudnnBackendGetAttribute (workspace size)", unsafe {
                    sys::cudnnBackendGetAttribute(p.0, Attr::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, Ty::CUDNN_TYPE_INT64, 1, &mut n, (&mut bytes as *mut i64).cast())
                })?;
                Ok((p, usize::try_from(bytes).unwrap_or(usize::MAX)))
            };
            match attempt() {
                Ok((p, bytes)) if bytes <= max_workspace => {
                    let fallback = mode == sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK;
                    engines_taken.push(engine);
                    taken.push((p, config, bytes, engine, rank, fallback));
                    if taken.len() >= limit {
                        break 'modes;
                    }
                }
                Ok((_, bytes)) => tried.push(format!("{mode:?} #{rank} (engine {engine}): needs {bytes} bytes of workspace")),
                Err(why) => tried.push(format!("{mode:?} #{rank} (engine {engine}): {why}")),
            }
        }
    }
    if taken.is_empty() {
        tried.truncate(8);
        return Err(format!("{op:?}: none of the {offered} engine configurations cuDNN offered was usable ({})", tried.join("; ")));
    }
    // The descriptors the plans were made from stay alive as long as any of them does.
    let shared = std::sync::Arc::new(Shared { _descs: vec![graph, operation, conv, x, w, y] });
    Ok(taken
        .into_iter()
        .map(|(plan, config, workspace, engine, rank, fallback)| ConvGraph {
            plan,
            _config: config,
            _made_from: shared.clone(),
            workspace,
            engine,
            rank,
            fallback,
            timed: None,
            reused_from_batch: None,
        })
        .collect())
}

/// The engine configurations cuDNN's heuristics in `mode` offer for `graph`, best first.
fn engine_configs(graph: &Desc, mode: sys::cudnnBackendHeurMode_t) -> crate::Result<Vec<Desc>> {
    let heur = Desc::new(Kind::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
    heur.set_descs(Attr::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[graph])?;
    heur.set(Attr::CUDNN_ATTR_ENGINEHEUR_MODE, Ty::CUDNN_TYPE_HEUR_MODE, &[mode])?;
    heur.finalize()?;
    // How many there are, then that many engine-config descriptors for cuDNN to fill.
    let mut count = 0i64;
    // SAFETY: a finalized heuristics descriptor; with 0 requested, cuDNN writes only the count.
    check("cudnnBackendGetAttribute (heuristic results count)", unsafe {
        sys::cudnnBackendGetAttribute(heur.0, Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &mut count, std::ptr::null_mut())
    })?;
    if count <= 0 {
        return Ok(Vec::new());
    }
    let mut configs: Vec<Desc> = (0..count).map(|_| Desc::new(Kind::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR)).collect::<crate::Result<_>>()?;
    let mut raw: Vec<sys::cudnnBackendDescriptor_t> = configs.iter().map(|c| c.0).collect();
    let mut got = 0i64;
    // SAFETY: `raw` holds `count` engine-config descriptors created above; cuDNN fills them.
    check("cudnnBackendGetAttribute (heuristic results)", unsafe {
        sys::cudnnBackendGetAttribute(heur.0, Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &mut got, raw.as_mut_ptr().cast())
    })?;
    configs.truncate(got.clamp(0, count) as usize);
    Ok(configs)
}

/// The engine of a configuration: its global index, numerical notes and behaviour notes
/// (each as raw u32 values: an enum read could meet a value this build does not know).
fn engine_of(config: &Desc) -> crate::Result<(i64, Vec<u32>, Vec<u32>)> {
    let engine = Desc::new(Kind::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
    let mut n = 0i64;
    let mut raw = engine.0;
    // SAFETY: cuDNN copies the configuration's engine into the descriptor we pass.
    check("cudnnBackendGetAttribute (engine)", unsafe {
        sys::cudnnBackendGetAttribute(config.0, Attr::CUDNN_ATTR_ENGINECFG_ENGINE, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mut n, (&mut raw as *mut sys::cudnnBackendDescriptor_t).cast())
    })?;
    let mut index = 0i64;
    // SAFETY: one int64.
    check("cudnnBackendGetAttribute (engine index)", unsafe {
        sys::cudnnBackendGetAttribute(engine.0, Attr::CUDNN_ATTR_ENGINE_GLOBAL_INDEX, Ty::CUDNN_TYPE_INT64, 1, &mut n, (&mut index as *mut i64).cast())
    })?;
    let notes = |name: Attr, ty: Ty, what: &'static str| -> crate::Result<Vec<u32>> {
        let mut values = [0u32; 32];
        let mut count = 0i64;
        // SAFETY: room for 32 notes of 4 bytes (the enums' size); cuDNN writes `count` of them.
        check(what, unsafe { sys::cudnnBackendGetAttribute(engine.0, name, ty, values.len() as i64, &mut count, values.as_mut_ptr().cast()) })?;
        Ok(values[..count.clamp(0, values.len() as i64) as usize].to_vec())
    };
    let numerical = notes(Attr::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, Ty::CUDNN_TYPE_NUMERICAL_NOTE, "cudnnBackendGetAttribute (numerical notes)")?;
    // Best effort: without them an engine is not known to compile at run time, and is timed.
    let behaviour = notes(Attr::CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, Ty::CUDNN_TYPE_BEHAVIOR_NOTE, "cudnnBackendGetAttribute (behaviour notes)").unwrap_or_default();
    Ok((index, numerical, behaviour))
}

/// Run `g` with x (or dx), w (or dw) and y (or dy) at the given device addresses, and the
/// workspace at `workspace` (at least `g.workspace` bytes; null when 0). The caller holds the
/// handle, whose stream the work goes to.
///
/// # Safety
/// The addresses must hold the tensors the plan's shapes describe, in its layout and type,
/// the outputs writable, and the workspace at least `g.workspace` bytes.
pub unsafe fn execute(h: &CudnnHandle, g: &ConvGraph, x: *mut std::ffi::c_void, w: *mut std::ffi::c_void, y: *mut std::ffi::c_void, workspace: *mut std::ffi::c_void) -> crate::Result<()> {
    let pack = Desc::new(Kind::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
    pack.set(Attr::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, Ty::CUDNN_TYPE_INT64, &[X, W, Y])?;
    pack.set(Attr::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, Ty::CUDNN_TYPE_VOID_PTR, &[x, w, y])?;
    pack.set(Attr::CUDNN_ATTR_VARIANT_PACK_WORKSPACE, Ty::CUDNN_TYPE_VOID_PTR, &[workspace])?;
    pack.finalize()?;
    // SAFETY: a finalized plan and variant pack; the caller vouches for the addresses.
    check("cudnnBackendExecute", unsafe { sys::cudnnBackendExecute(h.raw(), g.plan.0, pack.0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NCHW strides are row-major; NHWC has C fastest, then W, H, N (and a KRSC filter the same).
    #[test]
    fn strides_follow_the_layout() {
        assert_eq!(strides([2, 3, 4, 5], Layout::Nchw), [60, 20, 5, 1]);
        assert_eq!(strides([2, 3, 4, 5], Layout::Nhwc), [60, 1, 15, 3]);
        // Element (n=1, c=2, h=3, w=4) of an NHWC [2, 3, 4, 5] tensor is at ((1*4 + 3)*5 + 4)*3 + 2.
        let s = strides([2, 3, 4, 5], Layout::Nhwc);
        assert_eq!(s[0] + 2 * s[1] + 3 * s[2] + 4 * s[3], ((4 + 3) * 5 + 4) * 3 + 2);
    }

    /// The rules refuse what they should and nothing else.
    #[test]
    fn engine_notes_are_refused_by_the_rules() {
        use sys::cudnnBackendNumericalNote_t as N;
        let base = ConvKey {
            dtype: DType::F32,
            layout: Layout::Nchw,
            x: [1, 1, 3, 3],
            w: [1, 1, 3, 3],
            pad: 1,
            stride: 1,
            tf32: false,
            deterministic: false,
        };
        let tc = [N::CUDNN_NUMERICAL_NOTE_TENSOR_CORE as u32];
        let down = [N::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS as u32];
        let nondet = [N::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC as u32];
        assert!(refusal(&tc, &base).is_some());
        assert!(refusal(&tc, &ConvKey { tf32: true, ..base }).is_none());
        assert!(refusal(&down, &ConvKey { tf32: true, ..base }).is_some());
        assert!(refusal(&down, &ConvKey { dtype: DType::BF16, ..base }).is_some());
        let reduced = [N::CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION as u32];
        assert!(refusal(&reduced, &ConvKey { dtype: DType::BF16, ..base }).is_some());
        // A bf16 tensor-core engine with no other note is accepted.
        assert!(refusal(&tc, &ConvKey { dtype: DType::BF16, ..base }).is_none());
        assert!(refusal(&nondet, &base).is_none());
        assert!(refusal(&nondet, &ConvKey { deterministic: true, ..base }).is_some());
        assert!(refusal(&[], &ConvKey { deterministic: true, ..base }).is_none());
    }
}
