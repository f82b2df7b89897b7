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
//!   is where the loss stops falling): `lr_max` = the LR of the smoothed loss's minimum before
//!   its first upturn, the first point where it rises `UPTURN_RISE` (2%) above its lowest so
//!   far, once it has fallen `UPTURN_MIN_FALL` (5%) below its start; without such an upturn,
//!   the lowest point of the range. If that minimum lies in the last `NO_UPTURN_TAIL` of the
//!   points and the test did not stop on divergence (the smoothed loss `diverge` times its
//!   minimum; a non-finite loss does not count: the points before it may still be falling),
//!   the loss never turned up inside the range: the minimum only marks the range's end, not where the loss stops falling, and the
//!   `Steepest` rule's LR is used instead (the log says so). On an H200 (2026-11-26) a
//!   half-width network on 10,000 images had its smoothed minimum at 10, the range's end; the
//!   one-cycle up to LR 10 ended at 19% test accuracy after 3 epochs, where the full-width runs
//!   found their minimum at 0.34 to 0.61.
//!   Why the first upturn, not the lowest point: with batch norm and the 0.125 logit scale the
//!   full-width network's loss does not diverge by LR 10. It bottoms out near LR 0.3-0.5, rises
//!   a few percent, and may sink again near the range's end. On an H100 (2026-11-27) 2 of 9
//!   recipe runs had their lowest point at LR 10 that way, after a 3.5% rise from a minimum at
//!   0.34 and 0.49; the lowest-point rule then fell back to `Steepest`, LRMAX 0.067 and 0.085,
//!   and those runs ended at 90.16% and 90.53% where the seven others ended at 90.25-91.29%
//!   (`bench/results/h100-2026-11-27/build-7b19d00/`). Of the 30 full-width curves recorded on
//!   GPUs until then, the first-upturn rule picks the lowest point's LR in the other 28 (a 1%
//!   rise would have taken noise for an upturn in one more, a 5% rise missed both).
//! - `Steepest` (fastai's "steepest descent" suggestion): `lr_max` = the LR where the
//!   smoothed loss falls fastest per unit of `ln lr`, before its minimum; the slope is a
//!   central difference over ±`SLOPE_SPAN` points. When the loss never turns up inside the
//!   range (e.g. with a 0.125 logit scale, where the minimum rule picks the range's end),
//!   this still lands where training is fastest.
//! - `Valley` (after fastai's default suggestion since v2.4, `fastai.callback.schedule.valley`):
//!   the longest stretch of points over which the smoothed loss keeps falling (the longest
//!   decreasing subsequence, which tolerates noise), and the point half-way through its middle
//!   third: `first + ⌊S/3⌋ + ⌊S/6⌋`, where `first` is the subsequence's first point and `S`
//!   its span (last index − first index). fastai counts back the subsequence's length L from
//!   its last point instead (`last − L`, one point before `first` for a run without gaps), so
//!   its pick can lie a point or two earlier, more where the subsequence skips noisy points.
//!   It lies between the steepest point and the minimum.
//!
//! Rules for LRMIN, the LR the one-cycle starts from and returns to (`LrMinRule`):
//! - `Tenth`: `lr_min = lr_max / 10`.
//! - `Onset` (Smith 2015, §3.3: the cycle's lower bound is where the loss starts to fall):
//!   on the raw losses averaged over a centred window of ±`ONSET_HALF_WINDOW` points (`c_i`;
//!   centred, so unlike the exponential average it does not lag behind the LR), the first
//!   LR at which `c` has made `ONSET_FRACTION` of its fall from its start `c_h` (h = the
//!   half-window: the first full window) to its minimum, searching from the start to the
//!   minimum; kept within `[lr_max / 100, lr_max / 10]`. When the fall is less than
//!   `ONSET_MIN_FALL` of the start (noise, or no fall), there is no onset and `lr_min =
//!   lr_max / 10`. (A loss that falls from the first steps has its onset a tenth of the way
//!   along its fall.)
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
    Tenth,
    /// The default since 2026-11-26: over 24 epochs it beat `Tenth` on every seed of a CPU
    /// comparison (bench/results/cpu-lr-min-24ep-2026-11-25.md), and at full width the
    /// one-cycle then ends near LRMAX/100 (bench/lr_range_torch.py --from-csv on the
    /// full-width curve), nearer Page's schedule for this network, which ends at 0. Not yet
    /// measured at full width on a GPU.
    #[default]
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

