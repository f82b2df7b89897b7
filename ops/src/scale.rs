//! STUB: the signatures are the contract; the bodies are to be written.
#![allow(unused_variables)]
use crate::{Gradients, Graph, Result, Tensor, Var};

/// Record `y = alpha · x`.
pub fn scale(g: &mut Graph<'_>, x: Var, alpha: f64) -> Result<Var> { todo!() }

pub struct ScaleRecord {}
impl ScaleRecord {
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        todo!()
    }
}
