//! STUB: the signatures are the contract; the bodies are to be written.
#![allow(unused_variables)]
use crate::{Gradients, Graph, Result, Tensor, Var};

/// Stride and zero padding, the same along both spatial axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
}

/// Record `y = conv2d(x, w)`: x `[N, C, H, W]`, w `[O, C, KH, KW]` -> y `[N, O, OH, OW]`,
/// `OH = (H + 2·padding − KH) / stride + 1` (floor), likewise OW.
pub fn conv2d(g: &mut Graph<'_>, x: Var, w: Var, p: Conv2dParams) -> Result<Var> { todo!() }
/// Forward on tensors.
pub fn forward(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> { todo!() }
/// Backward on tensors: `(dx` if `need_dx`, `dw)`.
pub fn backward(x: &Tensor, w: &Tensor, dy: &Tensor, p: Conv2dParams, need_dx: bool) -> Result<(Option<Tensor>, Tensor)> { todo!() }

pub struct Conv2dRecord {}
impl Conv2dRecord {
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        todo!()
    }
}
