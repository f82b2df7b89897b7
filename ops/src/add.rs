//! STUB: the signatures are the contract; the bodies are to be written.
#![allow(unused_variables)]
use crate::{Gradients, Graph, Result, Tensor, Var};

/// Record `y = a + b` (same shapes).
pub fn add(g: &mut Graph<'_>, a: Var, b: Var) -> Result<Var> { todo!() }

pub struct AddRecord {}
impl AddRecord {
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        todo!()
    }
}
