//! Reshape: the same elements under another shape (the row-major element order is unchanged).
//! The forward copies the input's buffer (the tape keeps its input's value as it is); the
//! backward reshapes the gradient it owns, with no copy.
//!
//! Shapes: x `S`, y `S'` with `|S| = |S'|`. Forward: `y = x` as `S'`. Backward: `dx = dy` as `S`.

use crate::{Gradients, Graph, Result, Tensor, Var};
use engine::Error;

/// Record a reshape to `shape` (same element count).
pub fn reshape(g: &mut Graph<'_>, x: Var, shape: &[usize]) -> Result<Var> {
    let xt = g.value(x);
    let in_shape = xt.shape().to_vec();
    let y = xt.clone().reshape(shape)?;
    Ok(g.push(y, crate::Op::Reshape(ReshapeRecord { x, in_shape }), &[x]))
}

/// Record `[N, ...] -> [N, rest]`.
pub fn flatten(g: &mut Graph<'_>, x: Var) -> Result<Var> {
    let s = g.value(x).shape().to_vec();
    if s.is_empty() {
        return Err(Error::shape("flatten", "a scalar has no batch dimension"));
    }
    let rest: usize = s[1..].iter().product();
    reshape(g, x, &[s[0], rest])
}

/// Reshape's record: the input node and its shape.
pub struct ReshapeRecord {
    x: Var,
    in_shape: Vec<usize>,
}

impl ReshapeRecord {
    /// Whether this rule reads the value of node `v` (see `engine::Backward::reads`). Reads no value (the shape is kept in the record).
    pub(crate) fn reads(&self, _v: Var, _out: Var) -> bool {
        false
    }

    pub(crate) fn backward(&self, _g: &Graph<'_>, dy: Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(self.x, dy.reshape(&self.in_shape)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{GradCheck, random_params};

    #[test]
    fn flatten_keeps_the_batch_dimension() {
        let ps = random_params(&[&[2, 3, 2, 2]], 1);
        let mut g = Graph::new(&ps);
        let x = g.param(0).unwrap();
        let y = flatten(&mut g, x).unwrap();
        assert_eq!(g.value(y).shape(), &[2, 12]);
        assert_eq!(g.value(y).to_f64_vec(), ps[0].to_f64_vec());
        assert!(reshape(&mut g, x, &[5, 5]).is_err());
    }

    #[test]
    fn gradient() {
        let ps = random_params(&[&[2, 3, 2]], 2);
        GradCheck::default()
            .run(&ps, |g| {
                let x = g.param(0)?;
                reshape(g, x, &[3, 4])
            })
            .unwrap();
    }
}
