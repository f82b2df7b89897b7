//! cuDNN through cudarc's `sys` layer, wrapped in small safe types: the handle,
//! tensor/filter/convolution/pooling descriptors that destroy themselves on drop,
//! and the per-shape convolution plan the device caches.
//!
//! cudarc's safe cuDNN API keeps its handle private and has no batch norm or
//! pooling backward, so the ops use these instead; every `unsafe` call is in the
//! op that makes it, next to the shapes it relies on.

use cudarc::cudnn::sys;
use cudarc::driver::CudaStream;
use std::ffi::c_int;
use std::sync::Arc;

pub use cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t as BwdDataAlgo, cudnnConvolutionBwdFilterAlgo_t as BwdFilterAlgo,
    cudnnConvolutionFwdAlgo_t as FwdAlgo,
};

/// A failed cuDNN call as our error, naming the function; with cuDNN's own explanation where
/// it gave one (a status such as `CUDNN_STATUS_BAD_PARAM` alone rarely says which
/// attribute of which descriptor was wrong).
pub fn check(op: &'static str, status: sys::cudnnStatus_t) -> crate::Result<()> {
    match status {
        sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS => Ok(()),
        s => Err(crate::Error::Cuda { op, msg: status_message(&format!("{s:?}"), last_error_string().as_deref()) }),
    }
}

/// `status`, then cuDNN's message in parentheses if there is one. cuDNN keeps its last
/// message until the next error, so a failure that sets none shows an earlier one: hence
/// "last message", not "reason".
fn status_message(status: &str, last: Option<&str>) -> String {
    match last {
        Some(m) => format!("{status} (cuDNN's last message: {m})"),
        None => status.to_string(),
    }
}

/// cuDNN's message for the last error in this thread (`cudnnGetLastErrorString`, cuDNN 9),
/// on one line; `None` when it is empty, or when cuDNN cannot be loaded (a status made up by
/// a unit test; after a real call the library is loaded and, the device having checked, of
/// version 9).
fn last_error_string() -> Option<String> {
    // SAFETY: is_culib_present only tries to load the library (cudarc marks it unsafe).
    if !unsafe { sys::is_culib_present() } {
        return None;
    }
    let mut buf = [0 as std::ffi::c_char; 1024];
    // SAFETY: cudnnGetLastErrorString writes at most `max_size` bytes, NUL-terminated, into
    // the buffer (cuDNN 9's API reference); it is told one byte less than the buffer holds.
    unsafe { sys::cudnnGetLastErrorString(buf.as_mut_ptr(), buf.len() - 1) };
    // SAFETY: the buffer is NUL-terminated: its last byte stays 0 whatever cuDNN writes.
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!one_line.is_empty()).then_some(one_line)
}

/// A cuDNN handle whose work goes to one stream.
pub struct CudnnHandle {
    raw: sys::cudnnHandle_t,
    /// Kept alive as long as the handle points at it.
    _stream: Arc<CudaStream>,
}

// SAFETY: a cuDNN handle may be used from any thread, but not from two at once;
// the device keeps it behind a Mutex.
unsafe impl Send for CudnnHandle {}

impl CudnnHandle {
    /// Create a handle bound to `stream` (the stream's context must be current).
    pub(crate) fn new(stream: &Arc<CudaStream>) -> crate::Result<CudnnHandle> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: cudnnCreate writes a new handle into `raw`.
        check("cudnnCreate", unsafe { sys::cudnnCreate(&mut raw) })?;
        let h = CudnnHandle { raw, _stream: stream.clone() };
        // SAFETY: both the handle and the stream are valid; the handle keeps the stream alive.
        check("cudnnSetStream", unsafe { sys::cudnnSetStream(raw, stream.cu_stream() as sys::cudaStream_t) })?;
        Ok(h)
    }

    /// The raw handle for `sys` calls.
    pub fn raw(&self) -> sys::cudnnHandle_t {
        self.raw
    }
}

impl Drop for CudnnHandle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate and destroyed once. A failure here cannot be reported.
        unsafe { sys::cudnnDestroy(self.raw) };
    }
}

/// cuDNN's name for our element type.
pub fn data_type(dtype: crate::DType) -> sys::cudnnDataType_t {
    match dtype {
        crate::DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        crate::DType::F64 => sys::cudnnDataType_t::CUDNN_DATA_DOUBLE,
        crate::DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
    }
}

/// The type cuDNN computes (accumulates) in for data of `dtype`: f32 for bf16 data.
pub fn compute_type(dtype: crate::DType) -> sys::cudnnDataType_t {
    match dtype {
        crate::DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        d => data_type(d),
    }
}

