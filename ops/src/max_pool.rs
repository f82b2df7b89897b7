//! STUB: the signatures are the contract; the bodies are to be written.
#![allow(unused_variables)]
use crate::{Gradients, Graph, Result, Tensor, Var};

/// Record `y = max_pool2d(x, k)`, kernel = stride = k: x `[N, C, H, W]` -> y `[N, C, H/k, W/k]` (floor).
pub fn max_pool2d(g: &mut Graph<'_>, x: Var, k: usize) -> Result<Var> { todo!() }

pub struct MaxPoolRecord {}
impl MaxPoolRecord {
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        todo!()
    }
}
