//! 2-D convolution (cross-correlation, as in every DL framework), no bias.
//!
//! Shapes: x `[N, C, H, W]`, w `[O, C, KH, KW]`, y `[N, O, OH, OW]` with
//! `OH = (H + 2P − KH) / S + 1`, `OW = (W + 2P − KW) / S + 1` (floor), stride `S`, zero padding `P`.
//!
//! Forward:
//! `y[n,o,i,j] = Σ_{c,p,q} w[o,c,p,q] · x[n, c, i·S + p − P, j·S + q − P]` (out-of-range x = 0).
//!
//! Backward, given `dy`:
//! `dw[o,c,p,q] = Σ_{n,i,j} dy[n,o,i,j] · x[n, c, i·S + p − P, j·S + q − P]`
//! `dx[n,c,h,v] = Σ_{o,p,q,i,j : i·S+p−P = h, j·S+q−P = v} dy[n,o,i,j] · w[o,c,p,q]`
//!
//! CPU reference via im2col: per image, `col[(c,p,q), (i,j)] = x[n, c, i·S+p−P, j·S+q−P]`
//! (`[C·KH·KW, OH·OW]`), then `y_n = W · col` with `W` viewed as `[O, C·KH·KW]`;
//! backward `dW += dy_n · colᵀ` and `dcol = Wᵀ · dy_n`, scattered back by col2im.
//! Images are processed in parallel (rayon); `dW` is summed in fixed groups of images and
//! the group sums added in order, so the result does not depend on thread scheduling.

use crate::{DType, Float, Gradients, Graph, Result, Tensor, Var};
use crate::layout::forward as to_layout;
use engine::{Error, Layout, gemm};
use rayon::prelude::*;

/// Most partial weight gradients the CPU backward sums (memory: DW_GROUPS copies of dW).
const DW_GROUPS: usize = 8;

/// Stride and zero padding, the same along both spatial axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
}

/// All sizes of one convolution, validated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) o: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) s: usize,
    pub(crate) p: usize,
}

impl Dims {
    fn new(x: &Tensor, w: &Tensor, prm: Conv2dParams) -> Result<Dims> {
        const OP: &str = "conv2d";
        x.expect_rank(OP, 4, "input x [N, C, H, W]")?;
        w.expect_rank(OP, 4, "weight w [O, C, KH, KW]")?;
        x.expect_same_kind(OP, w)?;
        let (xs, ws) = (x.shape(), w.shape());
        if xs[1] != ws[1] {
            return Err(Error::shape(OP, format!("input {xs:?} has {} channels but the weight {ws:?} expects {}", xs[1], ws[1])));
        }
        if prm.stride == 0 {
            return Err(Error::shape(OP, "stride must be at least 1"));
        }
        let (hp, wp) = (xs[2] + 2 * prm.padding, xs[3] + 2 * prm.padding);
        if ws[2] > hp || ws[3] > wp || ws[2] == 0 || ws[3] == 0 {
            return Err(Error::shape(
                OP,
                format!("kernel {}x{} of weight {ws:?} does not fit input {xs:?} padded to {hp}x{wp}", ws[2], ws[3]),
            ));
        }
        Ok(Dims {
            n: xs[0],
            c: xs[1],
            h: xs[2],
            w: xs[3],
            o: ws[0],
            kh: ws[2],
            kw: ws[3],
            oh: (hp - ws[2]) / prm.stride + 1,
            ow: (wp - ws[3]) / prm.stride + 1,
            s: prm.stride,
            p: prm.padding,
        })
    }
    pub(crate) fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    pub(crate) fn ohw(&self) -> usize {
        self.oh * self.ow
    }
}

/// Record `y = conv2d(x, w)`: x `[N, C, H, W]`, w `[O, C, KH, KW]` -> y `[N, O, OH, OW]`,
/// `OH = (H + 2·padding − KH) / stride + 1` (floor), likewise OW.
pub fn conv2d(g: &mut Graph<'_>, x: Var, w: Var, p: Conv2dParams) -> Result<Var> {
    let y = forward(g.value(x), g.value(w), p)?;
    Ok(g.push(y, crate::Op::Conv2d(Conv2dRecord { x, w, p }), &[x, w]))
}

/// Forward on tensors.
pub fn forward(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    let d = Dims::new(x, w, p)?;
    if x.device().is_cuda() {
        return forward_cuda(x, w, d);
    }
    match x.dtype() {
        DType::F32 => forward_cpu::<f32>(x, w, d),
        DType::F64 => forward_cpu::<f64>(x, w, d),
        DType::BF16 => Err(crate::bf16_unsupported("conv2d")),
    }
}

/// Backward on tensors: `(dx` if `need_dx`, `dw)`.
pub fn backward(x: &Tensor, w: &Tensor, dy: &Tensor, p: Conv2dParams, need_dx: bool) -> Result<(Option<Tensor>, Tensor)> {
    backward_adding(x, w, dy, p, if need_dx { DataGrad::New } else { DataGrad::Skip })
}

