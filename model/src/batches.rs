//! Turning dataset records into input tensors on the CPU: the augmented training
//! batch and the normalised test batch, `[N, 3, 32, 32]` f32, with labels.

use crate::{Error, Result};
use data::Split;
use data::augment::{self, AugParams};
use engine::Tensor;

/// Per-channel normalisation constants (computed from the training split).
#[derive(Clone, Copy, Debug)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The augmented batch of records `indices`, each with its own parameters (one per index,
/// each index a record of `split`, each parameter set valid: else an error, not a panic or a
/// zero image).
pub fn train_batch(split: &Split, indices: &[u32], params: &[AugParams], norm: Normalization) -> Result<(Tensor, Vec<u32>)> {
    check_augmented(split, indices, params)?;
    let mut x = vec![0f32; indices.len() * 3072];
    let mut labels = Vec::with_capacity(indices.len());
    for ((&i, p), out) in indices.iter().zip(params).zip(x.chunks_exact_mut(3072)) {
        augment::augment_into(split.image(i as usize), p, norm.mean, norm.std, out);
        labels.push(split.label(i as usize) as u32);
    }
    Ok((Tensor::new(&[indices.len(), 3, 32, 32], x)?, labels))
}

/// An error unless there is one augmentation parameter set per index, every index is a record
/// of `split`, and every parameter set is valid (`AugParams::is_valid`): what the augmentation
/// reads, on the host here and on the GPU (whose kernel trusts both, `ops::augment`).
pub fn check_augmented(split: &Split, indices: &[u32], params: &[AugParams]) -> Result<()> {
    if indices.len() != params.len() {
        return Err(Error::Invalid(format!("{} record indices and {} augmentation parameter sets", indices.len(), params.len())));
    }
    if let Some(&i) = indices.iter().find(|&&i| i as usize >= split.len()) {
        return Err(Error::Invalid(format!("record index {i} outside the split of {}", split.len())));
    }
    if let Some(p) = params.iter().find(|p| !p.is_valid()) {
        return Err(Error::Invalid(format!("augmentation values {p:?} outside their range (crop corner 0..=8, flip 0 or 1)")));
    }
    Ok(())
}

/// The normalised (not augmented) batch of records `start..end`; with `flip`, every image
/// mirrored horizontally (each row of 32 pixels reversed: flip test-time augmentation).
pub fn eval_batch(split: &Split, start: usize, end: usize, norm: Normalization, flip: bool) -> Result<(Tensor, Vec<u32>)> {
    if start > end || end > split.len() {
        return Err(Error::Invalid(format!("test batch {start}..{end} outside the split of {}", split.len())));
    }
    let mut x = vec![0f32; (end - start) * 3072];
    let mut labels = Vec::with_capacity(end - start);
    for (i, out) in (start..end).zip(x.chunks_exact_mut(3072)) {
        augment::normalize_into(split.image(i), norm.mean, norm.std, out);
        if flip {
            out.chunks_exact_mut(32).for_each(<[f32]>::reverse);
        }
        labels.push(split.label(i) as u32);
    }
    Ok((Tensor::new(&[end - start, 3, 32, 32], x)?, labels))
}

/// Number of rows of `logits` `[N, K]` whose largest entry is at the label, and the argmax of
/// each row: the first maximum on ties, and a NaN never wins (as `count_correct` of
/// `ptx/reduce.cu` decides, so host and device counts agree).
pub fn count_correct(logits: &Tensor, labels: &[u32]) -> (usize, Vec<u32>) {
    let k = logits.shape()[1];
    let v = logits.to_f64_vec();
    let preds: Vec<u32> = v.chunks_exact(k).map(argmax_first).collect();
    let correct = preds.iter().zip(labels).filter(|(p, l)| p == l).count();
    (correct, preds)
}

/// The index of the first largest entry of `row` (entries compared with `>`, so a NaN never
/// replaces the best so far); 0 for an empty row.
fn argmax_first(row: &[f64]) -> u32 {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate().skip(1) {
        if v > row[best] {
            best = j;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mismatched or out-of-range inputs are errors, not panics or zero images.
    #[test]
    fn bad_batch_requests_are_errors() {
        let dir = std::env::var_os("CIFAR10_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cifar10"));
        let ds = data::Cifar10::open(&dir).unwrap();
        let norm = Normalization { mean: [0.5; 3], std: [0.25; 3] };
        let p = AugParams::identity();
        let n = ds.test.len() as u32;
        let err = |r: Result<(Tensor, Vec<u32>)>| r.expect_err("accepted").to_string();
        assert!(err(train_batch(&ds.test, &[0, 1], &[p], norm)).contains("2 record indices and 1 augmentation"));
        assert!(err(train_batch(&ds.test, &[n], &[p], norm)).contains(&format!("record index {n} outside")));
        assert!(err(train_batch(&ds.test, &[0], &[AugParams { crop_x: 9, ..p }], norm)).contains("outside their range"));
        assert!(err(eval_batch(&ds.test, 5, 4, norm, false)).contains("outside the split"));
        assert!(err(eval_batch(&ds.test, 0, n as usize + 1, norm, false)).contains("outside the split"));
        let (x, labels) = train_batch(&ds.test, &[0, n - 1], &[p, p], norm).unwrap();
        assert_eq!((x.shape(), labels.len()), (&[2, 3, 32, 32][..], 2));
    }

    /// Ties go to the first maximum and NaN never wins, as on the device.
    #[test]
    fn argmax_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax_first(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax_first(&[3.0, 3.0]), 0);
        assert_eq!(argmax_first(&[1.0, f64::NAN, 4.0, 4.0]), 2);
        assert_eq!(argmax_first(&[f64::NAN, 9.0]), 0);
        let logits = Tensor::new(&[2, 3], vec![1.0f32, 1.0, 0.0, 0.0, 2.0, 2.0]).unwrap();
        assert_eq!(count_correct(&logits, &[0, 2]), (1, vec![0, 1]));
    }
}