static ONE_F32: f32 = 1.0;
static ZERO_F32: f32 = 0.0;
static ONE_F64: f64 = 1.0;
static ZERO_F64: f64 = 0.0;

/// The scaling factor 1 (cuDNN's alpha) as cuDNN wants it for data of `dtype`: a float
/// for f32 and bf16 data, a double for f64 data.
pub fn one(dtype: crate::DType) -> *const std::ffi::c_void {
    match dtype {
        crate::DType::F32 | crate::DType::BF16 => &ONE_F32 as *const f32 as *const std::ffi::c_void,
        crate::DType::F64 => &ONE_F64 as *const f64 as *const std::ffi::c_void,
    }
}

/// The scaling factor 0 (cuDNN's beta: overwrite the output), as in [`one`].
pub fn zero(dtype: crate::DType) -> *const std::ffi::c_void {
    match dtype {
        crate::DType::F32 | crate::DType::BF16 => &ZERO_F32 as *const f32 as *const std::ffi::c_void,
        crate::DType::F64 => &ZERO_F64 as *const f64 as *const std::ffi::c_void,
    }
}

/// cuDNN's name for a memory order.
fn format(layout: crate::Layout) -> sys::cudnnTensorFormat_t {
    match layout {
        crate::Layout::Nchw => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        crate::Layout::Nhwc => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
    }
}

fn int(v: usize) -> crate::Result<c_int> {
    c_int::try_from(v).map_err(|_| crate::Error::Invalid(format!("dimension {v} too large for cuDNN")))
}

/// A 4-d tensor descriptor: dense, logical sizes `[n, c, h, w]`, in NCHW or NHWC memory order.
pub struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    /// Dense `[n, c, h, w]` of `dtype` in memory order `layout`.
    pub fn new(dtype: crate::DType, layout: crate::Layout, n: usize, c: usize, h: usize, w: usize) -> crate::Result<TensorDesc> {
        let d = TensorDesc::empty()?;
        let raw = d.0;
        let fmt = format(layout);
        // SAFETY: a valid descriptor and plain integers.
        check("cudnnSetTensor4dDescriptor", unsafe {
            sys::cudnnSetTensor4dDescriptor(raw, fmt, data_type(dtype), int(n)?, int(c)?, int(h)?, int(w)?)
        })?;
        Ok(d)
    }

    fn empty() -> crate::Result<TensorDesc> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: creates a descriptor into `raw`; it is owned by the returned value.
        check("cudnnCreateTensorDescriptor", unsafe { sys::cudnnCreateTensorDescriptor(&mut raw) })?;
        Ok(TensorDesc(raw))
    }

    /// The descriptor of batch norm's per-channel parameters and statistics for input `x`
    /// (cuDNN derives shape `[1, C, 1, 1]` and type: f32 for f32/bf16 input, f64 for f64).
    pub fn batch_norm_params(x: &TensorDesc, mode: sys::cudnnBatchNormMode_t) -> crate::Result<TensorDesc> {
        let d = TensorDesc::empty()?;
        // SAFETY: both descriptors are valid; cuDNN sets `d` from `x`.
        check("cudnnDeriveBNTensorDescriptor", unsafe { sys::cudnnDeriveBNTensorDescriptor(d.0, x.0, mode) })?;
        Ok(d)
    }

    pub fn raw(&self) -> sys::cudnnTensorDescriptor_t {
        self.0
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        unsafe { sys::cudnnDestroyTensorDescriptor(self.0) };
    }
}

/// A filter descriptor `[k, c, r, s]` (output channels, input channels, kernel height, width), NCHW.
pub struct FilterDesc(sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    /// Filters `[k, c, r, s]` of `dtype` stored in `layout` order (NHWC: `k, r, s, c`).
    pub fn kcrs(dtype: crate::DType, layout: crate::Layout, k: usize, c: usize, r: usize, s: usize) -> crate::Result<FilterDesc> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: creates a descriptor into `raw`; it is owned by the returned value.
        check("cudnnCreateFilterDescriptor", unsafe { sys::cudnnCreateFilterDescriptor(&mut raw) })?;
        let d = FilterDesc(raw);
        let fmt = format(layout);
        // SAFETY: a valid descriptor and plain integers.
        check("cudnnSetFilter4dDescriptor", unsafe {
            sys::cudnnSetFilter4dDescriptor(raw, data_type(dtype), fmt, int(k)?, int(c)?, int(r)?, int(s)?)
        })?;
        Ok(d)
    }

    pub fn raw(&self) -> sys::cudnnFilterDescriptor_t {
        self.0
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        unsafe { sys::cudnnDestroyFilterDescriptor(self.0) };
    }
}

