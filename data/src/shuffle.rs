//! The order of the training records in each epoch.

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// A permutation of `0..n`, different for every epoch and the same for the same
/// `(seed, epoch)` on every run and machine (ChaCha8, a portable generator).
/// Batches are consecutive chunks of it; the last partial batch is kept
/// (50,000 images in batches of 512: 97 full batches and one of 336).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // An independent stream per epoch: no epoch replays another's order.
    rng.set_stream(epoch as u64);
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_deterministic_permutation_that_changes_per_epoch() {
        let a = epoch_order(50_000, 7, 0);
        assert_eq!(a, epoch_order(50_000, 7, 0));
        let mut sorted = a.clone();
        sorted.sort();
        assert!(sorted.iter().enumerate().all(|(i, &v)| v as usize == i));
        assert_ne!(a, epoch_order(50_000, 7, 1));
        assert_ne!(a, epoch_order(50_000, 8, 0));
        // Shuffled: few fixed points (expected 1 for a random permutation).
        assert!(a.iter().enumerate().filter(|(i, v)| **v as usize == *i).count() < 20);
        let batches: Vec<&[u32]> = a.chunks(512).collect();
        assert_eq!(batches.len(), 98);
        assert_eq!(batches[97].len(), 336);
    }
}
