//! The LR range test (Smith 2015, "Cyclical Learning Rates", §3.3; the loss
//! smoothing and stopping rule follow fastai's / torch-lr-finder's `range_test`).
//!
//! Starting from the current weights, train for up to `steps` batches with the LR
//! growing exponentially from `start_lr` to `end_lr`:
//! `lr_i = start_lr · (end_lr / start_lr)^(i / (steps − 1))`.
//! The loss is smoothed with an exponential moving average with bias correction,
//! `avg_i = β·avg_{i−1} + (1−β)·loss_i`, `smooth_i = avg_i / (1 − β^(i+1))`, and the
//! test stops early once `smooth_i > diverge · min_j≤i smooth_j` (divergence) or the
//! loss is not finite. The weights, BN statistics and optimizer state are restored
//! afterwards: the test leaves the model exactly as it found it.
//!
//! Suggestion rules for LRMAX (`LrRule`):
//! - `Minimum` (the default; Smith 2017, "Super-Convergence", §3: the cycle's upper bound
//!   is where the loss stops falling): `lr_max = lr(argmin smooth)`.
//! - `Steepest` (fastai's "steepest descent" suggestion): `lr_max` = the LR where the
//!   smoothed loss falls fastest per unit of `ln lr`, before its minimum; the slope is a
//!   central difference over ±`SLOPE_SPAN` points. When the loss never turns up inside the
//!   range (e.g. with a 0.125 logit scale, where the minimum rule picks the range's end),
//!   this still lands where training is fastest.
//! - `Valley` (fastai's default suggestion since v2.4, `fastai.callback.schedule.valley`): the
//!   longest stretch of points over which the smoothed loss keeps falling (the longest
//!   decreasing subsequence, which tolerates noise), and the point half-way through its middle
//!   third: `start + ⌊L/3⌋ + ⌊L/6⌋` for a stretch of L points. It lies between the steepest
//!   point and the minimum.
//!
//! Rules for LRMIN, the LR the one-cycle starts from and returns to (`LrMinRule`):
//! - `Tenth`: `lr_min = lr_max / 10`.
//! - `Onset` (Smith 2015, §3.3: the cycle's lower bound is where the loss starts to fall):
//!   the first LR at which the smoothed loss has made `ONSET_FRACTION` of its fall from its
//!   start (the mean of the first `ONSET_BASE` smoothed values) to its minimum, kept within
//!   `[lr_max / 100, lr_max / 10]`; `lr_max / 10` if the loss never falls.
//!
//! Only full batches are used: a small last batch gives a noisy loss that can fake the minimum.

use crate::pipeline::Pipeline;
use crate::batches::Normalization;
use crate::resnet::ResNet9;
use crate::train::{self, TrainConfig};
use crate::{Error, Result};
use data::Split;
use ops::sgd::SgdState;

/// Which point of the curve becomes LRMAX (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LrRule {
    #[default]
    Minimum,
    Steepest,
    Valley,
}

/// Which LR becomes LRMIN (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LrMinRule {
    #[default]
    Tenth,
    Onset,
}

/// Settings of the range test.
#[derive(Clone, Copy, Debug)]
pub struct LrFindConfig {
    pub start_lr: f64,
    pub end_lr: f64,
    pub steps: usize,
    pub beta: f64,
    pub diverge: f64,
    pub rule: LrRule,
    pub min_rule: LrMinRule,
}

impl Default for LrFindConfig {
    fn default() -> Self {
        LrFindConfig {
            start_lr: 1e-4,
            end_lr: 10.0,
            steps: 100,
            beta: 0.98,
            diverge: 4.0,
            rule: LrRule::Minimum,
            min_rule: LrMinRule::default(),
        }
    }
}

/// The `Onset` rule: the share of the smoothed loss's fall (start to minimum) that marks the
/// onset, and the number of first smoothed values averaged for the start.
const ONSET_FRACTION: f64 = 0.1;
const ONSET_BASE: usize = 5;

/// Half-width, in points, of the central difference of the `Steepest` rule.
const SLOPE_SPAN: usize = 3;

