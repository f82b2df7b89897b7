//! STUB: the signatures are the contract; the bodies are to be written.
#![allow(unused_variables)]
use crate::{Gradients, Graph, Result, Tensor, Var};

/// Record `y = x wᵀ + b`: x `[N, I]`, w `[O, I]`, b `[O]` -> y `[N, O]` (PyTorch's nn.Linear layout).
pub fn linear(g: &mut Graph<'_>, x: Var, w: Var, b: Var) -> Result<Var> { todo!() }

pub struct LinearRecord {}
impl LinearRecord {
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        todo!()
    }
}
