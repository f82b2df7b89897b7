//! How long saving a full-width checkpoint takes, and how much of it the training loop waits
//! for now that the files are written on a thread of their own (`model/src/saver.rs`).
//!
//!     cargo run --release -p model --example save_timing [DIR]
//!
//! Builds a ResNet-9 of width 1 with random weights and momentum buffers (on the CPU), then five
//! times: starts both checkpoint files' copies to the host (`checkpoint::model_contents`,
//! `optimizer_contents`: what the loop still does itself; on the CPU the bytes are copied here,
//! on a GPU the copies are only queued), finishes them (`checkpoint::Pending::finish`) and
//! writes the files (`checkpoint::Contents::write`: checksums, safetensors, write, fsync,
//! rename, folder sync): what the saver's thread does. DIR (default /tmp/save-timing) receives
//! the two files.

use engine::{DType, Tensor};
use rand::SeedableRng;
use std::time::Instant;

fn main() -> model::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp/save-timing".into()));
    std::fs::create_dir_all(&dir).map_err(|e| model::Error::io(&dir, e))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let net = model::resnet::ResNet9::new(1.0, 0.125, DType::F32, &mut rng)?;
    let state = ops::sgd::SgdState { momentum_buffers: net.params.iter().map(|p| Some(Tensor::randn(p.shape(), DType::F32, 1.0, &mut rng))).collect() };
    let pool = engine::download::StagingPool::new();
    for _ in 0..5 {
        let t = Instant::now();
        let model_file = model::checkpoint::model_contents(&net, Some(1), None, None, &pool)?;
        let opt_file = model::checkpoint::optimizer_contents(&net, &state, Default::default(), None, &pool)?;
        let copied = t.elapsed().as_secs_f64();
        let (model_file, opt_file) = (model_file.finish()?, opt_file.finish()?);
        model_file.write(&dir.join("model.safetensors"))?;
        opt_file.write(&dir.join("optimizer.safetensors"))?;
        let written = t.elapsed().as_secs_f64() - copied;
        println!("copy to the host (the loop waits): {:.1} ms; finish the copies and write both files (the saver's thread): {:.1} ms", copied * 1e3, written * 1e3);
    }
    Ok(())
}