/// The `Onset` rule (see the module doc): the share of the fall that marks the onset, the
/// half-width of the centred average, and the smallest fall (relative to the start) that
/// counts as one.
const ONSET_FRACTION: f64 = 0.1;
const ONSET_HALF_WINDOW: usize = 5;
const ONSET_MIN_FALL: f64 = 0.05;

/// Half-width, in points, of the central difference of the `Steepest` rule.
const SLOPE_SPAN: usize = 3;

/// The `Minimum` rule's guard (see the module doc): a minimum in this last share of the
/// points, without divergence, means the loss never turned up inside the range.
const NO_UPTURN_TAIL: f64 = 0.05;

/// The `Minimum` rule's upturn (see the module doc): a rise of this share above the lowest
/// smoothed loss so far, counted once the loss has fallen `UPTURN_MIN_FALL` below its start.
const UPTURN_RISE: f64 = 0.02;
const UPTURN_MIN_FALL: f64 = 0.05;

/// The index of the `Minimum` rule's point in `smooth` (finite smoothed losses in LR order):
/// the lowest point before the first upturn, else the lowest point; `None` when empty.
fn minimum_index(smooth: &[f64]) -> Option<usize> {
    let start = *smooth.first()?;
    let mut best = 0;
    for (i, &s) in smooth.iter().enumerate() {
        if s < smooth[best] {
            best = i;
        } else if smooth[best] <= (1.0 - UPTURN_MIN_FALL) * start && s > (1.0 + UPTURN_RISE) * smooth[best] {
            return Some(best);
        }
    }
    smooth.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i)
}

/// What the range test measured and suggests.
#[derive(Clone, Debug)]
pub struct LrFindResult {
    /// (lr, raw loss, smoothed loss) per step run.
    pub points: Vec<(f64, f64, f64)>,
    pub lr_max: f64,
    pub lr_min: f64,
    /// The rule LRMAX came from: the configured one, or `Steepest` where `Minimum` was asked
    /// for and the loss never turned up (`no_upturn`).
    pub lr_max_rule: LrRule,
    /// Whether the smoothed loss was still at its lowest at the end of the range (see
    /// [`no_upturn`]).
    pub no_upturn: bool,
    /// The LR of each rule's choice, whichever was used (for the log and the plot).
    pub lr_at_minimum: f64,
    pub lr_steepest: f64,
    pub lr_valley: f64,
    /// Where the loss starts to fall (the `Onset` rule before its bounds), if it falls.
    pub lr_onset: Option<f64>,
    /// Whether it stopped early on divergence.
    pub diverged: bool,
}

/// Refuse a range test that cannot run: fewer than 2 steps, LR bounds out of order, or fewer
/// training images than one full batch. Callers check before they write anything.
pub fn check(lf: &LrFindConfig, cfg: &TrainConfig, split: &Split) -> Result<()> {
    if lf.steps < 2 || !(lf.start_lr > 0.0 && lf.end_lr > lf.start_lr) {
        return Err(Error::Invalid("the LR range test needs at least 2 steps (--lr-find-steps) and 0 < start_lr < end_lr".into()));
    }
    let n = cfg.train_len(split);
    if n < cfg.batch_size {
        return Err(Error::Invalid(format!(
            "the LR range test needs at least one full batch ({} images), got {n}: lower --batch-size, or give --lr-max and --lr-min",
            cfg.batch_size
        )));
    }
    Ok(())
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
    check(lf, cfg, split)?;
    let saved = model.clone_on_device()?;
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
    // Whether it stopped because the smoothed loss rose `diverge` times above its minimum (an
    // upturn), not on a non-finite loss, which can end a falling stretch.
    let mut rose = false;
    let mut step = 0;
    // Cycle through epochs of shuffled, augmented batches (seeded apart from training's).
    'outer: for epoch in 0.. {
        let order = data::epoch_order(n, cfg.seed ^ 0x5eed_1f1d, epoch);
        let params = train::epoch_aug_params(cfg.seed ^ 0x5eed_1f1d, epoch, n, cfg.cutout_inside);
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
                rose = true;
                break 'outer;
            }
            if step == lf.steps {
                break 'outer;
            }
        }
    }
    // A test that diverged within its first tenth (at least 3 points) has no curve to read:
    // its "minimum" would be the range's first LR, whatever the network.
    let needed = (lf.steps / 10).max(3);
    if diverged && points.len() < needed {
        let at = points.last().map_or(lf.start_lr, |p| p.0);
        return Err(Error::Training(format!(
            "the LR range test diverged after {} of its {} steps, at LR {at:.3e}, near the start of its range \
             ({:.0e} -> {:.0e}): no LR can be read from it; check the settings (--out-scale, --width), or give --lr-max and --lr-min",
            points.len(),
            lf.steps,
            lf.start_lr,
            lf.end_lr
        )));
    }
    let (lr_at_minimum, _) = suggest(&points, LrRule::Minimum)?;
    let (lr_steepest, _) = suggest(&points, LrRule::Steepest)?;
    let (lr_valley, _) = suggest(&points, LrRule::Valley)?;
    let no_upturn = no_upturn(&points, rose);
    let lr_max_rule = if lf.rule == LrRule::Minimum && no_upturn { LrRule::Steepest } else { lf.rule };
    let lr_max = match lr_max_rule {
        LrRule::Minimum => lr_at_minimum,
        LrRule::Steepest => lr_steepest,
        LrRule::Valley => lr_valley,
    };
    let lr_onset = onset(&points);
    let lr_min = choose_lr_min(lf.min_rule, lr_max, lr_onset);
    Ok(LrFindResult { points, lr_max, lr_min, lr_max_rule, no_upturn, lr_at_minimum, lr_steepest, lr_valley, lr_onset, diverged })
}

