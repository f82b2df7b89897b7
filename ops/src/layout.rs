//! Layout conversion of `[N, C, H, W]` tensors between NCHW (row-major) and NHWC
//! ("channels last", see `engine::Layout`): the same values in another memory order.
//!
//! Forward: `y(n, c, h, w) = x(n, c, h, w)`, written in the target order:
//! NCHW → NHWC puts element `(n, c, h, w)` at `((n·H + h)·W + w)·C + c`.
//! Backward: `dx = dy` converted back to x's layout (a permutation's transpose is its inverse).
//!
//! On the GPU: `ptx/layout.cu` (one kernel per element size). On the CPU: the reference
//! below, which also lets the tests check the kernels element by element.

use crate::{Gradients, Graph, Result, Tensor, Var};
use engine::{DType, Error, Layout};

/// Record `y = x` in `layout`.
pub fn to_layout(g: &mut Graph<'_>, x: Var, layout: Layout) -> Result<Var> {
    let xt = g.value(x);
    let from = xt.layout();
    let y = forward(xt, layout)?;
    Ok(g.push(y, crate::Op::Layout(LayoutRecord { x, from }), &[x]))
}

/// `x` in `layout` (a copy, also when it already is).
pub fn forward(x: &Tensor, layout: Layout) -> Result<Tensor> {
    x.expect_rank("to_layout", 4, "x [N, C, H, W]")?;
    if x.layout() == layout {
        return Ok(x.clone());
    }
    if x.device().is_cuda() { forward_cuda(x, layout) } else { forward_cpu(x, layout) }
}

/// Position in memory of element `(n, c, p)` (`p = h·W + w`) in `layout`.
fn offset(layout: Layout, (n, c, p): (usize, usize, usize), (cs, hw): (usize, usize)) -> usize {
    match layout {
        Layout::Nchw => (n * cs + c) * hw + p,
        Layout::Nhwc => (n * hw + p) * cs + c,
    }
}

fn forward_cpu(x: &Tensor, layout: Layout) -> Result<Tensor> {
    let s = x.shape();
    let (n, cs, hw) = (s[0], s[1], s[2] * s[3]);
    // Memory order in, memory order out; f64 holds f32 and bf16 values exactly.
    let xv = x.to_f64_vec();
    let mut y = vec![0.0f64; xv.len()];
    for b in 0..n {
        for c in 0..cs {
            for p in 0..hw {
                y[offset(layout, (b, c, p), (cs, hw))] = xv[offset(x.layout(), (b, c, p), (cs, hw))];
            }
        }
    }
    Tensor::new(s, y)?.to_dtype(x.dtype()).with_layout(layout)
}

fn forward_cuda(x: &Tensor, layout: Layout) -> Result<Tensor> {
    let dir = match layout {
        Layout::Nhwc => "nchw_to_nhwc",
        Layout::Nchw => "nhwc_to_nchw",
    };
    match x.dtype() {
        DType::BF16 => launch::<u16>(x, layout, &format!("{dir}_u16")),
        DType::F32 => launch::<u32>(x, layout, &format!("{dir}_u32")),
        DType::F64 => launch::<u64>(x, layout, &format!("{dir}_u64")),
    }
}

/// `kernel(const U* x, U* y, n, c, hw)` of `ptx/layout.cu`, one thread per output element.
fn launch<U: cudarc::driver::DeviceRepr>(x: &Tensor, layout: Layout, kernel: &str) -> Result<Tensor> {
    use cudarc::driver::PushKernelArg;
    let s = x.shape();
    let (n, c, hw) = (crate::cuda::count(s[0])?, crate::cuda::count(s[1])?, crate::cuda::count(s[2] * s[3])?);
    let total = crate::cuda::count(x.numel())?;
    let (dev, mut y) = crate::cuda::output_like(x)?;
    let f = crate::cuda::function(&dev, "layout.cu", kernel)?;
    let xv = x.cuda_buffer()?.view_bits::<U>()?;
    let mut yv = y.view_bits_mut::<U>()?;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&xv).arg(&mut yv).arg(&n).arg(&c).arg(&hw);
    // SAFETY: the layout kernels read and write n·c·hw elements of U's size; x and y hold that many.
    unsafe { launch.launch(crate::cuda::grid(&f, total)) }.map_err(|e| Error::Cuda { op: "layout conversion", msg: format!("{kernel}: {e}") })?;
    Tensor::from_cuda(s, y)?.with_layout(layout)
}

/// The layout conversion's record: the input node and its layout.
pub struct LayoutRecord {
    x: Var,
    from: Layout,
}

impl LayoutRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads no value (the source layout is kept in the record).
    pub(crate) fn reads(&self, _v: Var, _out: Var) -> bool {
        false
    }

    pub(crate) fn backward(&self, _g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(self.x, forward(dy, self.from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn channels_last_puts_channels_innermost_and_converts_back() {
        let x = Tensor::new(&[2, 3, 2, 2], (0..24).map(|v| v as f32).collect()).unwrap();
        let y = forward(&x, Layout::Nhwc).unwrap();
        assert_eq!(y.layout(), Layout::Nhwc);
        // Image 0, pixel (0, 0): channels 0, 1, 2 are x[0], x[4], x[8]; then pixel (0, 1).
        assert_eq!(&y.to_f32_vec()[..6], &[0.0, 4.0, 8.0, 1.0, 5.0, 9.0]);
        let back = forward(&y, Layout::Nchw).unwrap();
        assert_eq!(back.layout(), Layout::Nchw);
        assert_eq!(back.to_f32_vec(), x.to_f32_vec());
        // CPU reference ops refuse channels-last tensors rather than misread them.
        assert!(y.as_slice::<f32>().is_err());
        assert!(y.clone().reshape(&[2, 12]).is_err());
    }

    #[test]
    fn backward_converts_the_gradient_back() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let params = vec![Tensor::randn(&[2, 3, 4, 5], DType::F64, 1.0, &mut rng)];
        let mut g = Graph::new(&params);
        let p = g.param(0).unwrap();
        let y = to_layout(&mut g, p, Layout::Nhwc).unwrap();
        let seed = forward(&Tensor::randn(&[2, 3, 4, 5], DType::F64, 1.0, &mut rng), Layout::Nhwc).unwrap();
        let grads = g.backward_with(y, seed.clone()).unwrap().into_param_grads(1).unwrap();
        let gx = grads[0].as_ref().unwrap();
        assert_eq!(gx.layout(), Layout::Nchw);
        assert_eq!(gx.to_f64_vec(), forward(&seed, Layout::Nchw).unwrap().to_f64_vec());
    }
}
