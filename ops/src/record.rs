//! The closed set of recorded operations and the one `match` that runs their
//! backward rules. Every op the autograd knows is listed here; each variant
//! holds the op's record (its inputs and saved tensors), and the formula for
//! each backward rule is in the doc comment of the op's file.

use crate::{Gradients, Graph, Result, Tensor, Var};
use crate::{add, batch_norm, batch_norm_relu, cast, conv2d, cross_entropy, layout, linear, max_pool, relu, reshape, scale};

/// One recorded operation.
pub enum Op {
    Conv2d(conv2d::Conv2dRecord),
    BatchNorm(batch_norm::BatchNormRecord),
    BatchNormRelu(batch_norm_relu::BatchNormReluRecord),
    Relu(relu::ReluRecord),
    MaxPool2d(max_pool::MaxPoolRecord),
    Add(add::AddRecord),
    Linear(linear::LinearRecord),
    Reshape(reshape::ReshapeRecord),
    Scale(scale::ScaleRecord),
    SoftmaxCrossEntropy(cross_entropy::CrossEntropyRecord),
    Cast(cast::CastRecord),
    Layout(layout::LayoutRecord),
}

impl engine::Backward for Op {
    fn backward(&self, tape: &Graph<'_>, out: Var, grad_out: &Tensor, grads: &mut Gradients) -> Result<()> {
        match self {
            Op::Conv2d(r) => r.backward(tape, grad_out, grads),
            Op::BatchNorm(r) => r.backward(tape, grad_out, grads),
            Op::BatchNormRelu(r) => r.backward(tape, out, grad_out, grads),
            Op::Relu(r) => r.backward(tape, out, grad_out, grads),
            Op::MaxPool2d(r) => r.backward(tape, out, grad_out, grads),
            Op::Add(r) => r.backward(tape, grad_out, grads),
            Op::Linear(r) => r.backward(tape, grad_out, grads),
            Op::Reshape(r) => r.backward(tape, grad_out, grads),
            Op::Scale(r) => r.backward(tape, grad_out, grads),
            Op::SoftmaxCrossEntropy(r) => r.backward(tape, grad_out, grads),
            Op::Cast(r) => r.backward(tape, grad_out, grads),
            Op::Layout(r) => r.backward(tape, grad_out, grads),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "conv2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::BatchNormRelu(_) => "batch_norm_relu",
            Op::Relu(_) => "relu",
            Op::MaxPool2d(_) => "max_pool2d",
            Op::Add(_) => "add",
            Op::Linear(_) => "linear",
            Op::Reshape(_) => "reshape",
            Op::Scale(_) => "scale",
            Op::SoftmaxCrossEntropy(_) => "cross_entropy",
            Op::Cast(_) => "cast",
            Op::Layout(_) => "layout",
        }
    }
}