/// Whether the loss never turned up inside the range: the test did not stop on divergence
/// (`diverged`: the smoothed loss rose `diverge` times above its minimum; a non-finite loss
/// does not count, since the last finite point before it may still be falling) and the
/// `Minimum` rule's point (`minimum_index`) is in the last 5% (`NO_UPTURN_TAIL`) of the
/// finite points.
pub fn no_upturn(points: &[(f64, f64, f64)], diverged: bool) -> bool {
    let finite: Vec<f64> = points.iter().filter(|p| p.2.is_finite() && p.0 > 0.0).map(|p| p.2).collect();
    let Some(imin) = minimum_index(&finite) else { return false };
    let tail = ((finite.len() as f64 * NO_UPTURN_TAIL).ceil() as usize).max(1);
    !diverged && imin + tail >= finite.len()
}

/// Where the loss starts to fall (see the module doc: the `Onset` rule before its bounds),
/// from the raw losses of `(lr, raw, smoothed)` points; `None` without a clear fall.
pub fn onset(points: &[(f64, f64, f64)]) -> Option<f64> {
    let finite: Vec<(f64, f64)> = points.iter().filter(|p| p.1.is_finite() && p.0 > 0.0).map(|p| (p.0, p.1)).collect();
    let h = ONSET_HALF_WINDOW;
    if finite.len() < 2 * h + 2 {
        return None;
    }
    // c_i: the mean raw loss over points i-h ..= i+h, for the points with a full window.
    let centred: Vec<(f64, f64)> = (h..finite.len() - h)
        .map(|i| (finite[i].0, finite[i - h..=i + h].iter().map(|p| p.1).sum::<f64>() / (2 * h + 1) as f64))
        .collect();
    let start = centred[0].1;
    let (imin, &(_, min)) = centred.iter().enumerate().min_by(|a, b| a.1.1.total_cmp(&b.1.1))?;
    if start - min < ONSET_MIN_FALL * start.abs() {
        return None;
    }
    let threshold = start - ONSET_FRACTION * (start - min);
    centred[..=imin].iter().find(|p| p.1 < threshold).map(|p| p.0)
}

