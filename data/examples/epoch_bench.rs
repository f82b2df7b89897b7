//! Benchmark: one epoch of shuffled, augmented, normalised batches of 512 on the CPU,
//! exactly what the CPU training loop feeds the network.
//!
//! `cargo run -p data --release --example epoch_bench -- [DIR]` (else `$CIFAR10_DIR`, else
//! `./data/cifar-10-batches-bin`). Prints images per second (single thread).

use data::augment::{AugParams, augment_into, channel_stats};
use rand::SeedableRng;
use std::time::Instant;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args().nth(1).map(std::path::PathBuf::from);
    let dir = data::locate(arg.as_deref())?;
    let t = Instant::now();
    let ds = data::Cifar10::open(&dir)?;
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (mean, std) = channel_stats(&ds.train);
    let stats_s = t.elapsed().as_secs_f64();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut batch = vec![0f32; 512 * 3072];
    let mut checksum = 0f64;
    for epoch in 0..2 {
        let t = Instant::now();
        let order = data::epoch_order(ds.train.len(), 0, epoch);
        for idx in order.chunks(512) {
            for (&i, out) in idx.iter().zip(batch.chunks_exact_mut(3072)) {
                augment_into(ds.train.image(i as usize), &AugParams::sample(&mut rng), mean, std, out);
            }
            checksum += batch[..idx.len() * 3072].iter().map(|&v| v as f64).sum::<f64>();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "epoch {epoch}: {} images in {s:.3} s = {:.0} images/s (one thread)",
            ds.train.len(),
            ds.train.len() as f64 / s
        );
    }
    println!("open + validate: {open_s:.3} s, channel statistics: {stats_s:.3} s, checksum {checksum:.3e}");
    Ok(())
}