/// What the backward does with dx.
pub enum DataGrad {
    /// Not needed (the input image): cuDNN's backward-data does not run.
    Skip,
    /// A new tensor.
    New,
    /// Added into this one (x's gradient so far, same shape, type and layout as x), which is
    /// returned: on the GPU cuDNN's backward-data writes `dx + 1·acc` itself (its β = 1, on the
    /// legacy API or through a graph plan of its own), so that the join of a residual block's
    /// gradients costs no pass of its own.
    Into(Tensor),
}

/// [`backward`], with dx skipped, new, or added into a gradient so far ([`DataGrad`]).
pub fn backward_adding(x: &Tensor, w: &Tensor, dy: &Tensor, p: Conv2dParams, dx: DataGrad) -> Result<(Option<Tensor>, Tensor)> {
    let d = Dims::new(x, w, p)?;
    if dy.shape() != [d.n, d.o, d.oh, d.ow] {
        return Err(Error::shape("conv2d backward", format!("dy {:?} should be {:?}", dy.shape(), [d.n, d.o, d.oh, d.ow])));
    }
    x.expect_same_kind("conv2d backward", dy)?;
    if let DataGrad::Into(acc) = &dx {
        x.expect_same("conv2d backward (x and the gradient added into)", acc)?;
    }
    if x.device().is_cuda() {
        return backward_cuda(x, w, dy, d, dx);
    }
    let need_dx = !matches!(dx, DataGrad::Skip);
    let (new, dw) = match x.dtype() {
        DType::F32 => backward_cpu::<f32>(x, w, dy, d, need_dx)?,
        DType::F64 => backward_cpu::<f64>(x, w, dy, d, need_dx)?,
        DType::BF16 => return Err(crate::bf16_unsupported("conv2d")),
    };
    Ok((add_into(dx, new)?, dw))
}

/// dx as [`DataGrad`] asks, from a newly computed `new` (`None` where skipped).
fn add_into(dx: DataGrad, new: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (dx, new) {
        (DataGrad::Into(mut acc), Some(new)) => {
            acc.add_assign(&new)?;
            Some(acc)
        }
        (_, new) => new,
    })
}

