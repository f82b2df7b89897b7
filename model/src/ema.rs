//! The exponential moving average of the network (`--ema`): an averaged copy of every
//! parameter and every batch-norm running statistic, which the evaluations and the checkpoint
//! then use instead of the trained weights. Training itself is unchanged: the average only
//! reads the weights.
//!
//! As D. Page, "How to Train Your ResNet 8: Bag of Tricks" (myrtle.ai, 2019; the
//! `bag_of_tricks.ipynb` of `davidcpage/cifar10-fast`): every [`EMA_EVERY`] steps, each
//! floating-point entry `v` of the `state_dict` (weights, biases, BN scales and shifts, running
//! means and variances) updates its average `a` as
//!
//! ```text
//! a = ρ·a + (1 − ρ)·v,    ρ = EMA_MOMENTUM^EMA_EVERY = 0.99^5 ≈ 0.951
//! ```
//!
//! (`ops::ema::update`), so that the average has a time constant of 1 / (1 − 0.99) = 100 steps,
//! about one epoch at batch 512. The average starts as a copy of the network when training
//! starts, so after `k` updates the starting weights' share is `ρ^k` (below 1e-10 after the
//! 470 updates of 24 epochs). `num_batches_tracked` (an integer) is copied, not averaged.
//!
//! Cost: one in-place kernel per tensor (26 parameters, 16 running statistics) every 5 steps,
//! each reading and writing its tensor once: 6.6M values, about 80 MB of memory traffic.

use crate::Result;
use crate::resnet::ResNet9;

/// The per-step momentum (Page's 0.99).
pub const EMA_MOMENTUM: f64 = 0.99;
/// Steps between two updates (Page's 5); each update then uses `EMA_MOMENTUM^EMA_EVERY`.
pub const EMA_EVERY: usize = 5;

/// The averaged network.
#[derive(Debug)]
pub struct Ema {
    /// The averaged parameters and BN statistics, with the trained network's architecture.
    pub model: ResNet9,
    /// Updates made since [`Ema::new`] or [`Ema::from_model`].
    updates: usize,
}

impl Ema {
    /// An average that starts as a copy of `model` (on its device), with Page's settings.
    pub fn new(model: &ResNet9) -> Result<Ema> {
        Ok(Ema::from_model(model.clone_on_device()?))
    }

    /// An average that continues from `average` (read back from a checkpoint), with Page's
    /// settings.
    pub fn from_model(average: ResNet9) -> Ema {
        Ema { model: average, updates: 0 }
    }

    /// How many updates this average has made since it was made or read back.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// Called after every training step with `steps`, the number of steps trained so far in
    /// the whole run (1 after the first): averages `model` in when `steps` is a multiple of
    /// the update interval. Returns whether it did.
    pub fn after_step(&mut self, steps: usize, model: &ResNet9) -> Result<bool> {
        if steps == 0 || !steps.is_multiple_of(EMA_EVERY) {
            return Ok(false);
        }
        self.update(model)?;
        Ok(true)
    }

