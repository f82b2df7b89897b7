//! A tape-based reverse-mode autograd.
//!
//! Forward: every operation computes its output eagerly and pushes one node on
//! the tape holding the output value and a *record* of what it needs for its
//! backward pass (its input [`Var`]s and any saved intermediates).
//!
//! Backward: [`Tape::backward`] seeds `dL/dL = 1` and walks the nodes in
//! reverse. For each node that received a gradient it calls the record's
//! [`Backward::backward`], which adds (`+=`) the gradients of the node's inputs.
//! Because the tape is in forward (topological) order, a node's gradient is
//! complete when the walk reaches it.
//!
//! The engine does not know any operation: the record type `R` is a closed enum
//! defined by the `ops` crate, whose backward rules sit in one `match`.
//!
//! Leaves are of two kinds: *inputs* (constants such as images and labels: no
//! gradient) and *parameters* (borrowed from the model, not copied: they get
//! gradients, returned by [`Gradients::into_param_grads`]).
//!
//! Memory: a value is needed after its forward only if some backward rule reads it
//! ([`Backward::reads`]). Two calls free values early: [`Tape::release_unread`] during the
//! forward (a value no recorded rule reads, once nothing later uses it, e.g. a batch
//! norm's output after its ReLU), and [`Tape::backward_releasing`] during the walk (each
//! value once every rule that could read it has run). Together they keep a training
//! step's peak near the activations the backward pass really needs.

use crate::profile::Profiler;
use crate::{Error, Result, Tensor};

/// A handle to one node (value) on a tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

impl Var {
    /// The node's position on the tape.
    pub fn index(self) -> usize {
        self.0
    }
}

/// The backward rule of a recorded operation.
pub trait Backward: Sized {
    /// Given `grad_out` = dL/d(output of this record, node `out`), add dL/d(input)
    /// to `grads` for each input that [`Tape::requires_grad`]. The rule owns `grad_out` (the
    /// walk is done with it): a rule whose input's gradient *is* `grad_out` (a residual
    /// add) moves it there instead of copying it.
    fn backward(&self, tape: &Tape<'_, Self>, out: Var, grad_out: Tensor, grads: &mut Gradients) -> Result<()>;

    /// A short name of the operation, for profiles.
    fn name(&self) -> &'static str {
        "op"
    }

    /// Whether this rule reads the value of node `v` (one of its inputs, or `out`, its own
    /// output), for [`Tape::release_unread`]. The default, `true`, is always safe.
    fn reads(&self, _v: Var, _out: Var) -> bool {
        true
    }
}

enum Source<R> {
    Input(Tensor),
    Param(usize),
    Op { value: Tensor, record: R },
}

struct Node<R> {
    source: Source<R>,
    requires_grad: bool,
}

/// The record of one forward pass.
pub struct Tape<'p, R> {
    params: &'p [Tensor],
    /// More parameter leaves, numbered after `params` (see [`Tape::with_extra`]).
    extra: &'p [Tensor],
    nodes: Vec<Node<R>>,
    /// When set, every push and every backward rule is marked (see [`crate::profile`]).
    profiler: std::cell::RefCell<Option<Profiler>>,
    /// Set by [`Tape::backward_releasing`]: the walk freed the values and records, so a
    /// second walk would find nothing to differentiate and is refused.
    walked_and_released: bool,
}

impl<'p, R> Tape<'p, R> {
    /// An empty tape over the model's parameters (referenced, not copied).
    pub fn new(params: &'p [Tensor]) -> Self {
        Tape::with_extra(params, &[])
    }

    /// A tape over the model's parameters and `extra` tensors that are differentiated like
    /// them: parameter `params.len() + j` is `extra[j]`, and
    /// [`Gradients::into_param_grads`] with `params.len() + extra.len()` gives their
    /// gradients last. For copies of parameters made outside the tape (e.g. all the
    /// convolution weights converted to bf16 in one launch), whose gradients the caller
    /// turns into the parameters' own.
    pub fn with_extra(params: &'p [Tensor], extra: &'p [Tensor]) -> Self {
        Tape { params, extra, nodes: Vec::new(), profiler: std::cell::RefCell::new(None), walked_and_released: false }
    }

