//! Lossless packing of CIFAR-10 binary files to about 52% of their size (gzip alone: 94%),
//! for moving them where every megabyte counts: the GPU machine of `scripts/gpu/`, reached
//! through transfers of at most 64 MiB (three calls with gzip, two with this).
//!
//! ```text
//! cargo run --release -p data --example cifar_pack -- pack   SRC_DIR OUT_DIR   # NAME.bin -> NAME.bin.pk
//! cargo run --release -p data --example cifar_pack -- unpack SRC_DIR OUT_DIR   # NAME.bin.pk -> NAME.bin
//! ```
//!
//! Images are predicted, not stored. Per image and channel (a 32x32 plane `x`), each pixel is
//! predicted from its neighbours by the median edge detector of LOCO-I (JPEG-LS), with
//! `a` = left, `b` = up, `c` = up-left:
//!
//! ```text
//! pred = min(a, b)    if c >= max(a, b)
//!        max(a, b)    if c <= min(a, b)
//!        a + b - c    otherwise
//! ```
//!
//! (first row: `pred = a`; first column: `pred = b`; first pixel: 0). The residual
//! `e = x - pred (mod 256)` is small where the image is smooth. The three channels' residuals
//! are alike, so red and blue are stored relative to green: `(eR - eG, eG, eB - eG) mod 256`.
//! The residual bytes are then compressed with xz (LZMA2, preset 6, through the `liblzma`
//! crate). Unpacking inverts each step exactly (wrapping u8 arithmetic), in the same raster
//! order, so the output is the input, byte for byte. Measured on `../shared/cifar10`
//! (2026-11-27, `data_batch_1.bin`): gzip alone 0.938 of the size, predictor 0.70, predictor +
//! channels 0.57 with gzip for the residuals, 0.52 with xz (17.58 MB -> 15.89 MB a file: the
//! working tree that travels with each call grows with the recorded results, and xz gave the
//! first call 5 MiB of room back). The files of a folder are packed in parallel, one thread each
//! (xz preset 6 takes about 30 s a file on one core of the development VM; unpacking, 1 s).
//!
//! File layout of `NAME.bin.pk`: the magic `CIFARPK2`, the record count (u64, little-endian),
//! the labels (one byte per record), then one xz stream of `count x 3072` residual bytes.
//! (`CIFARPK1`, the same with gzip, was this tool's first format; it is refused with a word
//! on packing the files again.)

use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"CIFARPK2";
/// The first format's magic (gzip), refused by name.
const OLD_MAGIC: &[u8; 8] = b"CIFARPK1";
/// The xz preset: 6, the default (9 compressed these residuals 0.1% better, 25% slower).
const XZ_PRESET: u32 = 6;
/// A record: the label byte, then the image's 3 planes of 32x32 pixels.
const RECORD: usize = data::RECORD_BYTES;
const PIXELS: usize = data::IMAGE_BYTES;
const PLANE: usize = PIXELS / 3;
const SIDE: usize = 32;

type Result<T> = std::result::Result<T, String>;

/// The median edge detector's prediction of pixel `(i, j)` of `plane` from its decoded neighbours.
fn predict(plane: &[u8], i: usize, j: usize) -> u8 {
    match (i, j) {
        (0, 0) => 0,
        (0, _) => plane[j - 1],
        (_, 0) => plane[(i - 1) * SIDE],
        _ => {
            let (a, b, c) = (plane[i * SIDE + j - 1], plane[(i - 1) * SIDE + j], plane[(i - 1) * SIDE + j - 1]);
            if c >= a.max(b) {
                a.min(b)
            } else if c <= a.min(b) {
                a.max(b)
            } else {
                // Here min(a, b) < c < max(a, b), so a + b - c lies within [min, max]: no overflow.
                (a as i16 + b as i16 - c as i16) as u8
            }
        }
    }
}

/// One image's 3072 pixels (R, G, B planes) -> its 3072 stored residuals.
fn encode_image(px: &[u8], out: &mut [u8]) {
    for ch in 0..3 {
        let plane = &px[ch * PLANE..(ch + 1) * PLANE];
        for i in 0..SIDE {
            for j in 0..SIDE {
                out[ch * PLANE + i * SIDE + j] = plane[i * SIDE + j].wrapping_sub(predict(plane, i, j));
            }
        }
    }
    let (r, rest) = out.split_at_mut(PLANE);
    let (g, b) = rest.split_at_mut(PLANE);
    for k in 0..PLANE {
        r[k] = r[k].wrapping_sub(g[k]);
        b[k] = b[k].wrapping_sub(g[k]);
    }
}

