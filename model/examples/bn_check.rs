//! Diagnostic: test accuracy of a checkpoint with BN in eval mode (running statistics)
//! and in training mode (batch statistics of each test batch of 1000).
//! `cargo run -p model --release --example bn_check -- RUN_DIR WIDTH`
use engine::DType;
use model::batches::{Normalization, count_correct, eval_batch};
use model::resnet::ResNet9;
use ops::Graph;
use rand::SeedableRng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let width: f64 = args[2].parse()?;
    let ds = data::Cifar10::open(&data::locate(None)?)?;
    let (mean, std) = data::augment::channel_stats(&ds.train);
    let norm = Normalization { mean, std };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut m = ResNet9::new(width, 1.0, DType::F32, &mut rng)?;
    model::checkpoint::load_model(&dir.join("model.safetensors"), &mut m)?;
    for (split_name, split) in [("test", &ds.test), ("train", &ds.train)] {
        for train_mode in [false, true] {
            let mut correct = 0;
            for start in (0..10_000).step_by(1000) {
                let (x, labels) = eval_batch(split, start, start + 1000, norm, false)?;
                let mut bn = m.bn.clone();
                let mut g = Graph::new(&m.params);
                let input = g.input(x);
                let logits = m.arch.forward(&mut g, input, train_mode, &mut bn)?;
                correct += count_correct(g.value(logits), &labels).0;
            }
            println!("{split_name} (first 10000), BN {}: {correct}/10000", if train_mode { "batch stats" } else { "running stats" });
        }
    }
    Ok(())
}