/// What the range test measured and suggests.
#[derive(Clone, Debug)]
pub struct LrFindResult {
    /// (lr, raw loss, smoothed loss) per step run.
    pub points: Vec<(f64, f64, f64)>,
    pub lr_max: f64,
    pub lr_min: f64,
    /// The LR of each rule's choice, whichever was used (for the log and the plot).
    pub lr_at_minimum: f64,
    pub lr_steepest: f64,
    pub lr_valley: f64,
    /// Where the loss starts to fall (the `Onset` rule before its bounds), if it falls.
    pub lr_onset: Option<f64>,
    /// Whether it stopped early on divergence.
    pub diverged: bool,
}

/// Run the range test on `model` (restored afterwards). `on_step(i, lr, smoothed)` after each step.
pub fn lr_find(
    model: &mut ResNet9,
    split: &Split,
    pipeline: &mut Pipeline,
    norm: Normalization,
    cfg: &TrainConfig,
    lf: &LrFindConfig,
    mut on_step: impl FnMut(usize, f64, f64),
) -> Result<LrFindResult> {
    if lf.steps < 2 || !(lf.start_lr > 0.0 && lf.end_lr > lf.start_lr) {
        return Err(Error::Invalid("the LR range test needs at least 2 steps and 0 < start_lr < end_lr".into()));
    }
    let saved = model.clone();
    let result = run(model, split, pipeline, norm, cfg, lf, &mut on_step);
    *model = saved;
    result
}

fn run(
    model: &mut ResNet9,
    split: &Split,
    pipeline: &mut Pipeline,
    norm: Normalization,
    cfg: &TrainConfig,
    lf: &LrFindConfig,
    on_step: &mut impl FnMut(usize, f64, f64),
) -> Result<LrFindResult> {
    let mut state = SgdState::default();
    let n = cfg.train_len(split);
    let mut points: Vec<(f64, f64, f64)> = Vec::new();
    let (mut avg, mut best) = (0.0, f64::INFINITY);
    let mut diverged = false;
    if n < cfg.batch_size {
        return Err(Error::Invalid(format!("the LR range test needs at least one full batch ({} images), got {n}", cfg.batch_size)));
    }
    let mut step = 0;
    // Cycle through epochs of shuffled, augmented batches (seeded apart from training's).
    'outer: for epoch in 0.. {
        let order = data::epoch_order(n, cfg.seed ^ 0x5eed_1f1d, epoch);
        let params = train::epoch_aug_params(cfg.seed ^ 0x5eed_1f1d, epoch, n);
        pipeline.begin_epoch(split, &order, &params)?;
        // Full batches only: a small last batch gives a noisy loss that can fake the minimum.
        for b in 0..n / cfg.batch_size {
            let lr = lf.start_lr * (lf.end_lr / lf.start_lr).powf(step as f64 / (lf.steps - 1) as f64);
            let range = b * cfg.batch_size..(b + 1) * cfg.batch_size;
            let batch = pipeline.train_batch(split, &order, &params, range, norm)?;
            let loss = match train::train_step(model, &mut state, batch, lr, cfg) {
                Ok(r) => r.loss,
                Err(Error::Training(_)) => {
                    diverged = true;
                    break 'outer;
                }
                Err(e) => return Err(e),
            };
            avg = lf.beta * avg + (1.0 - lf.beta) * loss;
            let smooth = avg / (1.0 - lf.beta.powi(step as i32 + 1));
            points.push((lr, loss, smooth));
            on_step(step, lr, smooth);
            best = best.min(smooth);
            step += 1;
            if smooth > lf.diverge * best {
                diverged = true;
                break 'outer;
            }
            if step == lf.steps {
                break 'outer;
            }
        }
    }
    let (lr_at_minimum, _) = suggest(&points, LrRule::Minimum)?;
    let (lr_steepest, _) = suggest(&points, LrRule::Steepest)?;
    let (lr_valley, _) = suggest(&points, LrRule::Valley)?;
    let (lr_max, tenth) = suggest(&points, lf.rule)?;
    let lr_onset = onset(&points);
    let lr_min = match lf.min_rule {
        LrMinRule::Tenth => tenth,
        LrMinRule::Onset => lr_min_at_onset(lr_onset, lr_max),
    };
    Ok(LrFindResult { points, lr_max, lr_min, lr_at_minimum, lr_steepest, lr_valley, lr_onset, diverged })
}