/// A 2-d cross-correlation (what deep learning calls convolution), accumulating in f32 for
/// f32 and bf16 data and in f64 for f64 data.
pub struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    /// Padding and stride the same in both directions, no dilation; `tf32` allows
    /// tensor-core math with TF32 inputs for f32 data, otherwise plain FMA math.
    pub fn new(dtype: crate::DType, pad: usize, stride: usize, tf32: bool) -> crate::Result<ConvDesc> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: creates a descriptor into `raw`; it is owned by the returned value.
        check("cudnnCreateConvolutionDescriptor", unsafe { sys::cudnnCreateConvolutionDescriptor(&mut raw) })?;
        let d = ConvDesc(raw);
        let (p, s) = (int(pad)?, int(stride)?);
        let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        // SAFETY: a valid descriptor and plain values.
        check("cudnnSetConvolution2dDescriptor", unsafe { sys::cudnnSetConvolution2dDescriptor(raw, p, p, s, s, 1, 1, mode, compute_type(dtype)) })?;
        let math = match dtype {
            // bf16 data: tensor cores, f32 accumulation.
            crate::DType::BF16 => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
            crate::DType::F32 if tf32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
            crate::DType::F32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
            // TF32 never applies to f64; DEFAULT keeps any f64 tensor-core (DMMA) kernels, as PyTorch.
            crate::DType::F64 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        };
        // SAFETY: as above.
        check("cudnnSetConvolutionMathType", unsafe { sys::cudnnSetConvolutionMathType(raw, math) })?;
        Ok(d)
    }

    pub fn raw(&self) -> sys::cudnnConvolutionDescriptor_t {
        self.0
    }

    /// Set the math type an algorithm was chosen with: cuDNN's search returns (algorithm,
    /// math type) pairs, and the pair must be run as it was measured (an algorithm that has
    /// no tensor-core version is returned with DEFAULT math, and needs the workspace measured so).
    pub fn set_math(&self, math: sys::cudnnMathType_t) -> crate::Result<()> {
        // SAFETY: a valid descriptor owned by self.
        check("cudnnSetConvolutionMathType", unsafe { sys::cudnnSetConvolutionMathType(self.0, math) })
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        unsafe { sys::cudnnDestroyConvolutionDescriptor(self.0) };
    }
}

/// A 2-d max-pooling window (no padding), propagating NaN like PyTorch.
pub struct PoolDesc(sys::cudnnPoolingDescriptor_t);

impl PoolDesc {
    pub fn max(window: usize, stride: usize) -> crate::Result<PoolDesc> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: creates a descriptor into `raw`; it is owned by the returned value.
        check("cudnnCreatePoolingDescriptor", unsafe { sys::cudnnCreatePoolingDescriptor(&mut raw) })?;
        let d = PoolDesc(raw);
        let (k, s) = (int(window)?, int(stride)?);
        // SAFETY: a valid descriptor and plain values. MAX_DETERMINISTIC sends the gradient of a
        // window to the first maximum, like our CPU reference (and PyTorch).
        check("cudnnSetPooling2dDescriptor", unsafe {
            sys::cudnnSetPooling2dDescriptor(
                raw,
                sys::cudnnPoolingMode_t::CUDNN_POOLING_MAX_DETERMINISTIC,
                sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                k, k, 0, 0, s, s,
            )
        })?;
        Ok(d)
    }

    pub fn raw(&self) -> sys::cudnnPoolingDescriptor_t {
        self.0
    }
}

impl Drop for PoolDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        unsafe { sys::cudnnDestroyPoolingDescriptor(self.0) };
    }
}

/// What identifies a convolution for algorithm choice: element type, input `[n, c, h, w]`,
/// filter `[k, c, r, s]`, padding, stride, whether TF32 is allowed, and whether only
/// deterministic algorithms are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvKey {
    pub dtype: crate::DType,
    pub layout: crate::Layout,
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub pad: usize,
    pub stride: usize,
    pub tf32: bool,
    pub deterministic: bool,
}

impl ConvKey {
    /// The same convolution (type, layout, channels, image size, filter, padding, stride,
    /// math and determinism rules) at another batch size.
    pub fn same_but_batch(&self, other: &ConvKey) -> bool {
        self.x[0] != other.x[0] && self.x[1..] == other.x[1..] && ConvKey { x: other.x, ..*self } == *other
    }

    /// Whether tensor-core math is allowed: bf16 and f64 data (f64 tensor cores compute
    /// exact IEEE FMAs), or f32 with TF32 allowed.
    pub fn tensor_cores(&self) -> bool {
        self.tf32 || self.dtype != crate::DType::F32
    }

