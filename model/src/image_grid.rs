//! Grids of 32x32 CIFAR-10 images with captions, as PNG files: augmented
//! training images, misclassified test images.
//!
//! Images are copied pixel for pixel (nearest-neighbour upscaling) into an RGB
//! buffer; the title and captions are drawn on it with `plotters` and the
//! embedded font, and the PNG is written atomically (see [`crate::plots`]).

use crate::Result;
use crate::plots::{FONT, TextBackend, ensure_font, plot_err, text_size, write_png_atomic};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Side of a CIFAR-10 image in pixels.
const SIDE: usize = 32;
/// Bytes of one CHW image: 3 planes of 32x32.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

/// One image of a grid and its caption.
#[derive(Clone, Debug)]
pub struct GridImage<'a> {
    /// 3072 bytes, channel-major: 1024 R, then 1024 G, then 1024 B, each plane
    /// row-major 32x32 (the CIFAR-10 record layout).
    pub chw: &'a [u8],
    /// Text under the image, e.g. "cat" or "true: cat / pred: dog"; a `'\n'`
    /// starts another line.
    pub caption: String,
}

const MARGIN: u32 = 12;
const TITLE_SIZE: u32 = 22;
const TITLE_BAND: u32 = TITLE_SIZE + 14;
const CAPTION_SIZE: u32 = 14;
const LINE_H: u32 = 18;
const GAP: u32 = 10;
/// Largest canvas, in pixels, a grid may have.
const MAX_PIXELS: u64 = 1 << 27;

/// Where everything goes on the canvas.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Layout {
    width: u32,
    height: u32,
    /// Side of an upscaled image.
    img: u32,
    cell_w: u32,
    cell_h: u32,
    cols: u32,
    /// Left edge of the grid (centred under a wider title).
    x_off: u32,
    /// Top edge of the first row.
    top: u32,
}

impl Layout {
    /// Top-left pixel of image `i`.
    fn origin(&self, i: usize) -> (u32, u32) {
        let (r, c) = (i as u32 / self.cols, i as u32 % self.cols);
        let x = self.x_off + c * (self.cell_w + GAP) + (self.cell_w - self.img) / 2;
        let y = self.top + r * self.cell_h;
        (x, y)
    }
}

fn text_width(text: &str, size: u32) -> u32 {
    text_size(text, size as f64).0
}

fn layout(path: &Path, title: &str, images: &[GridImage], cols: usize, scale: usize) -> Result<Layout> {
    if cols == 0 {
        return Err(plot_err(path, "an image grid needs at least one column (cols == 0)"));
    }
    if scale == 0 {
        return Err(plot_err(path, "an image grid needs scale >= 1 (scale == 0)"));
    }
    if let Some((i, im)) = images.iter().enumerate().find(|(_, im)| im.chw.len() != IMAGE_BYTES) {
        return Err(plot_err(
            path,
            format!("image {i} has {} bytes; expected {IMAGE_BYTES} (3x32x32, channel-major)", im.chw.len()),
        ));
    }
    let too_big = || plot_err(path, format!("the grid would be too large ({} images, scale {scale})", images.len()));
    let img = u32::try_from(scale.checked_mul(SIDE).ok_or_else(too_big)?).map_err(|_| too_big())?;
    if img > 1 << 14 {
        return Err(too_big());
    }
    let n = images.len();
    let cols = cols.min(n.max(1)) as u32;
    let rows = n.div_ceil(cols as usize) as u64;
    let lines = images.iter().map(|im| im.caption.split('\n').count()).max().unwrap_or(0) as u32;
    let caption_w = images
        .iter()
        .flat_map(|im| im.caption.split('\n'))
        .map(|l| text_width(l, CAPTION_SIZE) + 6)
        .max()
        .unwrap_or(0);
    let cell_w = img.max(caption_w.min(1 << 14));
    let cell_h = img + 4 + lines * LINE_H + GAP;
    let grid_w = if n == 0 { 0 } else { cols as u64 * cell_w as u64 + (cols as u64 - 1) * GAP as u64 };
    let title_w = text_width(title, TITLE_SIZE).min(1 << 14) as u64;
    let width = 2 * MARGIN as u64 + grid_w.max(title_w);
    let top = MARGIN + TITLE_BAND;
    let height = top as u64 + rows * cell_h as u64 + MARGIN as u64;
    if width * height > MAX_PIXELS {
        return Err(too_big());
    }
    let x_off = MARGIN + ((width - 2 * MARGIN as u64 - grid_w) / 2) as u32;
    Ok(Layout { width: width as u32, height: height as u32, img, cell_w, cell_h, cols, x_off, top })
}

