//! STUB: the signatures are the contract; the bodies are to be written.
#![allow(unused_variables)]
use crate::{Gradients, Graph, Result, Tensor, Var};

/// Record a reshape to `shape` (same element count).
pub fn reshape(g: &mut Graph<'_>, x: Var, shape: &[usize]) -> Result<Var> { todo!() }
/// Record `[N, ...] -> [N, rest]`.
pub fn flatten(g: &mut Graph<'_>, x: Var) -> Result<Var> { todo!() }

pub struct ReshapeRecord {}
impl ReshapeRecord {
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        todo!()
    }
}