/// The first LR at which the smoothed loss of `(lr, raw, smoothed)` points has made
/// `ONSET_FRACTION` of its fall from its start to its minimum; `None` if it does not fall.
pub fn onset(points: &[(f64, f64, f64)]) -> Option<f64> {
    let finite: Vec<(f64, f64)> = points.iter().filter(|p| p.2.is_finite() && p.0 > 0.0).map(|p| (p.0, p.2)).collect();
    if finite.len() <= ONSET_BASE {
        return None;
    }
    let start = finite[..ONSET_BASE].iter().map(|p| p.1).sum::<f64>() / ONSET_BASE as f64;
    let min = finite.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    if min >= start {
        return None;
    }
    let threshold = start - ONSET_FRACTION * (start - min);
    finite[ONSET_BASE..].iter().find(|p| p.1 < threshold).map(|p| p.0)
}

/// LRMIN by the `Onset` rule: the onset kept within `[lr_max / 100, lr_max / 10]`, or
/// `lr_max / 10` without one.
pub fn lr_min_at_onset(onset: Option<f64>, lr_max: f64) -> f64 {
    onset.map_or(lr_max / 10.0, |lr| lr.clamp(lr_max / 100.0, lr_max / 10.0))
}

/// A suggestion rule (see the module doc) applied to `(lr, raw, smoothed)` points:
/// `(lr_max, lr_min)`.
pub fn suggest(points: &[(f64, f64, f64)], rule: LrRule) -> Result<(f64, f64)> {
    let finite: Vec<(f64, f64)> = points.iter().filter(|p| p.2.is_finite() && p.0 > 0.0).map(|p| (p.0, p.2)).collect();
    let (imin, _) = finite
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .ok_or_else(|| Error::Training("the LR range test produced no finite loss".into()))?;
    let lr_max = match rule {
        LrRule::Minimum => finite[imin].0,
        LrRule::Steepest => {
            // d smooth / d ln(lr) by central differences, over the points up to the minimum.
            let slope = |i: usize| {
                let (a, b) = (i.saturating_sub(SLOPE_SPAN), (i + SLOPE_SPAN).min(imin));
                if b <= a { f64::INFINITY } else { (finite[b].1 - finite[a].1) / (finite[b].0.ln() - finite[a].0.ln()) }
            };
            let i = (0..=imin).min_by(|&a, &b| slope(a).total_cmp(&slope(b))).unwrap_or(imin);
            finite[i].0
        }
        LrRule::Valley => {
            let losses: Vec<f64> = finite.iter().map(|p| p.1).collect();
            let (start, len) = longest_fall(&losses);
            finite[start + len / 3 + len / 6].0
        }
    };
    Ok((lr_max, lr_max / 10.0))
}

