//! Turning dataset records into input tensors on the CPU: the augmented training
//! batch and the normalised test batch, `[N, 3, 32, 32]` f32, with labels.

use crate::Result;
use data::Split;
use data::augment::{self, AugParams};
use engine::Tensor;

/// Per-channel normalisation constants (computed from the training split).
#[derive(Clone, Copy, Debug)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The augmented batch of records `indices`, each with its own parameters.
pub fn train_batch(split: &Split, indices: &[u32], params: &[AugParams], norm: Normalization) -> Result<(Tensor, Vec<u32>)> {
    let mut x = vec![0f32; indices.len() * 3072];
    let mut labels = Vec::with_capacity(indices.len());
    for ((&i, p), out) in indices.iter().zip(params).zip(x.chunks_exact_mut(3072)) {
        augment::augment_into(split.image(i as usize), p, norm.mean, norm.std, out);
        labels.push(split.label(i as usize) as u32);
    }
    Ok((Tensor::new(&[indices.len(), 3, 32, 32], x)?, labels))
}

/// The normalised (not augmented) batch of records `start..end`.
pub fn eval_batch(split: &Split, start: usize, end: usize, norm: Normalization) -> Result<(Tensor, Vec<u32>)> {
    let mut x = vec![0f32; (end - start) * 3072];
    let mut labels = Vec::with_capacity(end - start);
    for (i, out) in (start..end).zip(x.chunks_exact_mut(3072)) {
        augment::normalize_into(split.image(i), norm.mean, norm.std, out);
        labels.push(split.label(i) as u32);
    }
    Ok((Tensor::new(&[end - start, 3, 32, 32], x)?, labels))
}

/// Number of rows of `logits` `[N, K]` whose largest entry is at the label, and the argmax of each row.
pub fn count_correct(logits: &Tensor, labels: &[u32]) -> (usize, Vec<u32>) {
    let k = logits.shape()[1];
    let v = logits.to_f64_vec();
    let preds: Vec<u32> = v
        .chunks_exact(k)
        .map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap_or(0))
        .collect();
    let correct = preds.iter().zip(labels).filter(|(p, l)| p == l).count();
    (correct, preds)
}
