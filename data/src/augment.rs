//! Augmentation and normalisation, the CPU reference.
//!
//! The random parameters of each image are drawn separately ([`AugParams::sample`])
//! from applying them, so the CUDA kernel (`ptx/augment.cu`) can apply the very same
//! parameters and be compared with this code bit for bit.
//!
//! For output channel `c`, row `y`, column `x` (all in `0..32`), with parameters
//! `crop_x, crop_y ∈ 0..=8` (top-left corner of the 32x32 window in the image padded
//! by 4 on every side), `flip ∈ {0, 1}`, `cutout_x, cutout_y ∈ 0..32` (centre of the square):
//!
//! ```text
//! sx = flip ? 31 − x : x                        (horizontal flip of the window)
//! py = y + crop_y,  px = sx + crop_x            (position in the 40x40 padded image)
//! r  = reflect(py − 4),  q = reflect(px − 4)    (reflect padding: reflect(i) = i < 0 ? −i : i > 31 ? 62 − i : i)
//! v  = (img[c·1024 + r·32 + q] / 255 − mean[c]) / std[c]      (f32, in this order)
//! v  = 0  if cutout_y − 4 ≤ y < cutout_y + 4 and cutout_x − 4 ≤ x < cutout_x + 4
//! ```
//!
//! The cutout square is 8x8, clipped at the border, and filled with 0, which is the
//! dataset mean after normalisation. Its centre is uniform over the image (DeVries and
//! Taylor's Cutout: near a border part of the square falls outside, 56.25 pixels cut on average),
//! or with [`AugParams::sample_cutout_inside`] uniform in `4..=28`, so that the whole square is
//! inside (D. Page's Cutout for this network: 64 pixels every time).

use crate::cifar::Split;
use crate::{IMAGE_BYTES, RECORD_BYTES};
use rand::Rng;

/// The random choices for one image. `#[repr(C)]` and `Pod`: uploaded as is, 5 `i32` per image.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AugParams {
    pub crop_x: i32,
    pub crop_y: i32,
    pub flip: i32,
    pub cutout_x: i32,
    pub cutout_y: i32,
}

impl AugParams {
    /// Crop corner uniform in `0..=8` on each axis, flip with probability 1/2, cutout
    /// centre uniform over the image.
    pub fn sample(rng: &mut impl Rng) -> AugParams {
        AugParams {
            crop_x: rng.random_range(0..=8),
            crop_y: rng.random_range(0..=8),
            flip: rng.random_bool(0.5) as i32,
            cutout_x: rng.random_range(0..32),
            cutout_y: rng.random_range(0..32),
        }
    }

    /// As [`AugParams::sample`] (the same draws in the same order), but the cutout centre
    /// uniform in `4..=28` on each axis: the 8x8 square always lies wholly inside the image
    /// (D. Page, "How to Train Your ResNet", myrtle.ai, 2018: its top-left corner in `0..=24`).
    pub fn sample_cutout_inside(rng: &mut impl Rng) -> AugParams {
        AugParams {
            crop_x: rng.random_range(0..=8),
            crop_y: rng.random_range(0..=8),
            flip: rng.random_bool(0.5) as i32,
            cutout_x: rng.random_range(4..=28),
            cutout_y: rng.random_range(4..=28),
        }
    }

    /// No crop offset (the original window), no flip, cutout entirely outside the image.
    pub fn identity() -> AugParams {
        AugParams { crop_x: 4, crop_y: 4, flip: 0, cutout_x: -100, cutout_y: -100 }
    }

    /// Whether the crop corner lies in `0..=8` on both axes and `flip` is 0 or 1: the values
    /// for which the crop reads inside the padded image (the cutout centre may be anywhere).
    /// The GPU kernel does not check them; the pipeline does, before it uploads them.
    pub fn is_valid(&self) -> bool {
        (0..=8).contains(&self.crop_x) && (0..=8).contains(&self.crop_y) && (self.flip == 0 || self.flip == 1)
    }
}