/// LRMIN by `rule`, given LRMAX and the onset (see the module doc).
pub fn choose_lr_min(rule: LrMinRule, lr_max: f64, onset: Option<f64>) -> f64 {
    match rule {
        LrMinRule::Tenth => lr_max / 10.0,
        LrMinRule::Onset => lr_min_at_onset(onset, lr_max),
    }
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
    let smooth: Vec<f64> = finite.iter().map(|p| p.1).collect();
    let imin = minimum_index(&smooth).ok_or_else(|| Error::Training("the LR range test produced no finite loss".into()))?;
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
// Tolerances: a rule's pick is compared with the LR of the point it should pick, relative
// 1e-12 (the LR grid's f64 rounding is ~1e-16; neighbouring points differ by a factor of 1.1
// or more), and 1e-6 against LRs read from a recorded CSV (7 significant digits).
mod tests {
    use super::*;

    /// `n` points from LR 1e-4 to 10 whose smoothed loss is `f(i)`.
    fn curve(n: usize, f: impl Fn(usize) -> f64) -> Vec<(f64, f64, f64)> {
        (0..n).map(|i| (1e-4 * 1e5f64.powf(i as f64 / (n - 1) as f64), f(i), f(i))).collect()
    }

    #[test]
    fn a_minimum_at_the_range_end_without_divergence_is_no_upturn() {
        // Falls all the way to the last point: no upturn, unless the test stopped on divergence.
        let falling = curve(100, |i| 3.0 - 0.02 * i as f64);
        assert!(no_upturn(&falling, false));
        assert!(!no_upturn(&falling, true));
        // Minimum at point 96 of 100 (inside the last 5): still none; at point 80: an upturn.
        let late = curve(100, |i| (i as f64 - 96.0).powi(2));
        assert!(no_upturn(&late, false));
        let turned = curve(100, |i| (i as f64 - 80.0).powi(2));
        assert!(!no_upturn(&turned, false));
        assert!(!no_upturn(&[], false));
    }

    /// The `(lr, raw, smoothed)` points of an `lr_find.csv` (header `lr,loss,smoothed_loss`).
    fn recorded(csv: &str) -> Vec<(f64, f64, f64)> {
        csv.lines()
            .skip(1)
            .map(|l| {
                let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
                (v[0], v[1], v[2])
            })
            .collect()
    }

    #[test]
    fn the_minimum_is_the_one_before_the_first_upturn() {
        // Falls to 2.0 at point 60, rises to 2.08 (4%) by point 75, then sinks to 1.9 at the
        // range's end: the first minimum, not the last point (which would be "no upturn").
        let dip = curve(100, |i| match i {
            0..=60 => 3.0 - i as f64 / 60.0,
            61..=75 => 2.0 + 0.08 * (i - 60) as f64 / 15.0,
            _ => 2.08 - 0.18 * (i - 75) as f64 / 24.0,
        });
        let (at_min, _) = suggest(&dip, LrRule::Minimum).unwrap();
        assert!((at_min / dip[60].0 - 1.0).abs() < 1e-12, "{at_min}");
        assert!(!no_upturn(&dip, false));
        // A rise of 1.5% is not an upturn: the lowest point stays the range's end.
        let shallow = curve(100, |i| match i {
            0..=60 => 3.0 - i as f64 / 60.0,
            61..=75 => 2.0 + 0.03 * (i - 60) as f64 / 15.0,
            _ => 2.03 - 0.13 * (i - 75) as f64 / 24.0,
        });
        assert!(no_upturn(&shallow, false));
        // Nor is a rise before the loss has fallen 5% below its start (noise in the first steps).
        let early = curve(100, |i| match i {
            0..=5 => 3.0 + 0.02 * i as f64,
            6..=60 => 3.1 - 1.1 * (i - 5) as f64 / 55.0,
            _ => 2.0 + 0.5 * (i - 60) as f64 / 39.0,
        });
        let (at_min, _) = suggest(&early, LrRule::Minimum).unwrap();
        assert!((at_min / early[60].0 - 1.0).abs() < 1e-12, "{at_min}");
    }

    /// Two recipe runs on an H100 (2026-11-27, full width, batch 512): seed 60's smoothed loss
    /// fell to 2.0017 at LR 0.343, rose 3.5% by LR 1.6 and sank to 1.9954 at LR 10, where the
    /// lowest-point rule saw no upturn and fell back to the steepest fall (LRMAX 0.067; the run
    /// ended at 90.16%); seed 62's is the usual shape, with its minimum at 0.433.
    #[test]
    fn recorded_curves_get_the_minimum_before_their_upturn() {
        let seed60 = recorded(include_str!("../../bench/results/h100-2026-11-27/build-7b19d00/runs/seed60/lr_find.csv"));
        let seed62 = recorded(include_str!("../../bench/results/h100-2026-11-27/build-7b19d00/runs/seed62/lr_find.csv"));
        assert_eq!((seed60.len(), seed62.len()), (100, 100));
        let (at_min, _) = suggest(&seed60, LrRule::Minimum).unwrap();
        assert!((at_min - 0.3430469).abs() < 1e-6, "{at_min}");
        assert!(!no_upturn(&seed60, false));
        let lowest = seed60.iter().min_by(|a, b| a.2.total_cmp(&b.2)).unwrap().0;
        assert_eq!(lowest, 10.0, "the curve's lowest point is the range's end");
        let (at_min, _) = suggest(&seed62, LrRule::Minimum).unwrap();
        assert!((at_min - 0.4328761).abs() < 1e-6, "{at_min}");
        assert!(!no_upturn(&seed62, false));
    }

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

    /// Raw losses on a grid of 20 points per decade from LR 1e-5 (point i at 1e-5 · 10^(i/20)):
    /// 2.3 up to point 40 (LR 1e-3), then falling by 1/60 per point to 1.3 at point 100 (LR 1),
    /// then rising by 0.05 per point. Centred means over 11 points: the start (point 5) is 2.3;
    /// point k in 45..=95 has mean 2.3 − (k − 40)/60; the smallest mean is at point 97,
    /// 1.3 + (36/60 + 0.15)/11 = 1.3682. Threshold 2.3 − 0.1 · 0.9318 = 2.2068: first passed
    /// at point 46 (2.2; point 45 has 2.2167), so the onset is LR 10^-2.7. (A fraction of 0.08
    /// or 0.12 would give point 45 or 47.)
    #[test]
    fn onset_is_where_the_loss_starts_to_fall_and_lr_min_stays_within_its_bounds() {
        let lr = |i: usize| 1e-5 * 10f64.powf(i as f64 / 20.0);
        let raw = |i: usize| match i {
            0..=40 => 2.3,
            41..=100 => 2.3 - (i - 40) as f64 / 60.0,
            _ => 1.3 + 0.05 * (i - 100) as f64,
        };
        // The smoothed column is garbage on purpose: the rule must read the raw losses.
        let pts: Vec<(f64, f64, f64)> = (0..=120).map(|i| (lr(i), raw(i), 9.0 - i as f64)).collect();
        let at = onset(&pts).unwrap();
        assert!((at / lr(46) - 1.0).abs() < 1e-12, "onset at {at}, expected {} (point 46)", lr(46));
        assert!((lr_min_at_onset(Some(at), 1.0) - 0.01).abs() < 1e-12, "an onset below LRMAX/100 is raised to it");
        assert!((lr_min_at_onset(Some(0.05), 1.0) - 0.05).abs() < 1e-12, "an onset inside the bounds is kept");
        assert!((lr_min_at_onset(Some(0.5), 1.0) - 0.1).abs() < 1e-12, "an onset above LRMAX/10 is lowered to it");
        assert!((lr_min_at_onset(None, 0.4) - 0.04).abs() < 1e-15, "no onset: a tenth of LRMAX");
        assert_eq!(choose_lr_min(LrMinRule::Onset, 1.0, Some(0.05)), 0.05);
        assert_eq!(choose_lr_min(LrMinRule::Tenth, 1.0, Some(0.05)), 0.1);
        // Noise of ±0.03 around a flat 2.3 is not a fall (less than 5% of the start).
        let noisy: Vec<(f64, f64, f64)> = (0..=120).map(|i| (lr(i), 2.3 + if i % 3 == 0 { 0.03 } else { -0.03 }, 0.0)).collect();
        assert_eq!(onset(&noisy), None);
        // A loss that only rises has no onset; one that bottoms out in the first window either.
        let rising: Vec<(f64, f64, f64)> = (0..=120).map(|i| (lr(i), 2.3 + 0.01 * i as f64, 0.0)).collect();
        assert_eq!(onset(&rising), None);
        // A loss falling steadily from the first step, flat from point 100: means 2.3 − 0.01·k
        // from 2.25 (point 5), flat at 1.3 from point 105; a tenth of that fall (threshold
        // 2.155) is passed at point 15 (2.15; point 14's 2.16 is not), 0.005 from either side,
        // far from any rounding.
        let falling: Vec<(f64, f64, f64)> = (0..=120).map(|i| (lr(i), 2.3 - 0.01 * i.min(100) as f64, 0.0)).collect();
        assert!((onset(&falling).unwrap() / lr(15) - 1.0).abs() < 1e-12, "{:?}", onset(&falling));
        assert_eq!(onset(&pts[..11]), None, "too few points for one window");
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