    /// Mark every operation from now on: its forward when it is pushed (the work queued
    /// since the previous mark), its backward after its rule ran.
    pub fn set_profiler(&mut self, p: Profiler) {
        *self.profiler.get_mut() = Some(p);
    }

    /// Stop marking and hand the profiler back.
    pub fn take_profiler(&mut self) -> Option<Profiler> {
        self.profiler.get_mut().take()
    }

    /// Mark the end of some work of the caller's (e.g. the loss read back), if profiling.
    pub fn mark(&self, label: &str) {
        if let Some(p) = self.profiler.borrow_mut().as_mut() {
            p.mark(label);
        }
    }

    /// A constant leaf (no gradient is computed for it).
    pub fn input(&mut self, value: Tensor) -> Var {
        self.nodes.push(Node { source: Source::Input(value), requires_grad: false });
        Var(self.nodes.len() - 1)
    }

    /// A leaf for parameter `index` of the slice given to [`Tape::new`] (or, counting on, of
    /// the extra slice of [`Tape::with_extra`]).
    pub fn param(&mut self, index: usize) -> Result<Var> {
        let n = self.params.len() + self.extra.len();
        if index >= n {
            return Err(Error::Invalid(format!("parameter {index} requested but the tape has {n}")));
        }
        self.nodes.push(Node { source: Source::Param(index), requires_grad: true });
        Ok(Var(self.nodes.len() - 1))
    }

    /// Push the output of an operation. It requires a gradient when any of `inputs` does.
    pub fn push(&mut self, value: Tensor, record: R, inputs: &[Var]) -> Var
    where
        R: Backward,
    {
        if let Some(p) = self.profiler.get_mut() {
            p.mark_detail(&format!("{} forward", record.name()), &format!("{:?}", value.shape()));
        }
        let requires_grad = inputs.iter().any(|&v| self.requires_grad(v));
        self.nodes.push(Node { source: Source::Op { value, record }, requires_grad });
        Var(self.nodes.len() - 1)
    }

    /// The value of a node.
    pub fn value(&self, v: Var) -> &Tensor {
        match &self.nodes[v.0].source {
            Source::Input(t) | Source::Op { value: t, .. } => t,
            Source::Param(i) => match self.params.get(*i) {
                Some(t) => t,
                None => &self.extra[*i - self.params.len()],
            },
        }
    }

    /// Whether the loss's gradient must flow into this node.
    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }

    /// Elements held by the values of the tape's inputs and operations (parameters are
    /// borrowed, not counted): what keeping this tape costs, in elements.
    pub fn held_elements(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match &n.source {
                Source::Input(t) | Source::Op { value: t, .. } => t.numel(),
                Source::Param(_) => 0,
            })
            .sum()
    }

    /// Number of nodes recorded.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Take the value of an operation's output node out of the tape (e.g. logits
    /// kept after the step), leaving an empty tensor of the same dtype behind.
    pub fn take_value(&mut self, v: Var) -> Option<Tensor> {
        match &mut self.nodes[v.0].source {
            Source::Op { value, .. } | Source::Input(value) => {
                let empty = Tensor::zeros(&[0], value.dtype());
                Some(std::mem::replace(value, empty))
            }
            Source::Param(_) => None,
        }
    }
}

