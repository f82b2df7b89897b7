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
    fn backward(&self, tape: &Graph<'_>, out: Var, grad_out: Tensor, grads: &mut Gradients) -> Result<()> {
        match self {
            Op::Conv2d(r) => r.backward(tape, &grad_out, grads),
            Op::BatchNorm(r) => r.backward(tape, &grad_out, grads),
            // With a residual input, batch norm + ReLU moves the gradient on to it.
            Op::BatchNormRelu(r) => r.backward(tape, out, grad_out, grads),
            Op::Relu(r) => r.backward(tape, out, &grad_out, grads),
            Op::MaxPool2d(r) => r.backward(tape, &grad_out, grads),
            // Add owns the gradient: it moves it to an input instead of copying it.
            Op::Add(r) => r.backward(tape, grad_out, grads),
            Op::Linear(r) => r.backward(tape, &grad_out, grads),
            Op::Reshape(r) => r.backward(tape, grad_out, grads),
            Op::Scale(r) => r.backward(tape, &grad_out, grads),
            Op::SoftmaxCrossEntropy(r) => r.backward(tape, &grad_out, grads),
            Op::Cast(r) => r.backward(tape, &grad_out, grads),
            Op::Layout(r) => r.backward(tape, &grad_out, grads),
        }
    }

    fn reads(&self, v: Var, out: Var) -> bool {
        match self {
            Op::Conv2d(r) => r.reads(v, out),
            Op::BatchNorm(r) => r.reads(v, out),
            Op::BatchNormRelu(r) => r.reads(v, out),
            Op::Relu(r) => r.reads(v, out),
            Op::MaxPool2d(r) => r.reads(v, out),
            Op::Add(r) => r.reads(v, out),
            Op::Linear(r) => r.reads(v, out),
            Op::Reshape(r) => r.reads(v, out),
            Op::Scale(r) => r.reads(v, out),
            Op::SoftmaxCrossEntropy(r) => r.reads(v, out),
            Op::Cast(r) => r.reads(v, out),
            Op::Layout(r) => r.reads(v, out),
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

#[cfg(test)]
mod tests {
    use crate::batch_norm::{BatchNormConfig, RunningStats};
    use crate::gradcheck::check_reads;
    use crate::{DType, Device, Tensor};
    use engine::Layout;

    /// Every op's `reads` claims hold for its CPU rule, bit for bit (the CUDA rules are
    /// checked the same way by `tests/cuda_ops.rs` on a GPU).
    #[test]
    fn every_op_reads_what_it_claims() {
        use crate::{add, batch_norm, batch_norm_relu, cast, conv2d, cross_entropy, layout, linear, max_pool, relu, reshape, scale};
        let cpu = Device::Cpu;
        let conv = conv2d::Conv2dParams { stride: 1, padding: 1 };
        check_reads(&cpu, &[&[2, 3, 5, 5], &[4, 3, 3, 3]], &[false, false, true], 0.0, |g, v| conv2d::conv2d(g, v[0], v[1], conv)).unwrap();
        let bn_shapes: &[&[usize]] = &[&[4, 3, 2, 2], &[3], &[3]];
        check_reads(&cpu, bn_shapes, &[false, false, true, true], 0.0, |g, v| {
            batch_norm::batch_norm_train(g, v[0], v[1], v[2], &mut RunningStats::new(3, DType::F64), BatchNormConfig::default())
        })
        .unwrap();
        check_reads(&cpu, bn_shapes, &[false, false, true, true], 0.0, |g, v| {
            let mut stats = RunningStats::new(3, DType::F64);
            stats.mean = Tensor::new(&[3], vec![0.2f64, -0.1, 0.4]).unwrap();
            batch_norm::batch_norm_eval(g, v[0], v[1], v[2], &stats, BatchNormConfig::default())
        })
        .unwrap();
        check_reads(&cpu, bn_shapes, &[false, false, true, false], 0.0, |g, v| {
            batch_norm_relu::batch_norm_relu_train(g, v[0], v[1], v[2], &mut RunningStats::new(3, DType::F64), BatchNormConfig::default())
        })
        .unwrap();
        // With a residual input: neither it nor the output is read (the CPU keeps the ReLU's
        // output in the record for the mask).
        let bn_skip: &[&[usize]] = &[&[4, 3, 2, 2], &[3], &[3], &[4, 3, 2, 2]];
        check_reads(&cpu, bn_skip, &[false, false, true, true, true], 0.0, |g, v| {
            batch_norm_relu::batch_norm_relu_add_train(g, v[0], v[1], v[2], v[3], &mut RunningStats::new(3, DType::F64), BatchNormConfig::default())
        })
        .unwrap();
        check_reads(&cpu, &[&[3, 4]], &[true, false], 0.0, |g, v| relu::relu(g, v[0])).unwrap();
        // The CPU pool saves its argmax and the input's shape: its input may be freed.
        check_reads(&cpu, &[&[2, 3, 4, 4]], &[true, true], 0.0, |g, v| max_pool::max_pool2d(g, v[0], 2)).unwrap();
        check_reads(&cpu, &[&[3, 4], &[3, 4]], &[true, true, true], 0.0, |g, v| add::add(g, v[0], v[1])).unwrap();
        check_reads(&cpu, &[&[3, 6], &[4, 6], &[4]], &[false, false, false, true], 0.0, |g, v| linear::linear(g, v[0], v[1], v[2])).unwrap();
        check_reads(&cpu, &[&[2, 3, 2]], &[true, true], 0.0, |g, v| reshape::flatten(g, v[0])).unwrap();
        check_reads(&cpu, &[&[5]], &[true, true], 0.0, |g, v| scale::scale(g, v[0], -3.0)).unwrap();
        check_reads(&cpu, &[&[4, 5]], &[false, true], 0.0, |g, v| cross_entropy::softmax_cross_entropy(g, v[0], &[0, 4, 2, 2], 0.1)).unwrap();
        check_reads(&cpu, &[&[6]], &[true, true], 0.0, |g, v| {
            let h = cast::cast(g, v[0], DType::F32)?;
            cast::cast(g, h, DType::F64)
        })
        .unwrap();
        check_reads(&cpu, &[&[2, 3, 2, 2]], &[true, true], 0.0, |g, v| {
            let h = layout::to_layout(g, v[0], Layout::Nhwc)?;
            layout::to_layout(g, h, Layout::Nchw)
        })
        .unwrap();
    }
}
