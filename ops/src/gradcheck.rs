//! Gradient checks against central finite differences.
//!
//! For a function `f` built on a [`Graph`] from parameters `p` with output `y`
//! (any shape), fix a random projection `r` (same shape as `y`, seeded) and the
//! scalar `L(p) = Σ r ⊙ f(p)`. The tape gives `∂L/∂p` by one reverse pass
//! seeded with `r`. Central differences give, for each checked element `p_i`,
//!
//! `∂L/∂p_i ≈ (L(p + ε e_i) − L(p − ε e_i)) / 2ε`, with truncation error O(ε²).
//!
//! Run in f64 with ε = 1e-6: the truncation error is ~1e-12 times the third
//! derivative and the rounding error ~1e-16/1e-6 = 1e-10 relative, so a tolerance
//! of 1e-5 relative (plus 1e-7 absolute for gradients near zero) leaves room for
//! both while any wrong backward formula (a missing term, a wrong sign, a wrong
//! index) produces errors of order 1.

use crate::{DType, Graph, Result, Tensor, Var};
use engine::Error;
use rand::SeedableRng;

/// Settings of a gradient check.
#[derive(Clone, Debug)]
pub struct GradCheck {
    /// Finite-difference step.
    pub eps: f64,
    /// Allowed relative error `|a − n| / max(|a|, |n|)`.
    pub rtol: f64,
    /// Allowed absolute error (for gradients near zero).
    pub atol: f64,
    /// At most this many elements of each parameter are perturbed (chosen at random,
    /// seeded); large tensors are sampled to keep the check fast.
    pub max_elems_per_param: usize,
    /// Seed for the projection `r` and the element sample.
    pub seed: u64,
    /// Where `f` runs: the parameters are copied there for every evaluation (perturbations
    /// are made on the host copy). A CUDA device checks the CUDA backward rules in f64; the
    /// inputs `f` creates itself must be on that device too.
    pub device: crate::Device,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck { eps: 1e-6, rtol: 1e-5, atol: 1e-7, max_elems_per_param: 64, seed: 1234, device: crate::Device::Cpu }
    }
}

/// What a passing check measured.
#[derive(Clone, Debug)]
pub struct GradCheckReport {
    /// Number of elements compared.
    pub checked: usize,
    /// Largest relative error seen (over elements whose gradient is not tiny).
    pub max_rel_err: f64,
}

/// Random f64 tensors of the given shapes (standard normal), seeded.
pub fn random_params(shapes: &[&[usize]], seed: u64) -> Vec<Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    shapes.iter().map(|s| Tensor::randn(s, DType::F64, 1.0, &mut rng)).collect()
}