    /// One update with every tensor of `model`.
    fn update(&mut self, model: &ResNet9) -> Result<()> {
        let rho = EMA_MOMENTUM.powi(EMA_EVERY as i32);
        let avg = &mut self.model;
        // Every shape first, so that a mismatch changes nothing.
        let shapes = |m: &ResNet9| -> Vec<Vec<usize>> {
            let bn = m.bn.iter().flat_map(|s| [s.mean.shape().to_vec(), s.var.shape().to_vec()]);
            m.params.iter().map(|p| p.shape().to_vec()).chain(bn).collect()
        };
        if shapes(avg) != shapes(model) {
            return Err(crate::Error::Invalid("the moving average's network differs from the trained one".into()));
        }
        for (a, p) in avg.params.iter_mut().zip(&model.params) {
            ops::ema::update(a, p, rho)?;
        }
        for (a, s) in avg.bn.iter_mut().zip(&model.bn) {
            ops::ema::update(&mut a.mean, &s.mean, rho)?;
            ops::ema::update(&mut a.var, &s.var, rho)?;
            a.num_batches_tracked = s.num_batches_tracked;
        }
        self.updates += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::{DType, Tensor};
    use rand::SeedableRng;

    /// Twelve steps of a stand-in training that sets every tensor to a new random value: the
    /// average changes only after steps 5 and 10, and then equals the closed form
    /// ρ²·start + ρ(1−ρ)·w5 + (1−ρ)·w10 evaluated in f64 (within f32 rounding of the three
    /// operations of each of the two updates); the BN statistics are averaged and the batch
    /// count copied.
    #[test]
    fn averages_every_fifth_step_in_closed_form() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut net = ResNet9::new(0.125, 0.125, DType::F32, &mut rng).unwrap();
        for s in &mut net.bn {
            s.mean = Tensor::randn(s.mean.shape(), DType::F32, 1.0, &mut rng);
        }
        let start = net.clone();
        let mut ema = Ema::new(&net).unwrap();
        let rho = 0.99f64.powi(5);
        let mut seen = Vec::new();
        for step in 1..=12 {
            for p in &mut net.params {
                *p = Tensor::randn(p.shape(), DType::F32, 1.0, &mut rng);
            }
            for s in &mut net.bn {
                s.mean = Tensor::randn(s.mean.shape(), DType::F32, 1.0, &mut rng);
                s.var = Tensor::uniform(s.var.shape(), DType::F32, 0.5, 2.0, &mut rng);
                s.num_batches_tracked = step as u64;
            }
            let before = ema.model.params[0].to_f64_vec();
            let updated = ema.after_step(step, &net).unwrap();
            assert_eq!(updated, step % 5 == 0, "step {step}");
            assert_eq!(ema.model.params[0].to_f64_vec() != before, updated, "step {step}");
            assert_eq!(ema.updates(), step / 5);
            if updated {
                seen.push(net.clone());
            }
        }
        let (w5, w10) = (&seen[0], &seen[1]);
        let check = |what: &str, got: &Tensor, s: &Tensor, a: &Tensor, b: &Tensor| {
            let (s, a, b) = (s.to_f64_vec(), a.to_f64_vec(), b.to_f64_vec());
            for (i, g) in got.to_f64_vec().iter().enumerate() {
                let want = rho * rho * s[i] + rho * (1.0 - rho) * a[i] + (1.0 - rho) * b[i];
                let tol = 8.0 * f32::EPSILON as f64 * (s[i].abs() + a[i].abs() + b[i].abs());
                assert!((g - want).abs() <= tol, "{what}[{i}]: {g} vs {want}");
            }
        };
        for i in 0..net.params.len() {
            check(&format!("param {i}"), &ema.model.params[i], &start.params[i], &w5.params[i], &w10.params[i]);
        }
        for i in 0..net.bn.len() {
            check(&format!("bn {i} mean"), &ema.model.bn[i].mean, &start.bn[i].mean, &w5.bn[i].mean, &w10.bn[i].mean);
            check(&format!("bn {i} var"), &ema.model.bn[i].var, &start.bn[i].var, &w5.bn[i].var, &w10.bn[i].var);
            assert_eq!(ema.model.bn[i].num_batches_tracked, 10);
        }
    }

    /// An average of another network's shape is refused and left as it was.
    #[test]
    fn refuses_a_different_network() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let net = ResNet9::new(0.125, 0.125, DType::F32, &mut rng).unwrap();
        let mut other = ResNet9::new(0.125, 0.125, DType::F32, &mut rng).unwrap();
        // The same network but for the last layer's bias: its first tensors would average fine.
        other.params.last_mut().unwrap().clone_from(&Tensor::randn(&[11], DType::F32, 1.0, &mut rng));
        let mut ema = Ema::new(&net).unwrap();
        let e = ema.after_step(5, &other).unwrap_err().to_string();
        assert!(e.contains("differs"), "{e}");
        assert_eq!(ema.model.params[0].to_f64_vec(), net.params[0].to_f64_vec());
    }
}