/// Reflect padding: index `i ∈ −4..36` into `0..32`, mirroring at the border without repeating it.
fn reflect(i: i32) -> usize {
    (if i < 0 {
        -i
    } else if i > 31 {
        62 - i
    } else {
        i
    }) as usize
}

/// Augment one CHW image (3072 bytes) into `out` (3072 f32), as in the module doc.
pub fn augment_into(image: &[u8], p: &AugParams, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    assert!(image.len() == IMAGE_BYTES && out.len() == IMAGE_BYTES, "augment_into takes one 3x32x32 image");
    for c in 0..3 {
        for y in 0..32i32 {
            for x in 0..32i32 {
                let sx = if p.flip != 0 { 31 - x } else { x };
                let r = reflect(y + p.crop_y - 4);
                let q = reflect(sx + p.crop_x - 4);
                let in_cutout = p.cutout_y - 4 <= y && y < p.cutout_y + 4 && p.cutout_x - 4 <= x && x < p.cutout_x + 4;
                let v = if in_cutout { 0.0 } else { (image[c * 1024 + r * 32 + q] as f32 / 255.0 - mean[c]) / std[c] };
                out[c * 1024 + y as usize * 32 + x as usize] = v;
            }
        }
    }
}

/// Normalise one CHW image without augmentation (the test set): `(v/255 − mean[c]) / std[c]`.
pub fn normalize_into(image: &[u8], mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    assert!(image.len() == IMAGE_BYTES && out.len() == IMAGE_BYTES, "normalize_into takes one 3x32x32 image");
    for (i, (o, &b)) in out.iter_mut().zip(image).enumerate() {
        let c = i / 1024;
        *o = (b as f32 / 255.0 - mean[c]) / std[c];
    }
}