impl GradCheck {
    /// Compare the tape's gradient of `Σ r ⊙ f(params)` with central differences,
    /// for every parameter. `f` takes the parameters with `g.param(i)`.
    /// Returns an error that names the parameter, element and both values on mismatch.
    pub fn run<F>(&self, params: &[Tensor], f: F) -> Result<GradCheckReport>
    where
        F: Fn(&mut Graph<'_>) -> Result<Var>,
    {
        for p in params {
            if p.dtype() != DType::F64 {
                return Err(Error::Invalid("gradient checks run in f64".into()));
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);

        let on_device = |ps: &[Tensor]| -> Result<Vec<Tensor>> { ps.iter().map(|p| p.to_device(&self.device)).collect() };

        // Analytic gradients through the tape.
        let dev_params = on_device(params)?;
        let mut g = Graph::new(&dev_params);
        let y = f(&mut g)?;
        let out_shape = g.value(y).shape().to_vec();
        let r = Tensor::randn(&out_shape, DType::F64, 1.0, &mut rng);
        let rv = r.to_f64_vec();
        let analytic = g.backward_with(y, r.to_device(&self.device)?)?.into_param_grads(params.len())?;
        drop(g);

        let objective = |ps: &[Tensor]| -> Result<f64> {
            let ps = on_device(ps)?;
            let mut g = Graph::new(&ps);
            let y = f(&mut g)?;
            Ok(g.value(y).to_f64_vec().iter().zip(&rv).map(|(a, b)| a * b).sum())
        };

        let mut report = GradCheckReport { checked: 0, max_rel_err: 0.0 };
        let mut work: Vec<Tensor> = params.to_vec();
        for (pi, p) in params.iter().enumerate() {
            let grad = match &analytic[pi] {
                Some(t) => t.to_f64_vec(),
                None => vec![0.0; p.numel()],
            };
            let elems: Vec<usize> = if p.numel() <= self.max_elems_per_param {
                (0..p.numel()).collect()
            } else {
                rand::seq::index::sample(&mut rng, p.numel(), self.max_elems_per_param).into_vec()
            };
            for i in elems {
                let orig = p.as_slice::<f64>()?[i];
                work[pi].as_mut_slice::<f64>()?[i] = orig + self.eps;
                let plus = objective(&work)?;
                work[pi].as_mut_slice::<f64>()?[i] = orig - self.eps;
                let minus = objective(&work)?;
                work[pi].as_mut_slice::<f64>()?[i] = orig;
                let numeric = (plus - minus) / (2.0 * self.eps);
                let a = grad[i];
                let diff = (a - numeric).abs();
                let scale = a.abs().max(numeric.abs());
                // A NaN gradient or finite difference fails too (a NaN compares false).
                if diff.is_nan() || diff > self.atol + self.rtol * scale {
                    return Err(Error::Invalid(format!(
                        "gradient check failed for parameter {pi} {:?}, element {i}: tape {a:.9e}, finite difference {numeric:.9e}",
                        p.shape()
                    )));
                }
                if scale > 1e-6 {
                    report.max_rel_err = report.max_rel_err.max(diff / scale);
                }
                report.checked += 1;
            }
        }
        Ok(report)
    }
}

/// Check that an op's `reads` claims (`engine::Backward::reads`) are truthful on `device`.
///
/// `f` records the op on inputs that are themselves op outputs (each parameter through
/// `scale(·, 1)`, so that they can be freed), and `scale(·, 0.5)` follows its output. Then
/// every value that [`engine::Tape::release_unread`] allows is freed, and the gradients must
/// equal those of the same tape with nothing freed: exactly on the CPU, within `rtol` of the
/// largest gradient on a GPU (cuDNN's backward algorithms may add in a different order from
/// one call to the next). `freeable[i]` states which of the inputs (then the output, last)
/// the op claims not to read, so that a claim changed by mistake in either direction fails.
/// A rule that does read a freed value finds an empty host tensor and returns an error.
pub fn check_reads(
    device: &crate::Device,
    shapes: &[&[usize]],
    freeable: &[bool],
    rtol: f64,
    f: impl Fn(&mut Graph<'_>, &[Var]) -> Result<Var>,
) -> Result<()> {
    if freeable.len() != shapes.len() + 1 {
        return Err(Error::Invalid("check_reads: one flag per input and one for the output".into()));
    }
    let params: Vec<Tensor> = random_params(shapes, 7).iter().map(|p| p.to_device(device)).collect::<Result<_>>()?;
    let run = |release: bool| -> Result<(Vec<bool>, Vec<Vec<f64>>)> {
        let mut g = Graph::new(&params);
        let mut vars = Vec::new();
        for i in 0..params.len() {
            let p = g.param(i)?;
            vars.push(crate::scale::scale(&mut g, p, 1.0)?);
        }
        let y = f(&mut g, &vars)?;
        let z = crate::scale::scale(&mut g, y, 0.5)?;
        vars.push(y);
        let freed: Vec<bool> = vars.iter().map(|&v| release && g.release_unread(v)).collect();
        let seed = Tensor::full(g.value(z).shape(), g.value(z).dtype(), 1.0).to_device(device)?;
        let grads = g.backward_with(z, seed)?.into_param_grads(params.len())?;
        let grads = grads.into_iter().map(|t| t.map(|t| t.to_f64_vec()).unwrap_or_default()).collect();
        Ok((freed, grads))
    };
    let (_, kept) = run(false)?;
    let (freed, released) = run(true)?;
    if freed != freeable {
        return Err(Error::Invalid(format!("the op's rule claims not to read {freed:?} (inputs, then output); expected {freeable:?}")));
    }
    for (i, (a, b)) in kept.iter().zip(&released).enumerate() {
        let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = engine::tensor::max_abs_diff(a, b);
        if a.len() != b.len() || err.is_nan() || err > rtol * scale {
            return Err(Error::Invalid(format!(
                "input {i}: gradients differ once unread values are freed (max difference {err:e}, largest {scale:e})"
            )));
        }
    }
    Ok(())
}