/// [`encode_image`]'s inverse: 3072 stored residuals -> the image's pixels.
fn decode_image(res: &[u8], px: &mut [u8]) {
    for ch in 0..3 {
        for k in 0..PLANE {
            let g = res[PLANE + k];
            // The channel's own residual e (red and blue were stored as e - eG).
            let e = if ch == 1 { g } else { res[ch * PLANE + k].wrapping_add(g) };
            let plane = &mut px[ch * PLANE..(ch + 1) * PLANE];
            let p = predict(plane, k / SIDE, k % SIDE);
            plane[k] = e.wrapping_add(p);
        }
    }
}

/// A whole CIFAR-10 binary file -> the packed file.
fn pack(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(format!("{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records", bytes.len()));
    }
    let n = bytes.len() / RECORD;
    let mut out = Vec::with_capacity(bytes.len() * 6 / 10);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(n as u64).to_le_bytes());
    out.extend(bytes.chunks_exact(RECORD).map(|r| r[0]));
    let mut residuals = vec![0u8; n * PIXELS];
    for (r, res) in bytes.chunks_exact(RECORD).zip(residuals.chunks_exact_mut(PIXELS)) {
        encode_image(&r[1..], res);
    }
    let mut xz = liblzma::write::XzEncoder::new(out, XZ_PRESET);
    xz.write_all(&residuals).map_err(|e| e.to_string())?;
    xz.finish().map_err(|e| e.to_string())
}

/// A packed file -> the CIFAR-10 binary file it was made from.
fn unpack(packed: &[u8]) -> Result<Vec<u8>> {
    if packed.len() >= 8 && &packed[..8] == OLD_MAGIC {
        return Err("packed by an older cifar_pack (CIFARPK1, gzip): pack the files again with this one".into());
    }
    if packed.len() < 16 || &packed[..8] != MAGIC {
        return Err("not a packed CIFAR-10 file (no CIFARPK2 header)".into());
    }
    let n = u64::from_le_bytes(packed[8..16].try_into().expect("8 bytes")) as usize;
    // CIFAR-10's files hold 10,000 records; a far larger count is a damaged header.
    if n == 0 || n > 1_000_000 || packed.len() < 16 + n {
        return Err(format!("damaged header: {n} records in a file of {} bytes", packed.len()));
    }
    let labels = &packed[16..16 + n];
    let mut residuals = Vec::with_capacity(n * PIXELS);
    liblzma::read::XzDecoder::new(&packed[16 + n..])
        .take((n * PIXELS + 1) as u64)
        .read_to_end(&mut residuals)
        .map_err(|e| format!("damaged or truncated data: {e}"))?;
    if residuals.len() != n * PIXELS {
        return Err(format!("the data holds {} bytes, {n} records need {}", residuals.len(), n * PIXELS));
    }
    let mut out = vec![0u8; n * RECORD];
    for ((rec, res), &label) in out.chunks_exact_mut(RECORD).zip(residuals.chunks_exact(PIXELS)).zip(labels) {
        rec[0] = label;
        decode_image(res, &mut rec[1..]);
    }
    Ok(out)
}

