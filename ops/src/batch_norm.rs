//! STUB: the signatures are the contract; the bodies are to be written.
#![allow(unused_variables)]
use crate::{Gradients, Graph, Result, Tensor, Var};

/// Running statistics of one batch-norm layer (PyTorch's buffers `running_mean`,
/// `running_var`, `num_batches_tracked`). `var` is the *unbiased* batch variance's running average.
#[derive(Clone, Debug)]
pub struct RunningStats {
    pub mean: Tensor,
    pub var: Tensor,
    pub num_batches_tracked: u64,
}
impl RunningStats {
    /// Mean 0, variance 1, as PyTorch initialises them.
    pub fn new(channels: usize, dtype: crate::DType) -> Self { todo!() }
}
/// PyTorch's defaults: momentum 0.1, eps 1e-5.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormConfig {
    pub momentum: f64,
    pub eps: f64,
}
impl Default for BatchNormConfig {
    fn default() -> Self { BatchNormConfig { momentum: 0.1, eps: 1e-5 } }
}
/// Training mode: normalise x `[N, C, H, W]` with the batch statistics, scale by gamma `[C]`,
/// shift by beta `[C]`, and update `running`.
pub fn batch_norm_train(g: &mut Graph<'_>, x: Var, gamma: Var, beta: Var, running: &mut RunningStats, cfg: BatchNormConfig) -> Result<Var> { todo!() }
/// Eval mode: normalise with `running`.
pub fn batch_norm_eval(g: &mut Graph<'_>, x: Var, gamma: Var, beta: Var, running: &RunningStats, cfg: BatchNormConfig) -> Result<Var> { todo!() }

pub struct BatchNormRecord {}
impl BatchNormRecord {
    pub(crate) fn backward(&self, g: &Graph<'_>, dy: &Tensor, grads: &mut Gradients) -> Result<()> {
        todo!()
    }
}
