//! The one-cycle learning-rate schedule without annihilation, stepped per batch.
//!
//! With `S` steps per epoch, `E` epochs in all (`T = E·S` steps) and the peak at the
//! end of epoch `P` (`p = P·S` steps), the LR used for step `t` (0-based, `0 ≤ t < T`) is
//!
//! ```text
//! lr(t) = lr_min + (lr_max − lr_min) · t / p              for t ≤ p
//! lr(t) = lr_max − (lr_max − lr_min) · (t − p) / (T − p)   for t > p
//! ```
//!
//! a straight line from `lr_min` (first step) up to `lr_max` (first step of epoch
//! `P + 1`), then a straight line down that would reach `lr_min` at step `T`, the
//! end of training. There is no annihilation phase below `lr_min`.

/// A one-cycle schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneCycle {
    pub lr_min: f64,
    pub lr_max: f64,
    pub steps_per_epoch: usize,
    pub epochs: usize,
    /// Epoch at whose end the LR peaks (5 in the recipe).
    pub peak_epoch: usize,
}

impl OneCycle {
    /// Total number of steps `T`.
    pub fn total_steps(&self) -> usize {
        self.epochs * self.steps_per_epoch
    }

    /// The LR for step `t` (see the module doc).
    pub fn lr(&self, t: usize) -> f64 {
        let total = self.total_steps() as f64;
        // A peak past the end (short study runs) is clamped to the end: warm-up only.
        // (Clamped before the product, which a huge peak epoch would overflow.)
        let peak = (self.peak_epoch.min(self.epochs) * self.steps_per_epoch) as f64;
        let t = t as f64;
        let span = self.lr_max - self.lr_min;
        if t <= peak {
            if peak == 0.0 { self.lr_max } else { self.lr_min + span * t / peak }
        } else {
            self.lr_max - span * (t - peak) / (total - peak)
        }
    }
}

#[cfg(test)]
// Tolerances: each LR is a few f64 operations on values ≤ 0.4 (rounding ~1e-17 each);
// 1e-15 and 1e-12 leave room for that and are far below one step's change (≥ 2e-4).
mod tests {
    use super::*;

    fn recipe() -> OneCycle {
        OneCycle { lr_min: 0.01, lr_max: 0.4, steps_per_epoch: 98, epochs: 24, peak_epoch: 5 }
    }

    #[test]
    fn starts_at_min_peaks_at_end_of_epoch_five_and_returns_to_min() {
        let s = recipe();
        assert_eq!(s.total_steps(), 2352);
        assert!((s.lr(0) - 0.01).abs() < 1e-15);
        assert!((s.lr(5 * 98) - 0.4).abs() < 1e-15);
        // One step before the end it is one step's decrement above lr_min.
        let step = (0.4 - 0.01) / (2352.0 - 490.0);
        assert!((s.lr(2351) - (0.01 + step)).abs() < 1e-12);
        // The max is at the peak, and no step goes below lr_min.
        let lrs: Vec<f64> = (0..s.total_steps()).map(|t| s.lr(t)).collect();
        let argmax = lrs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(argmax, 490);
        assert!(lrs.iter().all(|&lr| (0.01 - 1e-15..=0.4 + 1e-15).contains(&lr)));
    }

    #[test]
    fn is_linear_on_both_sides() {
        let s = recipe();
        let up = s.lr(10) - s.lr(9);
        assert!((s.lr(300) - s.lr(299) - up).abs() < 1e-12 && up > 0.0);
        let down = s.lr(1000) - s.lr(999);
        assert!((s.lr(2000) - s.lr(1999) - down).abs() < 1e-12 && down < 0.0);
        assert!((up - (0.39 / 490.0)).abs() < 1e-12);
    }

    #[test]
    fn short_runs_clamp_the_peak() {
        let s = OneCycle { epochs: 2, ..recipe() };
        assert!((s.lr(0) - 0.01).abs() < 1e-15);
        assert!(s.lr(195) < 0.4 && s.lr(195) > s.lr(194));
        // A peak epoch whose step count would overflow is clamped first: the same schedule.
        let huge = OneCycle { peak_epoch: usize::MAX, ..s };
        assert_eq!((0..196).map(|t| huge.lr(t)).collect::<Vec<_>>(), (0..196).map(|t| s.lr(t)).collect::<Vec<_>>());
    }
}