/// Per-channel mean and (population) standard deviation of the pixel values of a
/// split, on the `[0, 1]` scale. Exact integer sums, so the order does not matter.
pub fn channel_stats(split: &Split) -> ([f32; 3], [f32; 3]) {
    let (mut sum, mut sq) = ([0u64; 3], [0u64; 3]);
    for bytes in split.files() {
        for rec in bytes.chunks_exact(RECORD_BYTES) {
            for (c, plane) in rec[1..].chunks_exact(1024).enumerate() {
                for &b in plane {
                    sum[c] += b as u64;
                    sq[c] += (b as u64) * (b as u64);
                }
            }
        }
    }
    let n = (split.len() * 1024) as f64;
    let (mut mean, mut std) = ([0f32; 3], [0f32; 3]);
    for c in 0..3 {
        let m = sum[c] as f64 / n / 255.0;
        let var = sq[c] as f64 / n / (255.0 * 255.0) - m * m;
        mean[c] = m as f32;
        std[c] = var.max(0.0).sqrt() as f32;
    }
    (mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cifar::{Cifar10, tests::real_dir};
    use rand::SeedableRng;

    const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
    const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

    fn data() -> Cifar10 {
        Cifar10::open(&real_dir()).unwrap()
    }

    fn run(img: &[u8], p: &AugParams) -> Vec<f32> {
        let mut out = vec![0f32; 3072];
        augment_into(img, p, MEAN, STD, &mut out);
        out
    }

    #[test]
    fn channel_statistics_match_the_published_values() {
        let (mean, std) = channel_stats(&data().train);
        // The shared copy is JPEG-derived (SOURCE.md): the std is 0.001-0.002 below the
        // published values, so 0.003 separates "right statistic" from "wrong formula".
        for c in 0..3 {
            assert!((mean[c] - MEAN[c]).abs() < 0.003, "mean {mean:?}");
            assert!((std[c] - STD[c]).abs() < 0.003, "std {std:?}");
        }
    }

    /// The padding rule pinned by hand (PyTorch's `padding_mode="reflect"`, which does not
    /// repeat the edge pixel), not by the function under test.
    #[test]
    fn reflection_maps_the_padding_back_without_repeating_the_edge() {
        let cases = [(-4, 4), (-3, 3), (-1, 1), (0, 0), (17, 17), (31, 31), (32, 30), (33, 29), (35, 27)];
        for (i, want) in cases {
            assert_eq!(reflect(i), want, "reflect({i})");
        }
        // The crop at the padded image's top-left corner: output (0, 0) is original (4, 4),
        // (0, 4) is original (4, 0), (4, 4) is (0, 0).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let img: Vec<u8> = (0..3072).map(|_| rng.random::<u8>()).collect();
        let p = AugParams { crop_x: 0, crop_y: 0, flip: 0, cutout_x: -100, cutout_y: -100 };
        let out = run(&img, &p);
        let px = |c: usize, y: usize, x: usize| (img[c * 1024 + y * 32 + x] as f32 / 255.0 - MEAN[c]) / STD[c];
        for c in 0..3 {
            assert_eq!(out[c * 1024], px(c, 4, 4));
            assert_eq!(out[c * 1024 + 4], px(c, 4, 0));
            assert_eq!(out[c * 1024 + 4 * 32 + 4], px(c, 0, 0));
        }
    }

    #[test]
    fn only_crops_inside_the_padding_and_flips_of_0_or_1_are_valid() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for _ in 0..200 {
            assert!(AugParams::sample(&mut rng).is_valid());
            assert!(AugParams::sample_cutout_inside(&mut rng).is_valid());
        }
        assert!(AugParams::identity().is_valid());
        let ok = AugParams { crop_x: 8, crop_y: 0, flip: 1, cutout_x: -100, cutout_y: 40 };
        assert!(ok.is_valid());
        assert!(!AugParams { crop_x: 9, ..ok }.is_valid());
        assert!(!AugParams { crop_y: -1, ..ok }.is_valid());
        assert!(!AugParams { flip: 2, ..ok }.is_valid());
    }

    #[test]
    fn identity_parameters_give_the_normalised_original() {
        let ds = data();
        let img = ds.train.image(123);
        let mut want = vec![0f32; 3072];
        normalize_into(img, MEAN, STD, &mut want);
        assert_eq!(run(img, &AugParams::identity()), want);
    }

    #[test]
    fn every_pixel_is_the_padded_image_at_the_window_position() {
        let ds = data();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for i in 0..20 {
            let img = ds.train.image(i * 977);
            let p = AugParams { cutout_x: -100, cutout_y: -100, ..AugParams::sample(&mut rng) };
            let out = run(img, &p);
            // Build the 40x40 reflect-padded image explicitly and read the window from it.
            for c in 0..3 {
                let mut padded = [[0u8; 40]; 40];
                for (py, row) in padded.iter_mut().enumerate() {
                    for (px, v) in row.iter_mut().enumerate() {
                        let (r, q) = (reflect(py as i32 - 4), reflect(px as i32 - 4));
                        *v = img[c * 1024 + r * 32 + q];
                    }
                }
                for y in 0..32 {
                    for x in 0..32 {
                        let wx = if p.flip == 1 { 31 - x } else { x };
                        let b = padded[y + p.crop_y as usize][wx + p.crop_x as usize];
                        let want = (b as f32 / 255.0 - MEAN[c]) / STD[c];
                        assert_eq!(out[c * 1024 + y * 32 + x], want, "{p:?} c{c} y{y} x{x}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_flip_mirrors_the_unflipped_output() {
        let ds = data();
        let img = ds.train.image(77);
        let p = AugParams { crop_x: 2, crop_y: 7, flip: 0, cutout_x: -100, cutout_y: -100 };
        let (a, b) = (run(img, &p), run(img, &AugParams { flip: 1, ..p }));
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    assert_eq!(a[c * 1024 + y * 32 + x], b[c * 1024 + y * 32 + 31 - x]);
                }
            }
        }
        assert_ne!(a, b);
    }

    /// The cutout square's zeros: 8x8 inside, clipped at the borders.
    #[test]
    fn cutout_is_an_8x8_square_of_zeros_clipped_at_the_border() {
        let ds = data();
        let img = ds.train.image(4242);
        let base = run(img, &AugParams::identity());
        for (cx, cy, side_x, side_y) in [(16, 16, 8, 8), (0, 0, 4, 4), (31, 10, 5, 8), (2, 30, 6, 6)] {
            let p = AugParams { cutout_x: cx, cutout_y: cy, ..AugParams::identity() };
            let out = run(img, &p);
            let mut changed = 0;
            for c in 0..3 {
                for y in 0..32i32 {
                    for x in 0..32i32 {
                        let i = (c * 1024 + y * 32 + x) as usize;
                        let inside = (cy - 4..cy + 4).contains(&y) && (cx - 4..cx + 4).contains(&x);
                        if inside {
                            assert_eq!(out[i], 0.0);
                            changed += 1;
                        } else {
                            assert_eq!(out[i], base[i]);
                        }
                    }
                }
            }
            assert_eq!(changed, 3 * side_x * side_y, "centre ({cx}, {cy})");
        }
    }

    #[test]
    fn sampled_parameters_cover_their_ranges() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let ps: Vec<AugParams> = (0..20_000).map(|_| AugParams::sample(&mut rng)).collect();
        let seen = |f: fn(&AugParams) -> i32, lo: i32, hi: i32| (lo..=hi).all(|v| ps.iter().any(|p| f(p) == v));
        assert!(seen(|p| p.crop_x, 0, 8) && seen(|p| p.crop_y, 0, 8));
        assert!(seen(|p| p.cutout_x, 0, 31) && seen(|p| p.cutout_y, 0, 31));
        assert!(ps.iter().all(|p| (0..=8).contains(&p.crop_x) && (0..32).contains(&p.cutout_y) && (0..=1).contains(&p.flip)));
        // Flip frequency: binomial(20000, 0.5) has std 0.0035; 0.02 is over 5 sigma.
        let flips = ps.iter().filter(|p| p.flip == 1).count() as f64 / ps.len() as f64;
        assert!((flips - 0.5).abs() < 0.02, "flip frequency {flips}");
    }

    /// Page's Cutout: every centre in 4..=28 is drawn and none outside, so every image loses a
    /// whole 8x8 square (64 pixels per channel); the crop and flip draws are those of `sample`.
    #[test]
    fn cutout_inside_keeps_the_whole_square_in_the_image() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let ps: Vec<AugParams> = (0..20_000).map(|_| AugParams::sample_cutout_inside(&mut rng)).collect();
        let seen = |f: fn(&AugParams) -> i32, lo: i32, hi: i32| (lo..=hi).all(|v| ps.iter().any(|p| f(p) == v));
        assert!(seen(|p| p.cutout_x, 4, 28) && seen(|p| p.cutout_y, 4, 28));
        assert!(ps.iter().all(|p| (4..=28).contains(&p.cutout_x) && (4..=28).contains(&p.cutout_y)));
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (p, q) = (AugParams::sample(&mut a), AugParams::sample_cutout_inside(&mut b));
        assert_eq!((p.crop_x, p.crop_y, p.flip), (q.crop_x, q.crop_y, q.flip));
        // Applied at the extreme centres: 64 zeros per channel for an image that has none of its
        // own (every pixel 200, mean 0).
        let image = vec![200u8; 3072];
        for (cx, cy) in [(4, 4), (28, 28), (4, 28)] {
            let mut out = vec![1.0f32; 3072];
            augment_into(&image, &AugParams { cutout_x: cx, cutout_y: cy, ..q }, [0.0; 3], [1.0; 3], &mut out);
            assert_eq!(out.iter().filter(|&&v| v == 0.0).count(), 3 * 64, "centre ({cx}, {cy})");
        }
    }
}
