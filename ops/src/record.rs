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
    use crate::gradcheck::random_params;
    use crate::{DType, Graph, Result, Tensor, Var};
    use engine::Layout;

    /// The `reads` claims of one op are truthful: on a tape where every input of the op is
    /// itself an op output (`scale(param, 1)`) and the op's output feeds `scale(·, 0.5)`,
    /// freeing every value that [`engine::Tape::release_unread`] allows must leave the
    /// gradients bit for bit unchanged. `freeable[i]` says which of the inputs (then the
    /// output, last) the op claims not to read, so that a claim changed by mistake in
    /// either direction shows up here.
    fn check_reads(shapes: &[&[usize]], freeable: &[bool], f: impl Fn(&mut Graph<'_>, &[Var]) -> Result<Var>) {
        assert_eq!(freeable.len(), shapes.len() + 1, "one flag per input and one for the output");
        let params = random_params(shapes, 7);
        let run = |release: bool| {
            let mut g = Graph::new(&params);
            let mut vars = Vec::new();
            for i in 0..params.len() {
                let p = g.param(i).unwrap();
                vars.push(crate::scale::scale(&mut g, p, 1.0).unwrap());
            }
            let y = f(&mut g, &vars).unwrap();
            let z = crate::scale::scale(&mut g, y, 0.5).unwrap();
            vars.push(y);
            let freed: Vec<bool> = vars.iter().map(|&v| release && g.release_unread(v)).collect();
            let seed = Tensor::full(g.value(z).shape(), g.value(z).dtype(), 1.0);
            let grads = g.backward_with(z, seed).unwrap().into_param_grads(params.len()).unwrap();
            (freed, grads.into_iter().map(|t| t.unwrap().to_f64_vec()).collect::<Vec<_>>())
        };
        let (_, kept) = run(false);
        let (freed, released) = run(true);
        assert_eq!(freed, freeable, "which values the op's rule claims not to read");
        assert_eq!(kept, released, "a freed value was read by a backward rule");
    }

    #[test]
    fn every_op_reads_what_it_claims() {
        use crate::{add, batch_norm, batch_norm_relu, cast, conv2d, cross_entropy, layout, linear, max_pool, relu, reshape, scale};
        let conv = conv2d::Conv2dParams { stride: 1, padding: 1 };
        check_reads(&[&[2, 3, 5, 5], &[4, 3, 3, 3]], &[false, false, true], |g, v| conv2d::conv2d(g, v[0], v[1], conv));
        let bn_shapes: &[&[usize]] = &[&[4, 3, 2, 2], &[3], &[3]];
        check_reads(bn_shapes, &[false, false, true, true], |g, v| {
            batch_norm::batch_norm_train(g, v[0], v[1], v[2], &mut RunningStats::new(3, DType::F64), BatchNormConfig::default())
        });
        check_reads(bn_shapes, &[false, false, true, true], |g, v| {
            let mut stats = RunningStats::new(3, DType::F64);
            stats.mean = Tensor::new(&[3], vec![0.2f64, -0.1, 0.4]).unwrap();
            batch_norm::batch_norm_eval(g, v[0], v[1], v[2], &stats, BatchNormConfig::default())
        });
        check_reads(bn_shapes, &[false, false, true, false], |g, v| {
            batch_norm_relu::batch_norm_relu_train(g, v[0], v[1], v[2], &mut RunningStats::new(3, DType::F64), BatchNormConfig::default())
        });
        check_reads(&[&[3, 4]], &[true, false], |g, v| relu::relu(g, v[0]));
        check_reads(&[&[2, 3, 4, 4]], &[false, false], |g, v| max_pool::max_pool2d(g, v[0], 2));
        check_reads(&[&[3, 4], &[3, 4]], &[true, true, true], |g, v| add::add(g, v[0], v[1]));
        check_reads(&[&[3, 6], &[4, 6], &[4]], &[false, false, false, true], |g, v| linear::linear(g, v[0], v[1], v[2]));
        check_reads(&[&[2, 3, 2]], &[true, true], |g, v| reshape::flatten(g, v[0]));
        check_reads(&[&[5]], &[true, true], |g, v| scale::scale(g, v[0], -3.0));
        check_reads(&[&[4, 5]], &[false, true], |g, v| cross_entropy::softmax_cross_entropy(g, v[0], &[0, 4, 2, 2], 0.1));
        check_reads(&[&[6]], &[true, true], |g, v| {
            let h = cast::cast(g, v[0], DType::F32)?;
            cast::cast(g, h, DType::F64)
        });
        check_reads(&[&[2, 3, 2, 2]], &[true, true], |g, v| {
            let h = layout::to_layout(g, v[0], Layout::Nhwc)?;
            layout::to_layout(g, h, Layout::Nchw)
        });
    }
}