impl<R: Backward> Tape<'_, R> {
    /// Gradients of a scalar `loss` (one element) with respect to every parameter.
    pub fn backward(&self, loss: Var) -> Result<Gradients> {
        self.backward_with(loss, self.loss_seed(loss)?)
    }

    /// Reverse pass seeded with `seed` = dL/d`out` (same shape as `out`): the
    /// vector-Jacobian product of everything recorded up to `out`.
    pub fn backward_with(&self, out: Var, seed: Tensor) -> Result<Gradients> {
        let mut grads = self.seed(out, seed)?;
        for i in (0..=out.0).rev() {
            self.backward_node(i, &mut grads)?;
        }
        Ok(grads)
    }

    /// [`Tape::backward`], freeing each value as soon as the walk no longer needs it, except
    /// the values of `keep` (e.g. the loss and the logits, read after the step).
    ///
    /// Why it is safe: the backward rule of node `j` reads only values recorded before it
    /// (its inputs) and its own output, and the walk runs `j` = last ..= 0. Once node `i`'s
    /// rule has run, every rule that could read value `i` (those of `i` and of its consumers,
    /// all after `i`) has run, so value `i` is dropped there.
    ///
    /// Why it matters: without it every activation of the batch stays alive until the end of
    /// the walk, while the largest gradients (those of the first, full-resolution layers)
    /// are made at that end. With it, the activations of the later layers are gone by then,
    /// so the bytes in use at the step's peak are about the activations alone. On a GPU the
    /// freed blocks go back to the pool, whose training step reuses only blocks of exactly
    /// the requested size: the memory held from the driver falls less than the bytes in use.
    pub fn backward_releasing(&mut self, loss: Var, keep: &[Var]) -> Result<Gradients> {
        let seed = self.loss_seed(loss)?;
        let mut grads = self.seed(loss, seed)?;
        self.walked_and_released = true;
        for i in (0..=loss.0).rev() {
            self.backward_node(i, &mut grads)?;
            if !keep.contains(&Var(i)) {
                self.release(Var(i));
            }
        }
        Ok(grads)
    }

    /// dL/dL = 1 for a scalar loss, on the loss's device.
    fn loss_seed(&self, loss: Var) -> Result<Tensor> {
        let value = self.value(loss);
        if value.numel() != 1 {
            return Err(Error::shape("Tape::backward", format!("the loss must be a scalar, got shape {:?}", value.shape())));
        }
        match value.device() {
            crate::Device::Cpu => Ok(Tensor::full(value.shape(), value.dtype(), 1.0)),
            crate::Device::Cuda(d) => Tensor::from_cuda(value.shape(), d.ones(1, value.dtype())?),
        }
    }

    /// Empty gradients, with `seed` as the gradient of `out`.
    fn seed(&self, out: Var, seed: Tensor) -> Result<Gradients> {
        if self.walked_and_released {
            return Err(Error::Invalid("this tape's values were freed by backward_releasing: record the forward again".into()));
        }
        self.value(out).expect_same("Tape::backward_with", &seed)?;
        let mut grads = Gradients { by_node: (0..self.nodes.len()).map(|_| None).collect(), params: Vec::new() };
        grads.by_node[out.0] = Some(seed);
        Ok(grads)
    }

    /// One step of the walk: node `i`'s backward rule, if it received a gradient and needs
    /// one (its gradient is complete here and is freed after); a parameter leaf is noted.
    fn backward_node(&self, i: usize, grads: &mut Gradients) -> Result<()> {
        let node = &self.nodes[i];
        match &node.source {
            Source::Op { record, .. } => {
                if let Some(g) = grads.by_node[i].take()
                    && node.requires_grad
                {
                    // The label is only formatted when profiling (not on every step); the
                    // gradient has the shape of the operation's output.
                    let shape = self.profiler.borrow().as_ref().map(|_| format!("{:?}", g.shape()));
                    record.backward(self, Var(i), g, grads)?;
                    if let (Some(p), Some(shape)) = (self.profiler.borrow_mut().as_mut(), shape) {
                        p.mark_detail(&format!("{} backward", record.name()), &shape);
                    }
                }
            }
            Source::Param(p) => grads.params.push((*p, i)),
            Source::Input(_) => {}
        }
        Ok(())
    }

    /// Free the value of node `v` during the forward pass when no backward rule recorded so
    /// far reads it (e.g. a batch norm's output once the ReLU after it is recorded: batch
    /// norm's rule reads its input, ReLU's its own output). Returns whether it was freed.
    ///
    /// The caller vouches that no operation recorded later uses `v`; one that did would find
    /// an empty tensor and fail on its shape. Parameters are never freed.
    pub fn release_unread(&mut self, v: Var) -> bool {
        let read = self.nodes[v.0..].iter().enumerate().any(|(k, node)| match &node.source {
            Source::Op { record, .. } => record.reads(v, Var(v.0 + k)),
            _ => false,
        });
        // `take_value` leaves an empty tensor behind and never touches a parameter.
        !read && self.take_value(v).is_some()
    }

    /// Drop the value of an input or operation node, and the operation's record with its
    /// saved tensors (parameters are borrowed, not held). What stays is an empty input.
    fn release(&mut self, v: Var) {
        let source = &mut self.nodes[v.0].source;
        if let Source::Op { value, .. } | Source::Input(value) = source {
            *source = Source::Input(Tensor::zeros(&[0], value.dtype()));
        }
    }
}

