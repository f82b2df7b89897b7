//! STUB: the signatures are the contract; the bodies are to be written.
#![allow(unused_variables)]
use crate::{Gradients, Graph, Result, Tensor, Var};

/// Record the mean softmax cross-entropy of logits `[N, K]` against `labels` (N values in 0..K),
/// with label smoothing `s` (target = (1 − s)·onehot + s/K). Output: a scalar `[1]`.
pub fn softmax_cross_entropy(g: &mut Graph<'_>, logits: Var, labels: &[u32], label_smoothing: f64) -> Result<Var> { todo!() }

pub struct CrossEntropyRecord {}
impl CrossEntropyRecord {
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        todo!()
    }
}
