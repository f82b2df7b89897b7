//! STUB
#![allow(unused_variables)]
use crate::{Result, Tensor};

/// SGD hyper-parameters, with `torch.optim.SGD`'s meaning.
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}
/// Momentum buffers, one per parameter, created on the first step as PyTorch does.
#[derive(Clone, Debug, Default)]
pub struct SgdState {
    pub momentum_buffers: Vec<Option<Tensor>>,
}
/// One update of every parameter that has a gradient (`None` gradients are skipped).
pub fn step(params: &mut [Tensor], grads: &[Option<Tensor>], state: &mut SgdState, cfg: &Sgd) -> Result<()> { todo!() }