/// Apply `f` to every file of `src` whose name ends in `from`, writing `NAME[to]` into `out`.
fn convert_dir(src: &Path, out: &Path, from: &str, to: &str, f: fn(&[u8]) -> Result<Vec<u8>>) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(from))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(format!("no *{from} files in {}", src.display()));
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let one = |name: &str| -> Result<String> {
        let path = src.join(name);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let converted = f(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let target = out.join(format!("{}{to}", name.strip_suffix(from).expect("filtered on the suffix")));
        // Write beside the target and rename, so an interrupted run leaves no partial file.
        let part = target.with_extension("part");
        std::fs::write(&part, &converted).map_err(|e| format!("{}: {e}", part.display()))?;
        std::fs::rename(&part, &target).map_err(|e| format!("{}: {e}", target.display()))?;
        Ok(format!("{} ({} bytes) -> {} ({} bytes)", path.display(), bytes.len(), target.display(), converted.len()))
    };
    // One thread per file (xz's compression is the slow part, and single-threaded).
    let done: Vec<Result<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = names.iter().map(|name| scope.spawn(move || one(name))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a packing thread panicked".into()))).collect()
    });
    for line in done {
        println!("{}", line?);
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let done = match args.as_slice() {
        [cmd, src, out] if cmd == "pack" => convert_dir(Path::new(src), Path::new(out), ".bin", ".bin.pk", pack),
        [cmd, src, out] if cmd == "unpack" => convert_dir(Path::new(src), Path::new(out), ".bin.pk", ".bin", unpack),
        _ => Err("usage: cifar_pack pack SRC_DIR OUT_DIR | cifar_pack unpack SRC_DIR OUT_DIR".into()),
    };
    if let Err(e) = done {
        eprintln!("cifar_pack: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random records: smooth images (where prediction matters), noise (every residual
    /// value, wrapping included) and the extremes 0 and 255.
    fn records(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n * RECORD);
        for k in 0..n {
            out.push(rng.random_range(0..10u8));
            let (base, slope) = (rng.random_range(0..256i32), rng.random_range(-8..=8i32));
            for ch in 0..3 {
                for p in 0..PLANE {
                    let v = match k % 3 {
                        0 => (base + slope * (p % SIDE) as i32 + ch * 20 + rng.random_range(-3..=3)).clamp(0, 255) as u8,
                        1 => rng.random::<u8>(),
                        _ => if rng.random::<bool>() { 0 } else { 255 },
                    };
                    out.push(v);
                }
            }
        }
        out
    }

    #[test]
    fn unpack_returns_the_packed_bytes_exactly() {
        let bytes = records(30, 1);
        let packed = pack(&bytes).unwrap();
        assert_eq!(unpack(&packed).unwrap(), bytes);
    }

    #[test]
    fn smooth_images_pack_smaller_than_gzip_alone() {
        // Only the smooth kind (every third record of `records`).
        let bytes: Vec<u8> = records(60, 2).chunks_exact(RECORD).step_by(3).flatten().copied().collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&bytes).unwrap();
        let (plain_gz, packed) = (gz.finish().unwrap().len(), pack(&bytes).unwrap().len());
        assert!(packed * 10 < plain_gz * 8, "packed {packed} bytes, gzip alone {plain_gz}");
    }

    #[test]
    fn the_real_files_round_trip() {
        // A real file if the dataset is at hand (CIFAR10_DIR), its first 2,000 records.
        let Some(dir) = std::env::var_os("CIFAR10_DIR") else { return };
        let path = Path::new(&dir).join("test_batch.bin");
        let Ok(bytes) = std::fs::read(&path) else { return };
        let bytes = &bytes[..2000 * RECORD];
        let packed = pack(bytes).unwrap();
        assert_eq!(unpack(&packed).unwrap(), bytes);
        // Natural images: the packed file is under 0.55 of the original (0.52 measured on the
        // whole file; 0.57 with gzip, which this bound refuses).
        assert!(packed.len() * 100 < bytes.len() * 55, "packed {} of {} bytes", packed.len(), bytes.len());
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(pack(&[0u8; RECORD + 1]).unwrap_err().contains("whole number"));
        assert!(pack(&[]).is_err());
        assert!(unpack(b"NOTAPACKxxxxxxxx").unwrap_err().contains("CIFARPK2"));
        assert!(unpack(b"CIFARPK1xxxxxxxxxxxx").unwrap_err().contains("pack the files again"));
        let packed = pack(&records(3, 3)).unwrap();
        // Truncated data stream.
        assert!(unpack(&packed[..packed.len() - 20]).is_err());
        // A header claiming more records than the data holds.
        let mut more = packed.clone();
        more[8..16].copy_from_slice(&4u64.to_le_bytes());
        assert!(unpack(&more).is_err());
        // A header claiming fewer (the data then holds extra bytes).
        let mut fewer = packed;
        fewer[8..16].copy_from_slice(&2u64.to_le_bytes());
        assert!(unpack(&fewer).is_err());
    }
}