/// Writes a grid of `images` as a PNG at `path`, atomically: `cols` images a
/// row, each upscaled `scale` times (nearest neighbour) with its caption under
/// it, and `title` on top. Columns widen to fit the longest caption line.
///
/// Errors (never panics): `cols == 0`, `scale == 0`, an image that is not
/// [`IMAGE_BYTES`] long, an unwritable path (e.g. a missing directory).
/// An empty `images` gives a picture with the title alone.
pub fn write_image_grid(path: &Path, title: &str, images: &[GridImage], cols: usize, scale: usize) -> Result<()> {
    ensure_font(path)?;
    let l = layout(path, title, images, cols, scale)?;
    let (w, h) = (l.width as usize, l.height as usize);
    let mut buf = vec![255u8; w * h * 3];

    let s = scale;
    for (i, im) in images.iter().enumerate() {
        let (ox, oy) = l.origin(i);
        let (ox, oy) = (ox as usize, oy as usize);
        for y in 0..l.img as usize {
            let row = &mut buf[((oy + y) * w + ox) * 3..((oy + y) * w + ox + l.img as usize) * 3];
            let sy = y / s;
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                let p = sy * SIDE + x / s;
                px[0] = im.chw[p];
                px[1] = im.chw[SIDE * SIDE + p];
                px[2] = im.chw[2 * SIDE * SIDE + p];
            }
        }
    }

    {
        let root = TextBackend(BitMapBackend::with_buffer(&mut buf, (l.width, l.height))).into_drawing_area();
        let centre_top = Pos::new(HPos::Center, VPos::Top);
        let title_style = (FONT, TITLE_SIZE).into_font().color(&BLACK).pos(centre_top);
        root.draw(&Text::new(title, ((l.width / 2) as i32, MARGIN as i32), title_style))
            .map_err(|e| plot_err(path, e))?;
        let caption_style = (FONT, CAPTION_SIZE).into_font().color(&BLACK).pos(centre_top);
        for (i, im) in images.iter().enumerate() {
            let (ox, oy) = l.origin(i);
            let cx = (ox + l.img / 2) as i32;
            for (k, line) in im.caption.split('\n').enumerate() {
                let y = (oy + l.img + 4 + k as u32 * LINE_H) as i32;
                root.draw(&Text::new(line, (cx, y), caption_style.clone())).map_err(|e| plot_err(path, e))?;
            }
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_png_atomic(path, l.width, l.height, &buf)
}

/// Undoes the normalisation of one image (CHW f32, three equal planes, e.g. an
/// augmented training image) back to bytes, rounding to the nearest integer and
/// clamping to `0..=255` (NaN becomes 0).
///
/// `mean` and `std` are per channel, in the units the image was normalised
/// with: when every mean is at most 1 they are taken as fractions of 255
/// (`x = (b / 255 - mean) / std`, so `b = 255 * (x * std + mean)`), otherwise
/// as byte units (`x = (b - mean) / std`, so `b = x * std + mean`). CIFAR-10's
/// channel means are about 0.47 or 120, so the two cannot be confused.
pub fn chw_from_normalized(x: &[f32], mean: [f32; 3], std: [f32; 3]) -> Vec<u8> {
    let unit = if mean.iter().all(|&m| m <= 1.0) { 255.0f32 } else { 1.0 };
    let plane = x.len().div_ceil(3).max(1);
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / plane).min(2);
            let b = (v * std[c] + mean[c]) * unit;
            // `as` saturates (and maps NaN to 0); the clamp documents the intent.
            b.round().clamp(0.0, 255.0) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use rand::{Rng, SeedableRng};
    use std::path::PathBuf;

    /// A path `name` in a fresh folder that is removed when the returned guard drops.
    fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        (dir, path)
    }

    fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn random_images(n: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| (0..IMAGE_BYTES).map(|_| rng.random::<u8>()).collect()).collect()
    }

    #[test]
    fn image_grid_reproduces_pixels_exactly() {
        let pixels = random_images(5, 7);
        let images: Vec<GridImage> = pixels
            .iter()
            .enumerate()
            .map(|(i, p)| GridImage { chw: p, caption: if i == 1 { "true: cat / pred: dog".into() } else { format!("img {i}") } })
            .collect();
        let (cols, scale) = (3, 2);
        let (_dir, path) = tmp("grid.png");
        write_image_grid(&path, "Random images", &images, cols, scale).unwrap();
        let l = layout(&path, "Random images", &images, cols, scale).unwrap();
        let (w, h, rgb) = decode_png(&path);
        assert_eq!((w, h), (l.width, l.height));
        // 2 rows of 3 cells; each cell at least as wide as the upscaled image.
        assert_eq!(l.img, 64);
        assert!(w >= 3 * 64 + 2 * GAP + 2 * MARGIN);
        assert!(h >= l.top + 2 * (64 + LINE_H));
        for (i, chw) in pixels.iter().enumerate() {
            let (ox, oy) = l.origin(i);
            for y in 0..l.img {
                for x in 0..l.img {
                    let o = (((oy + y) * w + ox + x) * 3) as usize;
                    // Pixel (row y/scale, column x/scale) of plane c sits at c*1024 + row*32 + column.
                    let p = (y as usize / scale) * 32 + x as usize / scale;
                    let want = [chw[p], chw[1024 + p], chw[2048 + p]];
                    assert_eq!(&rgb[o..o + 3], &want, "image {i} pixel ({x}, {y})");
                }
            }
        }
        // Something (the captions and title) is drawn outside the images.
        let (ox, oy) = l.origin(0);
        let below = (((oy + l.img + 4 + 8) * w) * 3) as usize;
        assert!(rgb[below..below + (w * 3 * 6) as usize].iter().any(|&b| b < 128), "no caption under row 0");
        let _ = ox;
    }

    #[test]
    fn image_grid_orientation_and_channels() {
        // A single image: red top-left pixel, blue bottom-right, green (row 0, column 31).
        let mut chw = vec![0u8; IMAGE_BYTES];
        chw[0] = 255; // R plane, row 0, col 0
        chw[2048 + 31 * 32 + 31] = 255; // B plane, row 31, col 31
        chw[1024 + 31] = 255; // G plane, row 0, col 31
        let (_dir, path) = tmp("orient.png");
        let images = [GridImage { chw: &chw, caption: "x".into() }];
        write_image_grid(&path, "t", &images, 4, 1).unwrap();
        let l = layout(&path, "t", &images, 4, 1).unwrap();
        let (w, _, rgb) = decode_png(&path);
        let px = |x: u32, y: u32| {
            let (ox, oy) = l.origin(0);
            let o = (((oy + y) * w + ox + x) * 3) as usize;
            [rgb[o], rgb[o + 1], rgb[o + 2]]
        };
        assert_eq!(px(0, 0), [255, 0, 0]);
        assert_eq!(px(31, 0), [0, 255, 0]);
        assert_eq!(px(0, 31), [0, 0, 0]);
        assert_eq!(px(31, 31), [0, 0, 255]);
    }

    #[test]
    fn image_grid_bad_inputs_are_err() {
        let good = vec![0u8; IMAGE_BYTES];
        let short = vec![0u8; IMAGE_BYTES - 1];
        let ok = [GridImage { chw: &good, caption: "a".into() }];
        let (_dir, path) = tmp("bad.png");
        let is_plot_err = |r: Result<()>| match r {
            Err(Error::Plot { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected a plot error, got {other:?}"),
        };
        is_plot_err(write_image_grid(&path, "t", &ok, 0, 2));
        is_plot_err(write_image_grid(&path, "t", &ok, 2, 0));
        is_plot_err(write_image_grid(&path, "t", &[GridImage { chw: &short, caption: "a".into() }], 2, 2));
        is_plot_err(write_image_grid(&path, "t", &[ok[0].clone(), GridImage { chw: &[], caption: "b".into() }], 2, 2));
        is_plot_err(write_image_grid(&path, "t", &ok, 2, usize::MAX));
        is_plot_err(write_image_grid(&path, "t", &ok, 2, 10_000));
        assert!(!path.exists());
        // A directory that does not exist: an I/O error naming it.
        let missing = std::env::temp_dir().join("model-grid-no-such-dir-51ab").join("g.png");
        let e = write_image_grid(&missing, "t", &ok, 2, 2).unwrap_err();
        assert!(e.to_string().contains("model-grid-no-such-dir-51ab"), "{e}");
        // No images, or more columns than images: fine.
        write_image_grid(&path, "empty", &[], 8, 3).unwrap();
        write_image_grid(&path, "wide", &ok, 100, 1).unwrap();
    }

    #[test]
    fn image_grid_chw_from_normalized_round_trips() {
        // Normalise random bytes as the data pipeline does (f32), then undo.
        // The f32 round trip is off by at most a few ulps of 255 (~1e-4), far from
        // the 0.5 rounding boundary, so rounding recovers each byte exactly; ±1 would
        // only be needed if the normalised values had been stored at lower
        // precision (e.g. bf16), where the error can approach one step of 255.
        let bytes = &random_images(1, 3)[0];
        for (mean, std) in [
            ([0.4914f32, 0.4822, 0.4465], [0.2470f32, 0.2435, 0.2616]), // fractions of 255
            ([125.3f32, 123.0, 113.9], [63.0f32, 62.1, 66.7]),          // byte units
        ] {
            let unit = if mean[0] <= 1.0 { 255.0f32 } else { 1.0 };
            let x: Vec<f32> = bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    let c = i / 1024;
                    (b as f32 / unit - mean[c]) / std[c]
                })
                .collect();
            let back = chw_from_normalized(&x, mean, std);
            assert_eq!(back.len(), IMAGE_BYTES);
            let worst = back.iter().zip(bytes).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap();
            assert!(worst <= 1, "worst difference {worst}");
            assert_eq!(&back, bytes, "f32 round trip should be exact");
        }
        // Out-of-range values clamp (cutout and padding can leave such values), NaN -> 0.
        let m = [0.5f32; 3];
        let s = [0.25f32; 3];
        assert_eq!(chw_from_normalized(&[-100.0, 100.0, f32::NAN], m, s), vec![0, 255, 0]);
        // Not three equal planes: no panic.
        assert_eq!(chw_from_normalized(&[0.0; 4], m, s).len(), 4);
        assert!(chw_from_normalized(&[], m, s).is_empty());
    }

    /// Renders the example grid to /tmp/viz-example-grid.png for a person to look at:
    /// `cargo test -p model --release --lib image_grid -- --ignored`.
    #[test]
    #[ignore]
    fn image_grid_render_example() {
        // Synthetic pictures: gradients, stripes, a disc; plus noise.
        let classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let pics: Vec<Vec<u8>> = (0..12)
            .map(|k| {
                let mut chw = vec![0u8; IMAGE_BYTES];
                for y in 0..32 {
                    for x in 0..32 {
                        let p = y * 32 + x;
                        let disc = ((x as i32 - 16).pow(2) + (y as i32 - 16).pow(2)) < 100;
                        let (r, g, b) = match k % 4 {
                            0 => (x * 8, y * 8, 128),
                            1 => (if (x / 4) % 2 == 0 { 250 } else { 20 }, 60, y * 8),
                            2 => (if disc { 240 } else { 30 }, if disc { 200 } else { 90 }, 40),
                            _ => (rng.random_range(0..256), rng.random_range(0..256), rng.random_range(0..256)),
                        };
                        chw[p] = r as u8;
                        chw[1024 + p] = g as u8;
                        chw[2048 + p] = b as u8;
                    }
                }
                chw
            })
            .collect();
        let images: Vec<GridImage> = pics
            .iter()
            .enumerate()
            .map(|(i, p)| GridImage {
                chw: p,
                caption: if i == 1 {
                    format!("true: {}\npred: {}", classes[i % 10], classes[(i + 7) % 10])
                } else if i % 3 == 0 {
                    format!("{} / {}", classes[i % 10], classes[(i + 3) % 10])
                } else {
                    classes[i % 10].to_string()
                },
            })
            .collect();
        write_image_grid(Path::new("/tmp/viz-example-grid.png"), "Misclassified test images (true / predicted)", &images, 8, 3)
            .unwrap();
    }
}