    /// The output's `[n, k, oh, ow]`.
    pub fn y(&self) -> [usize; 4] {
        let out = |size: usize, kernel: usize| (size + 2 * self.pad - kernel) / self.stride + 1;
        [self.x[0], self.w[0], out(self.x[2], self.w[2]), out(self.x[3], self.w[3])]
    }
}

/// What cuDNN offers for one convolution shape: a plan, or nothing (with what was tried).
/// A refusal is remembered like a plan, so a shape cuDNN cannot run is searched once.
#[derive(Clone, Debug)]
pub enum ConvChoice {
    Plan(ConvPlan),
    /// No usable algorithm of some kind: which kind, and what each search said.
    Refused(String),
}

/// The algorithms chosen for one convolution shape (the fastest cuDNN measured) and the
/// workspace each needs, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct ConvPlan {
    pub fwd: FwdAlgo,
    pub fwd_bytes: usize,
    pub fwd_math: sys::cudnnMathType_t,
    pub bwd_data: BwdDataAlgo,
    pub bwd_data_bytes: usize,
    pub bwd_data_math: sys::cudnnMathType_t,
    pub bwd_filter: BwdFilterAlgo,
    pub bwd_filter_bytes: usize,
    pub bwd_filter_math: sys::cudnnMathType_t,
    /// The batch size whose search chose these algorithms, when it is not this shape's own
    /// (`ops::conv2d` reuses a full batch's algorithms for the last, smaller batch).
    pub searched_at_batch: Option<usize>,
}

/// The device address of `s` for a `sys` call reading it. Event tracking is off on our
/// context (one stream orders everything), so the guard cudarc returns has nothing to record.
pub fn ptr<T>(s: &impl cudarc::driver::DevicePtr<T>, stream: &CudaStream) -> *const std::ffi::c_void {
    let (p, _guard) = s.device_ptr(stream);
    p as usize as *const std::ffi::c_void
}

/// The device address of `s` for a `sys` call writing it (see [`ptr`]).
pub fn ptr_mut<T>(s: &mut impl cudarc::driver::DevicePtrMut<T>, stream: &CudaStream) -> *mut std::ffi::c_void {
    let (p, _guard) = s.device_ptr_mut(stream);
    p as usize as *mut std::ffi::c_void
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_but_batch_differs_in_the_batch_only() {
        let k = ConvKey { dtype: crate::DType::BF16, layout: crate::Layout::Nhwc, x: [512, 64, 32, 32], w: [128, 64, 3, 3], pad: 1, stride: 1, tf32: false, deterministic: false };
        assert!(ConvKey { x: [336, 64, 32, 32], ..k }.same_but_batch(&k));
        assert!(!k.same_but_batch(&k), "the same key is not another batch");
        assert!(!ConvKey { x: [336, 64, 16, 16], ..k }.same_but_batch(&k), "another image size");
        assert!(!ConvKey { x: [336, 64, 32, 32], w: [64, 64, 3, 3], ..k }.same_but_batch(&k), "another filter");
        assert!(!ConvKey { x: [336, 64, 32, 32], deterministic: true, ..k }.same_but_batch(&k), "other rules");
        assert!(!ConvKey { x: [336, 64, 32, 32], dtype: crate::DType::F32, ..k }.same_but_batch(&k), "another type");
        assert!(!ConvKey { x: [336, 64, 32, 32], layout: crate::Layout::Nchw, ..k }.same_but_batch(&k), "another layout");
    }

    #[test]
    fn a_status_carries_cudnns_message_when_there_is_one() {
        assert_eq!(status_message("CUDNN_STATUS_BAD_PARAM", None), "CUDNN_STATUS_BAD_PARAM");
        assert_eq!(
            status_message("CUDNN_STATUS_BAD_PARAM", Some("stride mismatch")),
            "CUDNN_STATUS_BAD_PARAM (cuDNN's last message: stride mismatch)"
        );
    }

    /// The output shape (N, K, (H + 2p - R)/s + 1, ...) and the tensor-core rule.
    #[test]
    fn output_shape_and_tensor_core_rule() {
        let k = ConvKey { dtype: crate::DType::F32, layout: crate::Layout::Nchw, x: [5, 3, 32, 30], w: [64, 3, 3, 3], pad: 1, stride: 1, tf32: false, deterministic: false };
        assert_eq!(k.y(), [5, 64, 32, 30]);
        assert_eq!(ConvKey { pad: 0, stride: 2, ..k }.y(), [5, 64, 15, 14]);
        assert!(!k.tensor_cores());
        assert!(ConvKey { tf32: true, ..k }.tensor_cores());
        assert!(ConvKey { dtype: crate::DType::BF16, ..k }.tensor_cores());
    }
}