/// The gradients produced by one reverse pass.
pub struct Gradients {
    by_node: Vec<Option<Tensor>>,
    /// (parameter index, node) for every parameter leaf reached by the walk.
    params: Vec<(usize, usize)>,
}

impl Gradients {
    /// `grad[v] += g`. Shapes must match the node's value (checked by `add_assign`).
    pub fn accumulate(&mut self, v: Var, g: Tensor) -> Result<()> {
        match &mut self.by_node[v.0] {
            Some(existing) => existing.add_assign(&g),
            slot @ None => {
                *slot = Some(g);
                Ok(())
            }
        }
    }

    /// Take node `v`'s gradient so far out of the walk (for a rule that adds its own
    /// contribution into it in place and hands it back with [`Gradients::accumulate`]).
    pub fn take(&mut self, v: Var) -> Option<Tensor> {
        self.by_node[v.0].take()
    }

    /// The gradient of a leaf node (parameter), if the loss depends on it.
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.by_node[v.0].as_ref()
    }

    /// One gradient per parameter of the tape (in the order of the slice given to
    /// [`Tape::new`]); `None` where the loss does not depend on that parameter.
    /// A parameter used through several leaves gets the sum.
    pub fn into_param_grads(mut self, n_params: usize) -> Result<Vec<Option<Tensor>>> {
        let mut out: Vec<Option<Tensor>> = (0..n_params).map(|_| None).collect();
        if let Some(&(p, _)) = self.params.iter().find(|(p, _)| *p >= n_params) {
            return Err(Error::Invalid(format!("parameter {p} has a gradient, but {n_params} were asked for (extra parameters count too)")));
        }
        for (p, node) in std::mem::take(&mut self.params) {
            if let Some(g) = self.by_node[node].take() {
                match &mut out[p] {
                    Some(acc) => acc.add_assign(&g)?,
                    slot @ None => *slot = Some(g),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny op set to test the tape alone: y = a * b (elementwise) and y = sum(x).
    enum TestOp {
        Mul(Var, Var),
        Sum(Var, Vec<usize>),
        /// y = exp(x); its rule reads its own output: dx = dy · y.
        Exp(Var),
    }

    impl Backward for TestOp {
        fn reads(&self, v: Var, out: Var) -> bool {
            match *self {
                TestOp::Mul(a, b) => v == a || v == b,
                TestOp::Exp(_) => v == out,
                // Sum's rule needs only its input's shape, kept in the record: it reads no value.
                TestOp::Sum(..) => false,
            }
        }

        fn backward(&self, tape: &Tape<'_, Self>, out: Var, g: Tensor, grads: &mut Gradients) -> Result<()> {
            match *self {
                TestOp::Mul(a, b) => {
                    let (va, vb, vg) = (tape.value(a).to_f64_vec(), tape.value(b).to_f64_vec(), g.to_f64_vec());
                    let shape = tape.value(a).shape().to_vec();
                    if tape.requires_grad(a) {
                        grads.accumulate(a, Tensor::new(&shape, vg.iter().zip(&vb).map(|(g, b)| g * b).collect())?)?;
                    }
                    if tape.requires_grad(b) {
                        grads.accumulate(b, Tensor::new(&shape, vg.iter().zip(&va).map(|(g, a)| g * a).collect())?)?;
                    }
                }
                TestOp::Sum(x, ref shape) => {
                    let n = shape.iter().product();
                    grads.accumulate(x, Tensor::new(shape, vec![g.scalar()?; n])?)?;
                }
                TestOp::Exp(x) => {
                    let y = tape.value(out);
                    let dx = y.to_f64_vec().iter().zip(g.to_f64_vec()).map(|(y, g)| y * g).collect();
                    grads.accumulate(x, Tensor::new(y.shape(), dx)?)?;
                }
            }
            Ok(())
        }
    }

    fn mul(t: &mut Tape<'_, TestOp>, a: Var, b: Var) -> Var {
        let v: Vec<f64> = t.value(a).to_f64_vec().iter().zip(t.value(b).to_f64_vec()).map(|(x, y)| x * y).collect();
        let shape = t.value(a).shape().to_vec();
        t.push(Tensor::new(&shape, v).unwrap(), TestOp::Mul(a, b), &[a, b])
    }

    fn exp(t: &mut Tape<'_, TestOp>, x: Var) -> Var {
        let v: Vec<f64> = t.value(x).to_f64_vec().iter().map(|x| x.exp()).collect();
        let shape = t.value(x).shape().to_vec();
        t.push(Tensor::new(&shape, v).unwrap(), TestOp::Exp(x), &[x])
    }

    fn sum(t: &mut Tape<'_, TestOp>, x: Var) -> Var {
        let s: f64 = t.value(x).to_f64_vec().iter().sum();
        let shape = t.value(x).shape().to_vec();
        t.push(Tensor::new(&[1], vec![s]).unwrap(), TestOp::Sum(x, shape), &[x])
    }

    /// Extra parameters are numbered after the model's, read as themselves, and their
    /// gradients come last: L = sum(p0 * e0) gives dL/dp0 = e0 and dL/de0 = p0.
    #[test]
    fn extra_parameters_follow_the_models() {
        let params = [Tensor::new(&[2], vec![1.0f64, 2.0]).unwrap()];
        let extra = [Tensor::new(&[2], vec![3.0f64, -5.0]).unwrap()];
        let mut t = Tape::with_extra(&params, &extra);
        let (p, e) = (t.param(0).unwrap(), t.param(1).unwrap());
        assert_eq!(t.value(e).to_f64_vec(), vec![3.0, -5.0]);
        assert!(t.param(2).is_err(), "only 1 + 1 parameters");
        let y = mul(&mut t, p, e);
        let l = sum(&mut t, y);
        assert!(t.backward(l).unwrap().into_param_grads(1).is_err(), "the extra parameter's gradient has no place");
        let g = t.backward(l).unwrap().into_param_grads(2).unwrap();
        assert_eq!(g[0].as_ref().unwrap().to_f64_vec(), vec![3.0, -5.0]);
        assert_eq!(g[1].as_ref().unwrap().to_f64_vec(), vec![1.0, 2.0]);
    }

    /// L = sum(p0 * p0 * c): dL/dp0 = 2 * p0 * c; p0 used twice, so accumulation must add.
    #[test]
    fn backward_accumulates_through_shared_uses() {
        let params = vec![Tensor::new(&[3], vec![1.0f64, -2.0, 3.0]).unwrap()];
        let mut t = Tape::new(&params);
        let p = t.param(0).unwrap();
        let c = t.input(Tensor::new(&[3], vec![0.5f64, 4.0, -1.0]).unwrap());
        let sq = mul(&mut t, p, p);
        let y = mul(&mut t, sq, c);
        let l = sum(&mut t, y);
        assert!(!t.requires_grad(c) && t.requires_grad(y));
        let g = t.backward(l).unwrap().into_param_grads(1).unwrap();
        assert_eq!(g[0].as_ref().unwrap().to_f64_vec(), vec![1.0, -16.0, -6.0]);
    }

    /// A parameter placed on the tape twice gets the sum of both leaves' gradients.
    #[test]
    fn parameter_used_through_two_leaves_sums() {
        let params = vec![Tensor::new(&[2], vec![2.0f64, 5.0]).unwrap()];
        let mut t = Tape::new(&params);
        let p1 = t.param(0).unwrap();
        let p2 = t.param(0).unwrap();
        let y = mul(&mut t, p1, p2);
        let l = sum(&mut t, y);
        let g = t.backward(l).unwrap().into_param_grads(1).unwrap();
        assert_eq!(g[0].as_ref().unwrap().to_f64_vec(), vec![4.0, 10.0]);
    }

    /// Releasing the values during the walk gives the same gradients as keeping them (the
    /// `Mul` rules read their inputs' values and `Exp`'s its own output, so a value dropped
    /// before its last reader ran would make a rule fail), and afterwards only the kept values
    /// and the parameters remain. A second walk over the released tape is refused.
    #[test]
    fn backward_releasing_frees_values_after_their_last_reader() {
        let params = vec![Tensor::new(&[3], vec![1.5f64, -2.0, 0.25]).unwrap()];
        let build = |t: &mut Tape<'_, TestOp>| {
            let p = t.param(0).unwrap();
            let c = t.input(Tensor::new(&[3], vec![0.5f64, 4.0, -1.0]).unwrap());
            let sq = mul(t, p, p);
            let y = mul(t, sq, c);
            let e = exp(t, y);
            let z = mul(t, e, sq);
            (p, c, sq, y, z, sum(t, z))
        };
        let mut kept = Tape::new(&params);
        let (.., l) = build(&mut kept);
        let want = kept.backward(l).unwrap().into_param_grads(1).unwrap();

        let mut t = Tape::new(&params);
        let (p, c, sq, y, z, l) = build(&mut t);
        let z_before = t.value(z).to_f64_vec();
        let got = t.backward_releasing(l, &[z, l]).unwrap().into_param_grads(1).unwrap();
        assert_eq!(got[0].as_ref().unwrap().to_f64_vec(), want[0].as_ref().unwrap().to_f64_vec());
        for v in [c, sq, y] {
            assert_eq!(t.value(v).numel(), 0, "node {} still holds its value", v.index());
        }
        assert_eq!(t.value(z).to_f64_vec(), z_before, "a kept value must survive");
        assert_eq!(t.value(l).numel(), 1);
        assert_eq!(t.value(p).numel(), 3, "parameters are borrowed, never released");
        assert!(t.backward(l).is_err(), "a released tape has nothing left to differentiate");
    }

    /// `Mul` reads both inputs, not its output; `Sum` reads no value.
    /// A value read by a recorded rule is kept; one read by none is freed, and the walk
    /// still gives the same gradients.
    #[test]
    fn release_unread_frees_only_values_no_rule_reads() {
        let params = vec![Tensor::new(&[3], vec![0.5f64, -1.0, 2.0]).unwrap()];
        let mut t = Tape::new(&params);
        let p = t.param(0).unwrap();
        let sq = mul(&mut t, p, p);
        let s1 = sum(&mut t, sq);
        let y = mul(&mut t, s1, s1);
        assert!(!t.release_unread(p), "parameters are borrowed, never freed");
        assert!(!t.release_unread(s1), "the second Mul reads s1");
        let held = t.held_elements();
        assert!(t.release_unread(sq), "only Sum consumes sq, and Sum reads no value");
        assert_eq!(t.value(sq).numel(), 0);
        assert_eq!(t.held_elements(), held - 3);
        let g = t.backward(y).unwrap().into_param_grads(1).unwrap();
        // y = (Σ p²)², dy/dp = 2·(Σ p²)·2p = 4·5.25·p
        assert_eq!(g[0].as_ref().unwrap().to_f64_vec(), vec![10.5, -21.0, 42.0]);
    }

    #[test]
    fn backward_rejects_a_non_scalar_loss() {
        let params = vec![Tensor::new(&[2], vec![2.0f64, 5.0]).unwrap()];
        let mut t = Tape::new(&params);
        let p = t.param(0).unwrap();
        let y = mul(&mut t, p, p);
        assert!(t.backward(y).is_err());
        assert!(t.param(3).is_err());
    }
}