/// The longest decreasing subsequence of `v` (strictly), as (index of its first point, its
/// span in points: last index − first index). O(n²), n ≤ a few hundred.
fn longest_fall(v: &[f64]) -> (usize, usize) {
    // run[i]: length of the longest decreasing subsequence ending at i; first[i]: where it starts.
    let mut run = vec![1usize; v.len()];
    let mut first: Vec<usize> = (0..v.len()).collect();
    let mut best = 0;
    for i in 0..v.len() {
        for j in 0..i {
            if v[i] < v[j] && run[j] + 1 > run[i] {
                run[i] = run[j] + 1;
                first[i] = first[j];
            }
        }
        if run[i] > run[best] {
            best = i;
        }
    }
    if v.is_empty() {
        return (0, 0);
    }
    (first[best], best - first[best])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valley_rule_lands_inside_the_longest_fall() {
        // Flat, then a fall from lr = 1e-2 to lr = 1 (with noise that breaks plain monotonicity),
        // then a rise: the valley point is inside the fall and below the minimum. (A plateau that
        // keeps falling slightly would count as part of the valley: the rule's known bias.)
        let pts: Vec<(f64, f64, f64)> = (0..101)
            .map(|i| (i, 1e-4 * 1e5f64.powf(i as f64 / 100.0)))
            .map(|(i, lr)| {
                let x = lr.log10();
                let base = if x < -2.0 { 2.3 } else if x < 0.0 { 2.3 - 0.8 * (x + 2.0) } else { 0.7 + 2.0 * x };
                let noise = if i % 7 == 3 { 0.01 } else { 0.0 };
                (lr, 0.0, base + noise)
            })
            .collect();
        let (valley, low) = suggest(&pts, LrRule::Valley).unwrap();
        let (at_min, _) = suggest(&pts, LrRule::Minimum).unwrap();
        assert!(valley > 1e-2 && valley < at_min, "valley at {valley}, minimum at {at_min}");
        assert!((low - valley / 10.0).abs() < 1e-15);
        assert_eq!(longest_fall(&[3.0, 1.0, 2.0, 0.5, 0.4]), (0, 4));
        assert_eq!(longest_fall(&[]), (0, 0));
    }

    #[test]
    fn steepest_rule_finds_the_fastest_fall_even_without_an_upturn() {
        // A loss that falls like a logistic step centred at lr = 0.2 and stays flat to the end of
        // the range: the minimum rule picks (nearly) the last point, the steepest rule the centre.
        let pts: Vec<(f64, f64, f64)> = (0..101)
            .map(|i| 1e-4 * 1e5f64.powf(i as f64 / 100.0))
            .map(|lr| (lr, 0.0, 2.3 - 1.0 / (1.0 + (-(lr.ln() - 0.2f64.ln()) * 2.0).exp()) - 1e-3 * lr.ln()))
            .collect();
        let (at_min, _) = suggest(&pts, LrRule::Minimum).unwrap();
        let (steep, low) = suggest(&pts, LrRule::Steepest).unwrap();
        assert!(at_min > 5.0, "{at_min}");
        assert!((steep / 0.2).ln().abs() < 0.2, "steepest at {steep}, expected about 0.2");
        assert!((low - steep / 10.0).abs() < 1e-12);
    }

    /// The smoothed loss is flat (with noise) up to LR 1e-3, then falls linearly in ln(lr) by
    /// 1.0 up to LR 1 and turns up: a tenth of the fall is made at LR 1e-3 · 1000^0.1 ≈ 2.0e-3.
    #[test]
    fn onset_is_where_the_loss_starts_to_fall_and_lr_min_stays_within_its_bounds() {
        let pts: Vec<(f64, f64, f64)> = (0..121)
            .map(|i| (i, 1e-5 * 1e6f64.powf(i as f64 / 120.0)))
            .map(|(i, lr)| {
                let t = (lr.ln() - 1e-3f64.ln()) / (1.0f64.ln() - 1e-3f64.ln());
                let base = if t < 0.0 { 2.3 } else if t <= 1.0 { 2.3 - t } else { 1.3 + (t - 1.0) * 3.0 };
                let noise = if i % 5 == 2 { 0.004 } else { -0.001 };
                (lr, 0.0, base + noise)
            })
            .collect();
        let at = onset(&pts).unwrap();
        assert!((at / 2.0e-3).ln().abs() < 0.15, "onset at {at}, expected about 2.0e-3");
        let (lr_max, _) = suggest(&pts, LrRule::Minimum).unwrap();
        assert!((lr_max - 1.0).abs() < 0.15, "{lr_max}");
        assert!((lr_min_at_onset(Some(at), lr_max) - lr_max / 100.0).abs() < 1e-12, "an onset below LRMAX/100 is raised to it");
        assert!((lr_min_at_onset(Some(0.05), 1.0) - 0.05).abs() < 1e-12, "an onset inside the bounds is kept");
        assert!((lr_min_at_onset(Some(0.5), 1.0) - 0.1).abs() < 1e-12, "an onset above LRMAX/10 is lowered to it");
        // A loss that never falls has no onset: LRMIN is a tenth of LRMAX.
        let rising: Vec<(f64, f64, f64)> = (0..20).map(|i| (1e-3 * 1.5f64.powi(i), 0.0, 2.3 + 0.01 * i as f64)).collect();
        assert_eq!(onset(&rising), None);
        assert!((lr_min_at_onset(None, 0.4) - 0.04).abs() < 1e-15);
    }

    #[test]
    fn suggestion_is_the_minimum_and_a_tenth_of_it() {
        // A synthetic U-shaped curve with its minimum at lr = 1.
        let pts: Vec<(f64, f64, f64)> =
            (0..50).map(|i| 10f64.powf(-3.0 + i as f64 * 0.1)).map(|lr| (lr, 0.0, (lr.log10()).powi(2) + 1.0)).collect();
        let (max, min) = suggest(&pts, LrRule::Minimum).unwrap();
        assert!((max - 1.0).abs() < 1e-9, "{max}");
        assert!((min - 0.1).abs() < 1e-12);
        assert!(suggest(&[(0.1, f64::NAN, f64::NAN)], LrRule::Minimum).is_err());
    }
}