/// `col[(c,p,q), (i,j)] = x[c, i·S+p−P, j·S+q−P]` for one image `x` `[C, H, W]`.
fn im2col<T: Float>(x: &[T], d: &Dims, col: &mut [T]) {
    let ohw = d.ohw();
    for c in 0..d.c {
        for p in 0..d.kh {
            for q in 0..d.kw {
                let row = &mut col[((c * d.kh + p) * d.kw + q) * ohw..][..ohw];
                for i in 0..d.oh {
                    let h = (i * d.s + p) as isize - d.p as isize;
                    for j in 0..d.ow {
                        let v = (j * d.s + q) as isize - d.p as isize;
                        row[i * d.ow + j] = if h >= 0 && (h as usize) < d.h && v >= 0 && (v as usize) < d.w {
                            x[(c * d.h + h as usize) * d.w + v as usize]
                        } else {
                            T::zero()
                        };
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `dx[c, i·S+p−P, j·S+q−P] += dcol[(c,p,q), (i,j)]`.
fn col2im<T: Float>(dcol: &[T], d: &Dims, dx: &mut [T]) {
    let ohw = d.ohw();
    for c in 0..d.c {
        for p in 0..d.kh {
            for q in 0..d.kw {
                let row = &dcol[((c * d.kh + p) * d.kw + q) * ohw..][..ohw];
                for i in 0..d.oh {
                    let h = (i * d.s + p) as isize - d.p as isize;
                    if h < 0 || h as usize >= d.h {
                        continue;
                    }
                    for j in 0..d.ow {
                        let v = (j * d.s + q) as isize - d.p as isize;
                        if v >= 0 && (v as usize) < d.w {
                            dx[(c * d.h + h as usize) * d.w + v as usize] += row[i * d.ow + j];
                        }
                    }
                }
            }
        }
    }
}

fn forward_cpu<T: Float>(x: &Tensor, w: &Tensor, d: Dims) -> Result<Tensor> {
    let (xs, ws) = (x.as_slice::<T>()?, w.as_slice::<T>()?);
    let (img, out) = (d.c * d.h * d.w, d.o * d.ohw());
    let mut y = vec![T::zero(); d.n * out];
    y.par_chunks_mut(out.max(1)).enumerate().for_each_init(
        || vec![T::zero(); d.ckk() * d.ohw()],
        |col, (n, yn)| {
            im2col(&xs[n * img..(n + 1) * img], &d, col);
            gemm(d.o, d.ckk(), d.ohw(), T::one(), ws, false, col, false, T::zero(), yn);
        },
    );
    Tensor::new(&[d.n, d.o, d.oh, d.ow], y)
}

fn backward_cpu<T: Float>(x: &Tensor, w: &Tensor, dy: &Tensor, d: Dims, need_dx: bool) -> Result<(Option<Tensor>, Tensor)> {
    let (xs, ws, dys) = (x.as_slice::<T>()?, w.as_slice::<T>()?, dy.as_slice::<T>()?);
    let (img, out, wlen) = (d.c * d.h * d.w, d.o * d.ohw(), d.o * d.ckk());
    let mut dx = if need_dx { vec![T::zero(); d.n * img] } else { Vec::new() };
    let mut dx_chunks: Vec<Option<&mut [T]>> = if need_dx {
        dx.chunks_mut(img.max(1)).map(Some).collect()
    } else {
        (0..d.n).map(|_| None).collect()
    };
    // The images are split into at most DW_GROUPS groups fixed by N alone; each group (in
    // parallel) sums its images' dW in image order, then the group sums are added in group
    // order. The result is the same on every run and every machine, whatever the threads do.
    let per = d.n.div_ceil(DW_GROUPS).max(1);
    let partials: Vec<Vec<T>> = dx_chunks
        .par_chunks_mut(per)
        .enumerate()
        .map_init(
            // Scratch reused by every group a worker takes (fresh large buffers cost page faults).
            || (vec![T::zero(); d.ckk() * d.ohw()], vec![T::zero(); d.ckk() * d.ohw()]),
            |(col, dcol), (gi, group)| {
                let mut dw = vec![T::zero(); wlen];
                for (k, dxn) in group.iter_mut().enumerate() {
                    let n = gi * per + k;
                    let dyn_ = &dys[n * out..(n + 1) * out];
                    im2col(&xs[n * img..(n + 1) * img], &d, col);
                    // dW[O, CKK] += dy_n[O, OHW] · colᵀ[OHW, CKK]
                    gemm(d.o, d.ohw(), d.ckk(), T::one(), dyn_, false, col, true, T::one(), &mut dw);
                    if let Some(dxn) = dxn {
                        // dcol[CKK, OHW] = Wᵀ[CKK, O] · dy_n[O, OHW]
                        gemm(d.ckk(), d.o, d.ohw(), T::one(), ws, true, dyn_, false, T::zero(), dcol);
                        col2im(dcol, &d, dxn);
                    }
                }
                dw
            },
        )
        .collect();
    let mut dw = vec![T::zero(); wlen];
    for p in &partials {
        dw.iter_mut().zip(p).for_each(|(x, y)| *x += *y);
    }
    let dx = if need_dx { Some(Tensor::new(&[d.n, d.c, d.h, d.w], dx)?) } else { None };
    Ok((dx, Tensor::new(&[d.o, d.c, d.kh, d.kw], dw)?))
}

// ---- CUDA: cuDNN ----
//
// The same three products run as cuDNN's convolution forward, backward-data and
// backward-filter, with the algorithms chosen once per shape (`crate::conv2d_plan`: cuDNN's
// legacy API or its graph API, by heuristics or by timing) and the device's one workspace.
// The 3-channel first convolution runs on our own kernels instead (`crate::conv2d_c3`).
//
// cuDNN may have no kernel for a shape in one layout that it runs in another (a review
// suspected NHWC bf16 with 3 input channels, the prep layer: not verified on a GPU). A
// refused NHWC convolution runs in NCHW between layout conversions ([`forward_via_nchw`],
// [`backward_via_nchw`]); the refusal is remembered, so the search happens once per shape.

use crate::conv2d_plan::{CudnnConv, Planned, graph_plan};
use engine::cudnn;
use engine::cudnn_graph::{self, ConvGraph, ConvOp};
use std::ffi::c_void;
use std::sync::Arc;

/// The error for a shape cuDNN refused in the layout it is in.
fn refused(d: &Dims, dtype: DType, layout: engine::Layout, why: &str) -> Error {
    let shape = format!("x [{}, {}, {}, {}], w [{}, {}, {}, {}]", d.n, d.c, d.h, d.w, d.o, d.c, d.kh, d.kw);
    Error::Cuda { op: "conv2d", msg: format!("{why}, for {shape} in {dtype:?} {layout:?}") }
}

/// cuDNN's convolutions take input, filter and output in one memory order.
fn same_layout(a: &Tensor, b: &Tensor) -> Result<()> {
    if a.layout() != b.layout() {
        return Err(Error::shape("conv2d", format!("tensors in layouts {:?} and {:?} (convert the weight too)", a.layout(), b.layout())));
    }
    Ok(())
}

/// Run graph-API plan `g` on x (or dx), w (or dw), y (or dy) at these device addresses.
fn run_graph(dev: &Arc<engine::cuda::CudaDevice>, g: &ConvGraph, x: *const c_void, w: *const c_void, y: *const c_void) -> Result<()> {
    let st = dev.stream().clone();
    dev.trace_launch("cuDNN graph-API convolution")?;
    dev.with_workspace(g.workspace, |ws| {
        let h = dev.cudnn()?;
        // SAFETY: the callers pass buffers of the shapes, layout and type the plan was made
        // for (checked by Dims::new and same_layout), the output freshly allocated for it or,
        // for a plan that adds into it (BackwardDataAdd), the gradient so far that the caller
        // owns; the workspace holds at least g.workspace bytes.
        unsafe { cudnn_graph::execute(&h, g, x.cast_mut(), w.cast_mut(), y.cast_mut(), cudnn::ptr_mut(ws, &st)) }
    })
}

/// `y = conv(x, w)` with cuDNN, or for the 3-channel first convolution our kernels
/// ([`crate::conv2d_c3`]).
fn forward_cuda(x: &Tensor, w: &Tensor, d: Dims) -> Result<Tensor> {
    same_layout(x, w)?;
    if crate::conv2d_c3::fits(x, w, d.s, d.p, crate::conv2d_c3::Pass::Forward) {
        return crate::conv2d_c3::forward(x, w);
    }
    let xb = x.cuda_buffer()?;
    let dev = xb.dev().clone();
    let dt = x.dtype();
    if let Some(g) = graph_plan(&dev, &d, dt, x.layout(), ConvOp::Forward)? {
        let mut y = dev.alloc_dtype(d.n * d.o * d.ohw(), dt)?;
        run_graph(&dev, &g, xb.ptr(), w.cuda_buffer()?.ptr(), y.ptr_mut())?;
        return Tensor::from_cuda(&[d.n, d.o, d.oh, d.ow], y)?.with_layout(x.layout());
    }
    let c = match CudnnConv::plan(&dev, &d, dt, x.layout())? {
        Planned::Ready(c) => c,
        Planned::Refused(_) if x.layout() == Layout::Nhwc => return forward_via_nchw(x, w, d),
        Planned::Refused(why) => return Err(refused(&d, dt, x.layout(), &why)),
    };
    let mut y = dev.alloc_dtype(d.n * d.o * d.ohw(), dt)?;
    let st = dev.stream().clone();
    c.conv.set_math(c.plan.fwd_math)?;
    dev.trace_launch("cuDNN convolution forward")?;
    dev.with_workspace(c.plan.fwd_bytes, |ws| {
        let h = dev.cudnn()?;
        // SAFETY: x, w and y hold the [N,C,H,W], [O,C,KH,KW] and [N,O,OH,OW] elements their
        // descriptors describe (checked by Dims::new); the workspace holds at least fwd_bytes.
        cudnn::check("cudnnConvolutionForward", unsafe {
            cudarc::cudnn::sys::cudnnConvolutionForward(
                h.raw(), cudnn::one(dt),
                c.x.raw(), xb.ptr(),
                c.w.raw(), w.cuda_buffer()?.ptr(),
                c.conv.raw(), c.plan.fwd, cudnn::ptr_mut(ws, &st), c.plan.fwd_bytes,
                cudnn::zero(dt), c.y.raw(), y.ptr_mut(),
            )
        })
    })?;
    Tensor::from_cuda(&[d.n, d.o, d.oh, d.ow], y)?.with_layout(x.layout())
}

/// `(dx, dw)` with cuDNN's backward-data and backward-filter (each through the graph API
/// where it has a plan, else the legacy API); dx as `dx_mode` asks: into a gradient so far
/// both APIs add with their β = 1 (a graph plan of its own, [`ConvOp::BackwardDataAdd`]),
/// and where that has no plan, dx is made anew and added by a separate pass.
fn backward_cuda(x: &Tensor, w: &Tensor, dy: &Tensor, d: Dims, dx_mode: DataGrad) -> Result<(Option<Tensor>, Tensor)> {
    same_layout(x, w)?;
    same_layout(x, dy)?;
    // The 3-channel first convolution, whose input needs no gradient: our kernels.
    if matches!(dx_mode, DataGrad::Skip) && crate::conv2d_c3::fits(x, w, d.s, d.p, crate::conv2d_c3::Pass::WeightGrad) {
        return Ok((None, crate::conv2d_c3::weight_grad(x, w, dy)?));
    }
    use cudarc::cudnn::sys;
    let xb = x.cuda_buffer()?;
    let dev = xb.dev().clone();
    let dt = x.dtype();
    let need_dx = !matches!(dx_mode, DataGrad::Skip);
    let graph_add = if matches!(dx_mode, DataGrad::Into(_)) { graph_plan(&dev, &d, dt, x.layout(), ConvOp::BackwardDataAdd)? } else { None };
    let graph_data = if need_dx && graph_add.is_none() { graph_plan(&dev, &d, dt, x.layout(), ConvOp::BackwardData)? } else { None };
    let graph_filter = graph_plan(&dev, &d, dt, x.layout(), ConvOp::BackwardFilter)?;
    // The legacy plan, where a direction needed has no graph plan.
    let legacy = if graph_filter.is_none() || (need_dx && graph_data.is_none() && graph_add.is_none()) {
        match CudnnConv::plan(&dev, &d, dt, x.layout())? {
            Planned::Ready(c) => Some(c),
            Planned::Refused(_) if x.layout() == Layout::Nhwc => {
                let (new, dw) = backward_via_nchw(x, w, dy, d, need_dx)?;
                return Ok((add_into(dx_mode, new)?, dw));
            }
            Planned::Refused(why) => return Err(refused(&d, dt, x.layout(), &why)),
        }
    } else {
        None
    };
    let st = dev.stream().clone();
    let (wb, dyb) = (w.cuda_buffer()?, dy.cuda_buffer()?);
    let dx = match (dx_mode, &graph_add, &graph_data, &legacy) {
        (DataGrad::Skip, ..) => None,
        // The graph plan with β = 1 writes dx + its backward data into dx itself.
        (DataGrad::Into(mut acc), Some(g), ..) => {
            run_graph(&dev, g, acc.cuda_buffer_mut()?.ptr_mut(), wb.ptr(), dyb.ptr())?;
            Some(acc)
        }
        (mode, _, Some(g), _) => {
            let mut dx = dev.alloc_dtype(x.numel(), dt)?;
            run_graph(&dev, g, dx.ptr_mut(), wb.ptr(), dyb.ptr())?;
            add_into(mode, Some(crate::cuda::like(x, dx)?))?
        }
        (mode, _, None, Some(c)) => {
            // dx = 1·(backward data) + β·dx: β = 0 into a new buffer, β = 1 into the gradient so far.
            let run = |out: &mut Tensor, beta: *const c_void| -> Result<()> {
                let dxp = out.cuda_buffer_mut()?.ptr_mut();
                c.conv.set_math(c.plan.bwd_data_math)?;
                dev.trace_launch("cuDNN convolution backward data")?;
                dev.with_workspace(c.plan.bwd_data_bytes, |ws| {
                    let h = dev.cudnn()?;
                    // SAFETY: as in forward_cuda; dx (new, or the gradient so far: checked to
                    // have x's shape, type and layout) has x's shape, dy has y's.
                    cudnn::check("cudnnConvolutionBackwardData", unsafe {
                        sys::cudnnConvolutionBackwardData(
                            h.raw(), cudnn::one(dt),
                            c.w.raw(), wb.ptr(),
                            c.y.raw(), dyb.ptr(),
                            c.conv.raw(), c.plan.bwd_data, cudnn::ptr_mut(ws, &st), c.plan.bwd_data_bytes,
                            beta, c.x.raw(), dxp,
                        )
                    })
                })
            };
            let fresh = || -> Result<Tensor> {
                let mut dx = crate::cuda::like(x, dev.alloc_dtype(x.numel(), dt)?)?;
                run(&mut dx, cudnn::zero(dt))?;
                Ok(dx)
            };
            match mode {
                DataGrad::Into(mut acc) if dev.add_into_refusal().is_none() => match run(&mut acc, cudnn::one(dt)) {
                    Ok(()) => Some(acc),
                    // A refusal (cuDNN checks its arguments before it writes anything): noted
                    // once (`profile` prints it), and from then on dx is added separately.
                    Err(e) if refused_before_writing(&e) => {
                        dev.note_add_into_refusal(e.to_string());
                        add_into(DataGrad::Into(acc), Some(fresh()?))?
                    }
                    Err(e) => return Err(e),
                },
                mode => add_into(mode, Some(fresh()?))?,
            }
        }
        (_, _, None, None) => unreachable!("a legacy plan is made where a direction has no graph plan"),
    };
    let mut dw = dev.alloc_dtype(w.numel(), dt)?;
    match (&graph_filter, &legacy) {
        (Some(g), _) => run_graph(&dev, g, xb.ptr(), dw.ptr_mut(), dyb.ptr())?,
        (None, Some(c)) => {
            c.conv.set_math(c.plan.bwd_filter_math)?;
            dev.trace_launch("cuDNN convolution backward filter")?;
            dev.with_workspace(c.plan.bwd_filter_bytes, |ws| {
                let h = dev.cudnn()?;
                // SAFETY: as in forward_cuda; dw has w's shape.
                cudnn::check("cudnnConvolutionBackwardFilter", unsafe {
                    sys::cudnnConvolutionBackwardFilter(
                        h.raw(), cudnn::one(dt),
                        c.x.raw(), xb.ptr(),
                        c.y.raw(), dyb.ptr(),
                        c.conv.raw(), c.plan.bwd_filter, cudnn::ptr_mut(ws, &st), c.plan.bwd_filter_bytes,
                        cudnn::zero(dt), c.w.raw(), dw.ptr_mut(),
                    )
                })
            })?;
        }
        (None, None) => unreachable!("a legacy plan is made where a direction has no graph plan"),
    }
    Ok((dx, crate::cuda::like(w, dw)?))
}

/// Whether a failed cuDNN call refused its arguments (`CUDNN_STATUS_NOT_SUPPORTED` or
/// `_BAD_PARAM`, which cuDNN returns before it launches anything) rather than failing while
/// it ran.
fn refused_before_writing(e: &Error) -> bool {
    let s = e.to_string();
    s.contains("CUDNN_STATUS_NOT_SUPPORTED") || s.contains("CUDNN_STATUS_BAD_PARAM")
}

/// `y = conv(x, w)` for NHWC `x` and `w` that cuDNN refused in NHWC: the same convolution
/// in NCHW, `y` converted back to NHWC (two more passes over `x`, `w` and `y`).
fn forward_via_nchw(x: &Tensor, w: &Tensor, d: Dims) -> Result<Tensor> {
    let y = forward_cuda(&to_layout(x, Layout::Nchw)?, &to_layout(w, Layout::Nchw)?, d)?;
    to_layout(&y, Layout::Nhwc)
}

/// `(dx, dw)` for NHWC tensors that cuDNN refused in NHWC, computed in NCHW (see
/// [`forward_via_nchw`]) and converted back.
fn backward_via_nchw(x: &Tensor, w: &Tensor, dy: &Tensor, d: Dims, need_dx: bool) -> Result<(Option<Tensor>, Tensor)> {
    let nchw = |t: &Tensor| to_layout(t, Layout::Nchw);
    let (dx, dw) = backward_cuda(&nchw(x)?, &nchw(w)?, &nchw(dy)?, d, if need_dx { DataGrad::New } else { DataGrad::Skip })?;
    Ok((dx.map(|t| to_layout(&t, Layout::Nhwc)).transpose()?, to_layout(&dw, Layout::Nhwc)?))
}

/// The NCHW route of the two functions above, for any NHWC shape (the GPU tests compare
/// it with cuDNN's own NHWC kernels, since no shape can be made to be refused on demand):
/// `y`, then `(dx, dw)` for `dy`.
pub fn via_nchw_for_tests(x: &Tensor, w: &Tensor, dy: &Tensor, p: Conv2dParams) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    let d = Dims::new(x, w, p)?;
    for t in [x, w, dy] {
        if t.layout() != Layout::Nhwc || !t.device().is_cuda() {
            return Err(Error::Invalid("via_nchw_for_tests takes NHWC tensors on a GPU".into()));
        }
    }
    let y = forward_via_nchw(x, w, d)?;
    let (dx, dw) = backward_via_nchw(x, w, dy, d, true)?;
    Ok((y, dx, dw))
}

/// Conv2d's record: its input and weight nodes and the geometry.
pub struct Conv2dRecord {
    x: Var,
    w: Var,
    p: Conv2dParams,
}

impl Conv2dRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads the input and the filter (dW needs `x`, dX needs `w`).
    pub(crate) fn reads(&self, v: Var, _out: Var) -> bool {
        v == self.x || v == self.w
    }

    /// dx is added into x's gradient so far where there is one (the input of a residual
    /// block: the block's output passed it on), by cuDNN itself where it can
    /// ([`DataGrad::Into`]).
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        let mode = if !g.requires_grad(self.x) {
            DataGrad::Skip
        } else {
            match grads.take(self.x) {
                Some(so_far) => DataGrad::Into(so_far),
                None => DataGrad::New,
            }
        };
        let (dx, dw) = backward_adding(g.value(self.x), g.value(self.w), dy, self.p, mode)?;
        if let Some(dx) = dx {
            grads.accumulate(self.x, dx)?;
        }
        if g.requires_grad(self.w) {
            grads.accumulate(self.w, dw)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{GradCheck, random_params};
    use rand::SeedableRng;

    /// The definition, as nested loops, in f64.
    fn naive(x: &Tensor, w: &Tensor, s: usize, pad: usize) -> Vec<f64> {
        let (xs, ws) = (x.shape(), w.shape());
        let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
        let (o, kh, kw) = (ws[0], ws[2], ws[3]);
        let (oh, ow) = ((h + 2 * pad - kh) / s + 1, (wd + 2 * pad - kw) / s + 1);
        let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
        let mut y = vec![0.0; n * o * oh * ow];
        for b in 0..n {
            for oc in 0..o {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = 0.0;
                        for ic in 0..c {
                            for p in 0..kh {
                                for q in 0..kw {
                                    let hh = (i * s + p) as isize - pad as isize;
                                    let vv = (j * s + q) as isize - pad as isize;
                                    if hh >= 0 && (hh as usize) < h && vv >= 0 && (vv as usize) < wd {
                                        acc += wv[((oc * c + ic) * kh + p) * kw + q]
                                            * xv[((b * c + ic) * h + hh as usize) * wd + vv as usize];
                                    }
                                }
                            }
                        }
                        y[((b * o + oc) * oh + i) * ow + j] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_the_definition() {
        for (s, pad, k) in [(1, 1, (3, 3)), (2, 0, (3, 3)), (1, 2, (2, 3)), (3, 1, (1, 1))] {
            let ps = random_params(&[&[2, 3, 7, 6], &[4, 3, k.0, k.1]], 5);
            let y = forward(&ps[0], &ps[1], Conv2dParams { stride: s, padding: pad }).unwrap();
            let want = naive(&ps[0], &ps[1], s, pad);
            let got = y.to_f64_vec();
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                // f64 sums of ≤ 27 products of O(1) numbers in another order: ~1e-15.
                assert!((a - b).abs() < 1e-12, "stride {s} pad {pad}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn f32_agrees_with_f64() {
        let ps = random_params(&[&[2, 8, 9, 9], &[5, 8, 3, 3]], 6);
        let p = Conv2dParams { stride: 1, padding: 1 };
        let y64 = forward(&ps[0], &ps[1], p).unwrap();
        let y32 = forward(&ps[0].to_dtype(DType::F32), &ps[1].to_dtype(DType::F32), p).unwrap();
        // 72-term sums of O(1) products in f32: error ~ sqrt(72)·6e-8·|terms| ≈ 1e-5.
        assert!(y32.max_abs_diff(&y64).unwrap() < 1e-4);
    }

    fn check(x: &[usize], w: &[usize], p: Conv2dParams, seed: u64) {
        let ps = random_params(&[x, w], seed);
        GradCheck::default()
            .run(&ps, |g| {
                let (x, w) = (g.param(0)?, g.param(1)?);
                conv2d(g, x, w, p)
            })
            .unwrap();
    }

    #[test]
    fn gradient_stride1_pad1() {
        check(&[2, 3, 6, 6], &[4, 3, 3, 3], Conv2dParams { stride: 1, padding: 1 }, 1);
    }

    #[test]
    fn gradient_stride2_pad0() {
        check(&[2, 2, 7, 7], &[3, 2, 3, 3], Conv2dParams { stride: 2, padding: 0 }, 2);
    }

    #[test]
    fn gradient_non_square_kernel() {
        check(&[1, 2, 5, 6], &[3, 2, 2, 3], Conv2dParams { stride: 1, padding: 1 }, 3);
    }

    /// The parallel backward gives the same bits every time (the weight gradient's sums
    /// do not depend on thread scheduling).
    #[test]
    fn backward_is_deterministic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let x = Tensor::randn(&[37, 8, 12, 12], DType::F32, 1.0, &mut rng);
        let w = Tensor::randn(&[16, 8, 3, 3], DType::F32, 0.1, &mut rng);
        let dy = Tensor::randn(&[37, 16, 12, 12], DType::F32, 1.0, &mut rng);
        let p = Conv2dParams { stride: 1, padding: 1 };
        let (dx0, dw0) = backward(&x, &w, &dy, p, true).unwrap();
        for _ in 0..8 {
            let (dx, dw) = backward(&x, &w, &dy, p, true).unwrap();
            assert_eq!(dw.to_f32_vec(), dw0.to_f32_vec());
            assert_eq!(dx.unwrap().to_f32_vec(), dx0.as_ref().unwrap().to_f32_vec());
        }
    }

    /// Forward + backward time of a ResNet-sized layer in f32 (a measurement, not an assertion):
    /// `cargo test -p ops --release -- --ignored --nocapture conv2d_timing`
    #[test]
    #[ignore = "timing; run by hand with --ignored --nocapture"]
    fn conv2d_timing() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let x = Tensor::randn(&[128, 32, 32, 32], DType::F32, 1.0, &mut rng);
        let w = Tensor::randn(&[64, 32, 3, 3], DType::F32, 0.1, &mut rng);
        let p = Conv2dParams { stride: 1, padding: 1 };
        let dy = Tensor::randn(&[128, 64, 32, 32], DType::F32, 1.0, &mut rng);
        // 2·N·O·(C·KH·KW)·(OH·OW) flops per GEMM; forward, dW and dx are one GEMM each.
        let gflop = 2.0 * 128.0 * 64.0 * 288.0 * 1024.0 / 1e9;
        for rep in 0..3 {
            let t0 = std::time::Instant::now();
            let y = forward(&x, &w, p).unwrap();
            let t1 = std::time::Instant::now();
            let (dx, dw) = backward(&x, &w, &dy, p, true).unwrap();
            let t2 = std::time::Instant::now();
            let (f, b) = ((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
            println!(
                "rep {rep}: forward {:.3} s ({:.1} GFLOP/s), backward dx+dw {:.3} s ({:.1} GFLOP/s), total {:.3} s on {} threads",
                f,
                gflop / f,
                b,
                2.0 * gflop / b,
                f + b,
                rayon::current_num_threads()
            );
            assert_eq!((y.shape(), dw.shape(), dx.map(|t| t.numel())), (&[128, 64, 32, 32][..], &[64, 32, 3, 3][..], Some(x.numel())));
        }
    }

    /// With `need_dx = false` (the input image) dx is skipped and dW is unchanged; on the graph,
    /// an input node (no gradient) gets no dx while the weight still gets its gradient.
    #[test]
    fn dx_is_skipped_when_not_needed() {
        let ps = random_params(&[&[3, 2, 5, 5], &[4, 2, 3, 3], &[3, 4, 5, 5]], 8);
        let p = Conv2dParams { stride: 1, padding: 1 };
        let (dx, dw) = backward(&ps[0], &ps[1], &ps[2], p, true).unwrap();
        let (no_dx, dw2) = backward(&ps[0], &ps[1], &ps[2], p, false).unwrap();
        assert!(dx.is_some() && no_dx.is_none());
        assert_eq!(dw.to_f64_vec(), dw2.to_f64_vec());

        let weights = vec![ps[1].clone()];
        let mut g = Graph::new(&weights);
        let x = g.input(ps[0].clone());
        let w = g.param(0).unwrap();
        let y = conv2d(&mut g, x, w, p).unwrap();
        let grads = g.backward_with(y, ps[2].clone()).unwrap();
        assert!(grads.get(x).is_none());
        assert_eq!(grads.into_param_grads(1).unwrap()[0].as_ref().unwrap().to_f64_vec(), dw.to_f64_vec());
    }

    /// dx added into a gradient so far ([`DataGrad::Into`]) is that gradient plus the new dx,
    /// with dW unchanged; a gradient of another shape is an error. On the graph, an input used
    /// by a convolution and by another op (a residual block's) gets the sum of both: the
    /// convolution adds into what the other op passed on, and the sum passes the check
    /// against finite differences.
    #[test]
    fn dx_is_added_into_the_gradient_so_far() {
        let ps = random_params(&[&[3, 2, 5, 5], &[4, 2, 3, 3], &[3, 4, 5, 5], &[3, 2, 5, 5], &[3, 2, 5, 4]], 9);
        let p = Conv2dParams { stride: 1, padding: 1 };
        let (dx, dw) = backward(&ps[0], &ps[1], &ps[2], p, true).unwrap();
        let (sum, dw2) = backward_adding(&ps[0], &ps[1], &ps[2], p, DataGrad::Into(ps[3].clone())).unwrap();
        let want: Vec<f64> = dx.unwrap().to_f64_vec().iter().zip(ps[3].to_f64_vec()).map(|(a, b)| b + a).collect();
        assert_eq!(sum.unwrap().to_f64_vec(), want);
        assert_eq!(dw.to_f64_vec(), dw2.to_f64_vec());
        assert!(backward_adding(&ps[0], &ps[1], &ps[2], p, DataGrad::Into(ps[4].clone())).is_err(), "a gradient of another shape");

        // The simplest residual, out = x + conv(x, w) with x a parameter: the add passes dy to
        // x first, the convolution then adds into it.
        let residual = random_params(&[&[2, 3, 4, 4], &[3, 3, 3, 3]], 10);
        GradCheck::default()
            .run(&residual, |g| {
                let (x, w) = (g.param(0)?, g.param(1)?);
                let h = conv2d(g, x, w, p)?;
                crate::add::add(g, x, h)
            })
            .unwrap();
    }

    /// Only cuDNN's argument refusals (its sub-codes included) let the backward fall back to
    /// a separate add; a failure while running does not.
    #[test]
    fn only_refusals_fall_back_to_a_separate_add() {
        let e = |msg: &str| Error::Cuda { op: "cudnnConvolutionBackwardData", msg: msg.into() };
        assert!(refused_before_writing(&e("CUDNN_STATUS_NOT_SUPPORTED")));
        assert!(refused_before_writing(&e("CUDNN_STATUS_BAD_PARAM_NULL_POINTER (cuDNN's last message: x)")));
        assert!(!refused_before_writing(&e("CUDNN_STATUS_EXECUTION_FAILED")));
        assert!(!refused_before_writing(&e("CUDNN_STATUS_INTERNAL_ERROR")));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ps = random_params(&[&[2, 3, 4, 4], &[4, 2, 3, 3], &[4, 3, 7, 7], &[2, 3, 4]], 4);
        let p = Conv2dParams { stride: 1, padding: 1 };
        assert!(forward(&ps[0], &ps[1], p).unwrap_err().to_string().contains("channels"));
        assert!(forward(&ps[0], &ps[2], Conv2dParams { stride: 1, padding: 0 }).is_err());
        assert!(forward(&ps[3], &ps[1], p).is_err());
        assert!(forward(&ps[0], &ps[2], Conv2dParams { stride: 0, padding: 3 }).is_err());
        assert!(forward(&ps[0], &ps[2].to_dtype(DType::F32), p).is_err());
        // dy of the wrong shape, or of another dtype, in the backward.
        let w = random_params(&[&[4, 3, 3, 3]], 5).remove(0);
        let dy = forward(&ps[0], &w, p).unwrap();
        assert!(backward(&ps[0], &w, &dy, p, true).is_ok());
        assert!(backward(&ps[0], &w, &dy.clone().reshape(&[2, 4, 2, 8]).unwrap(), p, true).is_err());
        assert!(backward(&ps[0], &w, &dy.to_dtype(DType::F32), p, true).is_err());
    }
}
