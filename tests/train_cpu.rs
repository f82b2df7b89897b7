//! End to end on the CPU: the real data files, the real network at reduced width,
//! the training loop, the one-cycle schedule, evaluation and the run folder.
//!
//! A narrow ResNet-9 (width 1/8: 8-16-32-64 channels) trained for 3 epochs on 2,048
//! images must (a) lower its training loss from the first epoch to the last and
//! (b) beat chance (10%) on the 10,000 test images by a wide margin. Measured on the
//! development machine: see the issue note. These are the assertions that fail when
//! any forward or backward rule, the optimizer, the data pipeline or the schedule breaks.

use model::run::{RunOptions, read_metrics, run_training, run_training_timed};
use model::startup::PhaseClock;
use model::train::TrainConfig;
use std::path::{Path, PathBuf};

/// The options of a new test run `name` in `runs_dir`: `cfg` with its LRs given, no progress
/// bar, no CUDA graph.
fn run_opts(cfg: TrainConfig, runs_dir: &Path, name: &str) -> RunOptions {
    RunOptions {
        cfg,
        lr_given: true,
        lr_find: Default::default(),
        runs_dir: runs_dir.to_path_buf(),
        name: Some(name.into()),
        resume: false,
        progress: false,
        cuda_graph: false,
        explicit: Vec::new(),
    }
}

fn cifar_dir() -> PathBuf {
    let dir = std::env::var_os("CIFAR10_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/cifar10"));
    assert!(data::locate::holds_dataset(&dir), "CIFAR-10 binary files not found in {} (set CIFAR10_DIR)", dir.display());
    dir
}

#[test]
fn a_narrow_resnet_learns_on_the_cpu_and_writes_its_run_folder() {
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().to_path_buf();
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 64,
        subset: Some(2048),
        width: 0.125,
        peak_epoch: 1,
        lr_min: 0.01,
        lr_max: 0.1,
        tta: true,
        ..TrainConfig::default()
    };
    let opts = run_opts(cfg, &runs, "t");
    let acc = run_training(&ds, &engine::Device::Cpu, opts.clone()).unwrap();
    let dir = runs.join("t");
    let rows = read_metrics(&dir.join("metrics.csv")).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[2].train_loss < rows[0].train_loss,
        "training loss did not fall: {:?}",
        rows.iter().map(|r| r.train_loss).collect::<Vec<_>>()
    );
    assert!(acc > 20.0, "test accuracy {acc}% is not well above chance (10%)");
    // --tta: every epoch also has its flip-TTA accuracy, in the metrics and in the log.
    assert!(rows.iter().all(|r| r.test_acc_tta.is_some_and(|a| a > 10.0)), "{rows:?}");
    let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
    assert_eq!(log.matches("Test set with flip TTA: Average loss: ").count(), 3, "{log}");
    for f in ["train.log", "metrics.csv", "loss.png", "accuracy.png", "lr.png", "misclassified.png", "model.safetensors", "optimizer.safetensors"] {
        assert!(dir.join(f).exists(), "{f} was not written");
    }
    // Starting over in the same folder is refused (no lost work) ...
    assert!(run_training(&ds, &engine::Device::Cpu, opts.clone()).is_err());
    // ... and resuming a finished run trains no more epochs and keeps the metrics.
    let resumed = run_training(&ds, &engine::Device::Cpu, RunOptions { resume: true, ..opts.clone() }).unwrap();
    assert!((resumed - acc).abs() < 1e-9, "resumed model evaluates differently: {resumed} vs {acc}");
    assert_eq!(read_metrics(&dir.join("metrics.csv")).unwrap().len(), 3);
    // Asking a resumed run for other settings is refused, before the run folder is touched
    // (the log included); the same settings given again are not.
    let log_before = std::fs::read(dir.join("train.log")).unwrap();
    let longer = RunOptions {
        resume: true,
        cfg: TrainConfig { epochs: 5, ..opts.cfg.clone() },
        explicit: vec!["epochs".into(), "seed".into()],
        ..opts.clone()
    };
    let e = run_training(&ds, &engine::Device::Cpu, longer).unwrap_err().to_string();
    assert!(e.contains("asks for others: --epochs 5 (saved: 3).") && e.contains("cannot be extended"), "{e}");
    assert_eq!(std::fs::read(dir.join("train.log")).unwrap(), log_before, "a refused resume wrote to the log");
    let same = RunOptions { resume: true, explicit: vec!["epochs".into(), "width".into()], ..opts.clone() };
    assert!((run_training(&ds, &engine::Device::Cpu, same).unwrap() - acc).abs() < 1e-9);
    // A run stopped after it saved the checkpoints of epoch 3 but before their metrics row: the
    // files disagree (resuming from them would train epoch 3 again on epoch 3's weights), so the
    // resume takes epoch 2's files, kept beside them, and trains epoch 3 again: the same run.
    let same_run = |why: &str| {
        let again = run_training(&ds, &engine::Device::Cpu, RunOptions { resume: true, ..opts.clone() }).unwrap();
        assert_eq!(again, acc, "{why}: epoch 3 trained again from epoch 2's checkpoint ends elsewhere");
        let rows_again = read_metrics(&dir.join("metrics.csv")).unwrap();
        let key = |r: &model::run::EpochRecord| (r.epoch, r.lr, r.train_loss, r.train_acc, r.test_loss, r.test_acc, r.test_acc_tta);
        assert_eq!(rows_again.iter().map(key).collect::<Vec<_>>(), rows.iter().map(key).collect::<Vec<_>>(), "{why}");
        let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        let at = lines.iter().rposition(|l| l.starts_with("The last checkpoint cannot be used")).expect("no recovery line");
        assert!(lines[at].contains(why) && lines[at].ends_with("resuming from the previous epoch's, kept beside it"), "{why}: {}", lines[at]);
        assert!(lines[at + 1].starts_with("Resuming ") && lines[at + 1].ends_with("after epoch 2 of 3"), "{}", lines[at + 1]);
    };
    // The state a run killed during epoch 3's save leaves: the last epoch's files kept as hard
    // links (optimizer.prev.safetensors and metrics.prev.csv are the same files as the run's),
    // then epoch 3's model.safetensors written. Resuming from it, and saving after it, must
    // write none of the shared files in place: the second recovery below needs them intact.
    for (prev, last) in [("optimizer.prev.safetensors", "optimizer.safetensors"), ("metrics.prev.csv", "metrics.csv")] {
        std::fs::remove_file(dir.join(last)).unwrap();
        std::fs::hard_link(dir.join(prev), dir.join(last)).unwrap();
    }
    same_run("model.safetensors was saved after epoch 3 but");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    model::run::write_metrics(&dir.join("metrics.csv"), &rows[..2]).unwrap();
    same_run("model.safetensors was saved after epoch 3 but");
    // A setting damaged on disk to another value still in range (momentum 0.9 to 0.8, the
    // header still valid JSON) is refused by the metadata's checksum, and the previous epoch's
    // checkpoint takes over.
    let opt_path = dir.join("optimizer.safetensors");
    let mut damaged = std::fs::read(&opt_path).unwrap();
    let key = b"\"momentum\":\"0.9\"";
    let at = damaged.windows(key.len()).position(|w| w == key).expect("momentum 0.9 not in the header");
    damaged[at + key.len() - 2] = b'8';
    std::fs::write(&opt_path, damaged).unwrap();
    same_run("optimizer.safetensors: the settings and progress in its metadata do not match the checksum");
    // Settings out of range in a file without the metadata's checksum (as written before it
    // existed) are checked as the command line's are, and the previous checkpoint takes over.
    let original = std::fs::read(&opt_path).unwrap();
    {
        let st = safetensors::SafeTensors::deserialize(&original).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&original).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        assert!(meta.remove("metadata_crc32").is_some());
        meta.insert("momentum".into(), "9.9".into());
        std::fs::write(&opt_path, safetensors::serialize(st.tensors(), Some(meta)).unwrap()).unwrap();
    }
    same_run("optimizer.safetensors: its saved settings: --momentum must be in [0, 1), got 9.9");
    // A checkpoint damaged on disk since (its checksum) gives way to the previous one too.
    let mut damaged = std::fs::read(dir.join("model.safetensors")).unwrap();
    let i = damaged.len() - 64;
    damaged[i] ^= 0x40;
    std::fs::write(dir.join("model.safetensors"), damaged).unwrap();
    same_run("do not match the checksum");
    // A metrics file with a byte that is no longer text (its high bit flipped) is damaged, not
    // an I/O error: the previous epoch's files take over.
    let mut damaged = std::fs::read(dir.join("metrics.csv")).unwrap();
    let i = damaged.len() / 2;
    damaged[i] |= 0x80;
    std::fs::write(dir.join("metrics.csv"), damaged).unwrap();
    same_run("metrics.csv: not a text file (damaged)");
    // Files gone (deleted by hand): the previous epoch's take over too.
    std::fs::remove_file(dir.join("optimizer.safetensors")).unwrap();
    std::fs::remove_file(dir.join("metrics.csv")).unwrap();
    same_run("optimizer.safetensors: No such file");
    // With the previous epoch's files unusable too, the resume is refused and changes nothing.
    model::run::write_metrics(&dir.join("metrics.csv"), &rows[..2]).unwrap();
    std::fs::remove_file(dir.join("model.prev.safetensors")).unwrap();
    let e = run_training(&ds, &engine::Device::Cpu, RunOptions { resume: true, ..opts }).unwrap_err().to_string();
    assert!(e.contains("model.safetensors was saved after epoch 3") && e.contains("cannot be used either"), "{e}");
    assert_eq!(read_metrics(&dir.join("metrics.csv")).unwrap().len(), 2, "the files were changed");
}

/// An LR so large that the updates break the weights ends the run with an error and writes no
/// checkpoint of broken weights: with three steps an epoch, the third step's loss is not finite
/// (after the first update the loss is huge but finite: batch norm bounds the activations); with
/// one, every training loss is finite (each is computed before its update), and the test loss
/// after the epoch is the only sign.
#[test]
fn broken_weights_stop_the_run_without_a_checkpoint() {
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let runs = tempfile::tempdir().unwrap();
    for (subset, name, says) in [(192, "three-steps", "batch 3: the loss is"), (64, "one-step", "the test loss is")] {
        let cfg = TrainConfig { epochs: 2, batch_size: 64, subset: Some(subset), width: 0.125, peak_epoch: 1, lr_min: 1e38, lr_max: 1e38, ..TrainConfig::default() };
        let opts = run_opts(cfg, runs.path(), name);
        let e = run_training(&ds, &engine::Device::Cpu, opts).unwrap_err().to_string();
        assert!(e.contains(says) && e.contains("(not finite)") && e.contains("no checkpoint was written yet"), "{name}: {e}");
        assert!(!runs.path().join(name).join("model.safetensors").exists(), "{name}: broken weights were saved");
        let log = std::fs::read_to_string(runs.path().join(name).join("train.log")).unwrap();
        assert!(log.trim_end().ends_with(&format!("error: {e}")), "{name}: the log does not end with the error: {log}");
    }
}

/// The checkpoint is written on a thread of its own while the next epoch trains
/// (`model/src/saver.rs`); a write that fails still stops the run with an error that says so
/// (at the next epoch's save, or for the last epoch before the run ends), and the log ends
/// with it, never a run that ends as if it had been saved. (`metrics.csv.tmp` made a folder:
/// the model and optimizer files are written, then the metrics file cannot be.)
#[test]
fn a_checkpoint_that_cannot_be_written_stops_the_run() {
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let runs = tempfile::tempdir().unwrap();
    for (epochs, name) in [(3, "stopped-at-epoch-2"), (1, "stopped-at-the-end")] {
        let dir = runs.path().join(name);
        std::fs::create_dir_all(dir.join("metrics.csv.tmp")).unwrap();
        let cfg = TrainConfig { epochs, batch_size: 64, subset: Some(64), width: 0.125, peak_epoch: 1, lr_min: 0.01, lr_max: 0.1, ..TrainConfig::default() };
        let opts = run_opts(cfg, runs.path(), name);
        let e = run_training(&ds, &engine::Device::Cpu, opts).unwrap_err().to_string();
        assert!(e.starts_with("writing epoch 1's checkpoint: ") && e.contains("metrics.csv.tmp"), "{name}: {e}");
        // The model file is written, the metrics file cannot be, and the optimizer file (written
        // last, it marks a whole checkpoint) is not.
        assert!(dir.join("model.safetensors").exists() && !dir.join("optimizer.safetensors").exists(), "{name}");
        assert!(e.contains("--resume takes whichever of the last two epochs' checkpoints is intact"), "{name}: {e}");
        let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
        assert!(!log.contains("Done:") && log.trim_end().ends_with(&format!("error: {e}")), "{name}: {log}");
        if epochs == 3 {
            assert!(log.contains("EPOCH: 2") && !log.contains("EPOCH: 3"), "{log}");
        }
    }
}

/// Settings no run can train with are refused with the flag named, before the run folder (or
/// its log) exists.
#[test]
fn bad_settings_are_refused_before_the_run_folder_is_made() {
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let runs = tempfile::tempdir().unwrap();
    let good = TrainConfig { epochs: 1, batch_size: 64, subset: Some(64), width: 0.125, lr_min: 0.01, lr_max: 0.1, ..TrainConfig::default() };
    let bad = [
        (TrainConfig { subset: Some(0), ..good.clone() }, "--subset must be at least 1"),
        (TrainConfig { label_smoothing: 2.0, ..good.clone() }, "--label-smoothing must be in [0, 1], got 2"),
        (TrainConfig { width: 0.0, ..good.clone() }, "--width must be a number in (0, 8]"),
        (TrainConfig { width: 1e30, ..good.clone() }, "--width must be a number in (0, 8]"),
        (TrainConfig { epochs: 10_001, ..good.clone() }, "--epochs must be at most 10000"),
        (TrainConfig { batch_size: 65, ..good.clone() }, "--batch-size 65 is more than the 64 training images"),
        (TrainConfig { lr_max: f64::INFINITY, ..good.clone() }, "need 0 <= LRMIN <= LRMAX"),
        (TrainConfig { momentum: 1.0, ..good.clone() }, "--momentum must be in [0, 1)"),
        (TrainConfig { momentum: 0.0, ..good.clone() }, "Nesterov momentum needs --momentum above 0 (or --no-nesterov)"),
        (TrainConfig { peak_epoch: 0, ..good.clone() }, "--peak-epoch must be between 1 and 10000"),
        (TrainConfig { lr_min: 0.1, lr_max: 0.01, ..good.clone() }, "need 0 <= LRMIN <= LRMAX"),
    ];
    for (i, (cfg, says)) in bad.into_iter().enumerate() {
        let opts = run_opts(cfg, runs.path(), &format!("bad-{i}"));
        let e = run_training(&ds, &engine::Device::Cpu, opts).unwrap_err().to_string();
        assert!(e.contains(says), "{says}: {e}");
        assert!(!runs.path().join(format!("bad-{i}")).exists(), "{says}: the run folder was made");
    }
    // Without --lr-max/--lr-min the range test runs first: too few images for one batch.
    let opts = RunOptions { lr_given: false, ..run_opts(TrainConfig { subset: Some(32), ..good.clone() }, runs.path(), "bad-range-test") };
    let e = run_training(&ds, &engine::Device::Cpu, opts).unwrap_err().to_string();
    assert!(e.contains("--batch-size 64 is more than the 32 training images"), "{e}");
    assert!(!runs.path().join("bad-range-test").exists(), "the run folder was made");
    // A run name must be one folder inside --out: not empty, no path, not . or ..
    for name in ["", ".", "..", "../escape", "a/b"] {
        let e = run_training(&ds, &engine::Device::Cpu, run_opts(good.clone(), runs.path(), name)).unwrap_err().to_string();
        assert!(e.contains("--name must be one folder name inside --out"), "{name:?}: {e}");
    }
    assert_eq!(std::fs::read_dir(runs.path()).unwrap().count(), 0, "a refused run wrote something");
    // --out naming a file: said so, not as an OS error.
    let file = runs.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = run_training(&ds, &engine::Device::Cpu, run_opts(good, &file, "run")).unwrap_err().to_string();
    assert!(e.contains("--out") && e.contains("is a file, not a folder"), "{e}");
}

/// A range test whose loss breaks at its first steps (logits scaled by 1e30: the first
/// update makes the weights non-finite) has no curve to read an LR from: the run stops with an
/// error that says so, instead of training from the range's first LR.
#[test]
fn a_range_test_that_diverges_at_once_suggests_nothing() {
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let runs = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { epochs: 1, batch_size: 64, subset: Some(256), width: 0.125, out_scale: 1e30, ..TrainConfig::default() };
    let lr_find = model::lr_find::LrFindConfig { steps: 20, ..Default::default() };
    let opts = RunOptions { lr_given: false, lr_find, ..run_opts(cfg, runs.path(), "diverges") };
    let e = run_training(&ds, &engine::Device::Cpu, opts).unwrap_err().to_string();
    assert!(e.contains("the LR range test diverged after") && e.contains("of its 20 steps") && e.contains("no LR can be read"), "{e}");
    assert!(!runs.path().join("diverges").join("model.safetensors").exists(), "a checkpoint was written");
}

/// A range test whose loss never falls (logits scaled by 1e-6: the loss stays at ln 10 and
/// the gradients vanish) suggests a point of a flat curve; the log says that this is no
/// reading of a fall.
#[test]
fn a_range_test_whose_loss_never_falls_says_so() {
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let runs = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { epochs: 1, batch_size: 64, subset: Some(256), width: 0.125, out_scale: 1e-6, ..TrainConfig::default() };
    let lr_find = model::lr_find::LrFindConfig { steps: 12, ..Default::default() };
    let opts = RunOptions { lr_given: false, lr_find, ..run_opts(cfg, runs.path(), "flat") };
    run_training(&ds, &engine::Device::Cpu, opts).unwrap();
    let log = std::fs::read_to_string(runs.path().join("flat/train.log")).unwrap();
    assert!(log.contains("no point where the loss starts to fall") && log.contains("Warning: the loss did not fall during the LR range test (12 steps"), "{log}");
}

/// A profiled step on the CPU marks every operation of the network once per use: 8
/// convolutions and 8 batch norms forward and backward, one SGD update, the batch.
#[test]
fn a_profiled_step_accounts_for_every_operation() {
    use model::pipeline::Pipeline;
    use model::train;
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let (mean, std) = data::augment::channel_stats(&ds.train);
    let norm = model::batches::Normalization { mean, std };
    let cfg = TrainConfig { batch_size: 16, width: 0.0625, ..TrainConfig::default() };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let mut net = model::resnet::ResNet9::new(cfg.width, 1.0, engine::DType::F32, &mut rng).unwrap();
    let mut pipeline = Pipeline::new(&engine::Device::Cpu, &ds.train, &ds.test).unwrap();
    let order = data::epoch_order(64, 0, 0);
    let params = train::epoch_aug_params(0, 0, 64, false);
    pipeline.begin_epoch(&ds.train, &order, &params).unwrap();
    let mut state = ops::sgd::SgdState::default();
    let p = train::profile_step(&mut net, &mut state, &ds.train, &mut pipeline, &order, &params, 0..16, norm, 0.01, &cfg, false).unwrap();
    let calls = |label: &str| p.rows.iter().find(|r| r.0 == label).map(|r| r.1).unwrap_or(0);
    assert_eq!(calls("conv2d forward"), 8, "{}", p.table());
    assert_eq!(calls("conv2d backward"), 8);
    assert_eq!(calls("batch_norm forward"), 8);
    assert_eq!(calls("batch_norm backward"), 8);
    assert_eq!(calls("max_pool2d forward"), 4, "3 pools in the layers and the final one");
    assert_eq!(calls("sgd update"), 1);
    assert_eq!(calls("data: augment batch"), 1);
    assert!(p.total_ms() > 0.0);
    // The same intervals by operation and output shape (width 1/16: 4-8-16-32 channels, batch
    // 16): each layer's own row; the two convolutions of a residual block share theirs.
    let detailed = |label: &str| p.detailed.iter().find(|r| r.0 == label).map(|r| r.1).unwrap_or(0);
    assert_eq!(detailed("conv2d forward [16, 4, 32, 32]"), 1, "{}", p.detail_table(usize::MAX));
    assert_eq!(detailed("conv2d forward [16, 8, 32, 32]"), 1);
    assert_eq!(detailed("conv2d forward [16, 8, 16, 16]"), 2);
    assert_eq!(detailed("conv2d backward [16, 32, 4, 4]"), 2);
    assert_eq!(detailed("max_pool2d forward [16, 32, 1, 1]"), 1, "the final pool");
    assert_eq!(detailed("sgd update"), 1, "a mark without a detail keeps its label");
    let conv_rows: usize = p.detailed.iter().filter(|r| r.0.starts_with("conv2d forward [")).map(|r| r.1).sum();
    assert_eq!(conv_rows, 8);
    let detailed_ms: f64 = p.detailed.iter().map(|r| r.2).sum();
    assert!((detailed_ms - p.total_ms()).abs() <= 1e-9 * p.total_ms(), "the same intervals, summed another way");
    // The step really trained: the momentum buffers exist now.
    assert!(state.momentum_buffers.iter().all(|b| b.is_some()));
}

/// A profiled evaluation batch marks the forward's operations only (no backward, no
/// update), the batch's assembly and the read of its logits; and profiling it changes
/// nothing: the BN running statistics are read, not updated, in eval mode.
#[test]
fn a_profiled_evaluation_batch_accounts_for_the_forward_only() {
    use model::pipeline::Pipeline;
    use model::train;
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let (mean, std) = data::augment::channel_stats(&ds.train);
    let norm = model::batches::Normalization { mean, std };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut net = model::resnet::ResNet9::new(0.0625, 1.0, engine::DType::F32, &mut rng).unwrap();
    let mut pipeline = Pipeline::new(&engine::Device::Cpu, &ds.train, &ds.test).unwrap();
    let bn_before: Vec<Vec<f32>> = net.bn.iter().map(|s| s.mean.to_f32_vec()).collect();
    let p = train::profile_eval_batch(&mut net, &ds.test, &mut pipeline, 5, 21, norm).unwrap();
    let calls = |label: &str| p.rows.iter().find(|r| r.0 == label).map(|r| r.1).unwrap_or(0);
    assert_eq!(calls("conv2d forward"), 8, "{}", p.table());
    assert_eq!(calls("batch_norm forward"), 8);
    assert_eq!(calls("max_pool2d forward"), 4);
    assert_eq!(calls("data: test batch"), 1);
    assert_eq!(calls("host: read logits"), 1);
    assert!(p.rows.iter().all(|r| !r.0.contains("backward") && r.0 != "sgd update"), "{}", p.table());
    let bn_after: Vec<Vec<f32>> = net.bn.iter().map(|s| s.mean.to_f32_vec()).collect();
    assert_eq!(bn_before, bn_after, "an evaluation batch moved the running statistics");
}

/// `--fused-bn-relu` on the CPU: the fused op's reference is batch norm then ReLU, so two
/// SGD steps give bit-identical losses, parameters and BN statistics with and without it.
#[test]
fn fused_bn_relu_steps_equal_unfused_steps_on_the_cpu() {
    use model::pipeline::Batch;
    use model::resnet::ResNet9;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let x = engine::Tensor::randn(&[4, 3, 32, 32], engine::DType::F32, 1.0, &mut rng);
    let labels = vec![1u32, 7, 3, 3];
    let run = |fused: bool, separate_residual_add: bool| {
        let cfg = TrainConfig { width: 0.125, fused_bn_relu: fused, separate_residual_add, ..TrainConfig::default() };
        let mut net = ResNet9::new(cfg.width, 1.0, engine::DType::F32, &mut rand_chacha::ChaCha8Rng::seed_from_u64(4)).unwrap();
        cfg.apply_to(&mut net.arch);
        let mut state = ops::sgd::SgdState::default();
        let mut losses = Vec::new();
        for _ in 0..2 {
            let batch = Batch { x: x.clone(), labels: labels.clone(), device_labels: None };
            losses.push(model::train::train_step(&mut net, &mut state, batch, 0.05, &cfg).unwrap().loss);
        }
        let params: Vec<Vec<f64>> = net.params.iter().map(|p| p.to_f64_vec()).collect();
        let stats: Vec<Vec<f64>> = net.bn.iter().map(|s| s.var.to_f64_vec()).collect();
        (losses, params, stats)
    };
    let (fused, plain) = (run(true, false), run(false, false));
    assert!(fused.0.iter().all(|l| l.is_finite()));
    assert_eq!(fused, plain);
    // The residual add fused into the block's last batch norm + ReLU, or not: the same too.
    assert_eq!(run(true, true), plain);
}

/// GPU-only options on the CPU: one clear error before anything is written (no run folder).
#[test]
fn gpu_only_options_are_refused_on_the_cpu_before_writing_anything() {
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().to_path_buf();
    let base = run_opts(TrainConfig { lr_min: 0.01, lr_max: 0.1, ..TrainConfig::default() }, &runs, "x");
    let cases = [
        RunOptions { cuda_graph: true, ..base.clone() },
        RunOptions { cfg: TrainConfig { bf16: true, ..base.cfg.clone() }, ..base.clone() },
        RunOptions { cfg: TrainConfig { channels_last: true, ..base.cfg.clone() }, ..base.clone() },
    ];
    for opts in cases {
        let err = run_training(&ds, &engine::Device::Cpu, opts).unwrap_err().to_string();
        assert!(err.contains("CUDA GPU only"), "{err}");
        assert!(!runs.join("x").exists(), "a run folder was written");
    }
}

/// Flip test-time augmentation (`--tta`) scores the mean of the logits of each image and of
/// its mirror image; the plain figures are those of an evaluation without it. Checked on
/// the first 1,000 test images (a split file written here) against logits computed by
/// hand: the model's forward on the plain batch and on the batch with every row of 32
/// pixels reversed, then argmax and cross-entropy in f64. Tolerance 1e-5 relative on the
/// loss: the engine averages f32 logits and computes the loss in f32.
#[test]
fn flip_tta_scores_the_mean_of_plain_and_mirrored_logits() {
    use model::batches::{Normalization, eval_batch};
    use model::pipeline::Pipeline;
    use model::resnet::ResNet9;
    use rand::SeedableRng;
    let n = 1000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, full) = data::cifar::open_file(&cifar_dir(), "test_batch.bin").unwrap();
    std::fs::write(dir.join("part.bin"), &full[..n * 3073]).unwrap();
    let split = data::Split::open(dir, &["part.bin"], n).unwrap();
    let norm = Normalization { mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26] };
    let mut net = ResNet9::new(0.125, 0.125, engine::DType::F32, &mut rand_chacha::ChaCha8Rng::seed_from_u64(8)).unwrap();
    let with = model::train::evaluate(&mut net, &split, &mut Pipeline::Host, norm, 300, true, true).unwrap();
    let without = model::train::evaluate(&mut net, &split, &mut Pipeline::Host, norm, 300, true, false).unwrap();
    assert!(without.tta.is_none());
    assert_eq!((with.correct, with.loss, &with.misclassified), (without.correct, without.loss, &without.misclassified));

    let forward = |net: &mut ResNet9, x: engine::Tensor| -> Vec<f64> {
        let mut g = ops::Graph::new(&net.params);
        let input = g.input(x);
        let logits = net.arch.forward(&mut g, input, false, &mut net.bn).unwrap();
        g.value(logits).to_f64_vec()
    };
    let (mut correct, mut loss, mut moved) = (0, 0.0, 0.0f64);
    for start in (0..n).step_by(300) {
        let end = (start + 300).min(n);
        let (x, labels) = eval_batch(&split, start, end, norm, false).unwrap();
        let mut mirrored = x.to_f32_vec();
        mirrored.chunks_exact_mut(32).for_each(<[f32]>::reverse);
        let a = forward(&mut net, x);
        let b = forward(&mut net, engine::Tensor::new(&[end - start, 3, 32, 32], mirrored).unwrap());
        for (i, &label) in labels.iter().enumerate() {
            let row: Vec<f64> = (0..10).map(|k| (a[i * 10 + k] + b[i * 10 + k]) / 2.0).collect();
            moved = moved.max((0..10).map(|k| (a[i * 10 + k] - b[i * 10 + k]).abs()).fold(0.0, f64::max));
            let best = (0..10).fold(0, |best, k| if row[k] > row[best] { k } else { best });
            correct += usize::from(best == label as usize);
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            loss += m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - row[label as usize];
        }
    }
    assert!(moved > 1e-4, "the mirrored images gave the same logits: the flip did nothing");
    let tta = with.tta.unwrap();
    assert_eq!(tta.correct, correct);
    let loss = loss / n as f64;
    assert!((tta.loss - loss).abs() <= 1e-5 * loss, "TTA loss {} vs {loss}", tta.loss);
}

/// `--ema` changes what is evaluated and saved, not the training: with the same seed the
/// trained weights and BN statistics at the end (`trained.*` in the EMA run's
/// `optimizer.safetensors`) are those of a run without it, bit for bit, the training losses of
/// every epoch in `metrics.csv` are the same, and the trained weights' accuracy that the EMA run
/// reports at the end is the other run's final accuracy. The test accuracies of each epoch, and `model.safetensors`, are the average's:
/// a network loaded from that file scores the run's final accuracy, and resuming the
/// finished run (the average from `model.safetensors`, the trained weights from
/// `optimizer.safetensors`) reports both figures again unchanged.
#[test]
fn ema_evaluates_the_average_and_leaves_training_alone() {
    use model::batches::Normalization;
    use model::pipeline::Pipeline;
    use model::resnet::ResNet9;
    use rand::SeedableRng;
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().to_path_buf();
    // 24 steps an epoch: averages after steps 5, 10, ..., 45 (4 in the first epoch, 5 in the second).
    let cfg = TrainConfig { epochs: 2, batch_size: 64, subset: Some(1536), width: 0.125, peak_epoch: 1, lr_min: 0.01, lr_max: 0.1, ..TrainConfig::default() };
    let opts = |name: &str, ema: bool| run_opts(TrainConfig { ema, ..cfg.clone() }, &runs, name);
    let plain_acc = run_training(&ds, &engine::Device::Cpu, opts("plain", false)).unwrap();
    let ema_acc = run_training(&ds, &engine::Device::Cpu, opts("ema", true)).unwrap();
    let plain = read_metrics(&runs.join("plain/metrics.csv")).unwrap();
    let ema = read_metrics(&runs.join("ema/metrics.csv")).unwrap();
    assert_eq!(plain.iter().map(|r| r.train_loss).collect::<Vec<_>>(), ema.iter().map(|r| r.train_loss).collect::<Vec<_>>());
    let load = |f: &dyn Fn(&std::path::Path, &mut ResNet9) -> model::Result<()>, path: &str| {
        let mut net = ResNet9::new(cfg.width, cfg.out_scale, engine::DType::F32, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).unwrap();
        f(&runs.join(path), &mut net).unwrap();
        net
    };
    let load_model = |p: &std::path::Path, net: &mut ResNet9| model::checkpoint::load_model(p, net).map(drop);
    let (without, trained_with) = (load(&load_model, "plain/model.safetensors"), load(&model::checkpoint::load_trained, "ema/optimizer.safetensors"));
    for (i, (a, b)) in without.params.iter().zip(&trained_with.params).enumerate() {
        assert_eq!(a.to_f32_vec(), b.to_f32_vec(), "parameter {i}");
    }
    for (i, (a, b)) in without.bn.iter().zip(&trained_with.bn).enumerate() {
        assert_eq!((a.mean.to_f32_vec(), a.var.to_f32_vec()), (b.mean.to_f32_vec(), b.var.to_f32_vec()), "BN {i}");
    }
    assert_ne!(plain.iter().map(|r| r.test_loss).collect::<Vec<_>>(), ema.iter().map(|r| r.test_loss).collect::<Vec<_>>(), "the average was not what was evaluated");
    assert_eq!(ema.last().unwrap().test_acc, ema_acc);

    let log = std::fs::read_to_string(runs.join("ema/train.log")).unwrap();
    assert!(log.contains(", EMA of the weights evaluated"), "{log}");
    let line = |log: &str| log.lines().filter(|l| l.starts_with("Trained weights without EMA: ")).map(String::from).collect::<Vec<_>>();
    let trained = line(&log);
    assert_eq!(trained.len(), 1, "{log}");
    assert!(trained[0].ends_with(&format!("({plain_acc:.2}%)")), "{} vs the run without EMA: {plain_acc:.2}%", trained[0]);
    assert!(line(&std::fs::read_to_string(runs.join("plain/train.log")).unwrap()).is_empty());

    // model.safetensors is the average that scored ema_acc.
    let mut net = load(&load_model, "ema/model.safetensors");
    let (mean, std) = data::augment::channel_stats(&ds.train);
    let e = model::train::evaluate(&mut net, &ds.test, &mut Pipeline::Host, Normalization { mean, std }, cfg.batch_size, false, false).unwrap();
    assert_eq!(e.accuracy(), ema_acc);

    let resumed = run_training(&ds, &engine::Device::Cpu, RunOptions { resume: true, ..opts("ema", false) }).unwrap();
    assert_eq!(resumed, ema_acc);
    let log = std::fs::read_to_string(runs.join("ema/train.log")).unwrap();
    assert_eq!(line(&log), vec![trained[0].clone(); 2], "{log}");
}

/// The moving average survives a stop between epochs exactly: one epoch, the checkpoint files
/// written and read back as `--resume` does (the average in `model.safetensors`, the trained
/// weights beside the momentum buffers in `optimizer.safetensors`), then the second epoch in fresh
/// networks, end with the same bits as two epochs without the round trip, for the trained weights
/// and for the average. 8 steps an epoch: the averages fall after steps 5, 10 and 15 of the
/// run, one in the first epoch and two in the second, which counts its steps on from the
/// first's (counting from 1 again, it would average once, after its fifth).
#[test]
fn an_ema_run_stopped_between_epochs_continues_exactly() {
    use model::batches::Normalization;
    use model::checkpoint;
    use model::ema::Ema;
    use model::pipeline::Pipeline;
    use model::resnet::ResNet9;
    use model::train::train_epoch;
    use ops::sgd::SgdState;
    use rand::SeedableRng;
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let (mean, std) = data::augment::channel_stats(&ds.train);
    let norm = Normalization { mean, std };
    let cfg = TrainConfig { epochs: 2, batch_size: 64, subset: Some(512), width: 0.125, peak_epoch: 1, lr_min: 0.01, lr_max: 0.1, ema: true, ..TrainConfig::default() };
    assert_eq!(cfg.steps_per_epoch(&ds.train), 8);
    let fresh = || ResNet9::new(cfg.width, cfg.out_scale, engine::DType::F32, &mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed)).unwrap();
    let epoch = |net: &mut ResNet9, state: &mut SgdState, ema: &mut Ema, e: usize| {
        train_epoch(net, state, &ds.train, &mut Pipeline::Host, norm, &cfg, e, None, Some(ema), |_, _, _, _| {}).unwrap();
    };

    let (mut net, mut state) = (fresh(), SgdState::default());
    let mut ema = Ema::new(&net).unwrap();
    epoch(&mut net, &mut state, &mut ema, 0);
    epoch(&mut net, &mut state, &mut ema, 1);
    assert_eq!(ema.updates(), 3);

    let tmp = tempfile::tempdir().unwrap();
    let (model_path, opt_path) = (tmp.path().join("model.safetensors"), tmp.path().join("optimizer.safetensors"));
    let (mut first, mut first_state) = (fresh(), SgdState::default());
    let mut first_ema = Ema::new(&first).unwrap();
    epoch(&mut first, &mut first_state, &mut first_ema, 0);
    assert_eq!(first_ema.updates(), 1);
    checkpoint::save_model(&model_path, &first_ema.model, Some(1)).unwrap();
    checkpoint::save_optimizer(&opt_path, &first, &first_state, cfg.to_meta(), Some(&first)).unwrap();
    let (mut average, mut resumed) = (fresh(), fresh());
    checkpoint::load_model(&model_path, &mut average).unwrap();
    checkpoint::load_trained(&opt_path, &mut resumed).unwrap();
    let (mut resumed_state, _) = checkpoint::load_optimizer(&opt_path, &resumed).unwrap();
    let mut resumed_ema = Ema::from_model(average);
    epoch(&mut resumed, &mut resumed_state, &mut resumed_ema, 1);
    assert_eq!(resumed_ema.updates(), 2);

    let tensors = |m: &ResNet9| -> Vec<Vec<f32>> { m.params.iter().chain(m.bn.iter().flat_map(|s| [&s.mean, &s.var])).map(|t| t.to_f32_vec()).collect() };
    assert_eq!(tensors(&resumed), tensors(&net), "the trained weights");
    assert_eq!(tensors(&resumed_ema.model), tensors(&ema.model), "the moving average");
    assert_ne!(tensors(&ema.model), tensors(&net), "the average is the trained weights");
}

/// The figures of a `Start-up:` or `After training:` line after its title: each phase's name
/// and seconds (notes in parentheses dropped), and the seconds of each `; `-separated part
/// after the phases (the total, ...), in order. Panics, naming the line, on a figure that is
/// not a number of seconds.
fn time_line_figures(line: &str, title: &str) -> (Vec<(String, f64)>, Vec<f64>) {
    let seconds = |s: &str| -> f64 { s.strip_suffix('s').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{s:?} is not seconds in {line}")) };
    let rest = line.strip_prefix(title).and_then(|r| r.strip_prefix(": ")).unwrap_or_else(|| panic!("not a {title} line: {line}"));
    // Notes hold commas of their own ("9 from the cache, 2 compiled"): drop them first.
    let (mut plain, mut depth) = (String::new(), 0);
    for c in rest.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut parts = plain.split("; ");
    let phases = parts.next().unwrap_or_default().split(", ").map(|p| {
        let (name, s) = p.trim().rsplit_once(' ').unwrap_or_else(|| panic!("{p:?} in {line}"));
        (name.to_string(), seconds(s))
    });
    let totals = parts.map(|p| p.split_whitespace().find(|w| w.ends_with('s') && w.starts_with(|c: char| c.is_ascii_digit())).map(seconds).unwrap_or_else(|| panic!("no seconds in {p:?} of {line}")));
    (phases.collect(), totals.collect())
}

/// The log's `Start-up:` line (just before `EPOCH: 1`) and `After training:` line (the last):
/// every figure a number of seconds, none negative, the phases adding up to no more than the
/// totals printed beside them, and start-up, epochs (metrics.csv) and the time after them
/// together no more than the wall time of the whole sequence, timed here as the binary times
/// it (the device, the data files, then the run). Each printed figure is rounded to the
/// hundredth (metrics.csv's to the thousandth): a sum may exceed the total by half a hundredth
/// per figure, so that much is allowed.
#[test]
fn the_log_accounts_for_the_time_outside_the_epochs() {
    let wall = std::time::Instant::now();
    let mut clock = PhaseClock::start();
    let device = clock.time("device", || engine::Device::Cpu);
    let ds = clock.time("data", || data::Cifar10::open(&cifar_dir()).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { epochs: 1, batch_size: 64, subset: Some(256), width: 0.125, peak_epoch: 1, lr_min: 0.01, lr_max: 0.1, ..TrainConfig::default() };
    run_training_timed(&ds, &device, run_opts(cfg, tmp.path(), "timed"), clock).unwrap();
    let wall = wall.elapsed().as_secs_f64();
    let dir = tmp.path().join("timed");
    let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("Start-up: ")).unwrap_or_else(|| panic!("no start-up line:\n{log}"));
    assert!(lines[at + 1].starts_with("EPOCH: 1 "), "the start-up line is not just before the first epoch:\n{log}");
    let (phases, totals) = time_line_figures(lines[at], "Start-up");
    let names: Vec<&str> = phases.iter().map(|(n, _)| n.as_str()).collect();
    // On the CPU: no kernels, and no LR range test (the LRs are given).
    assert_eq!(names, ["device", "data", "network", "pixel statistics", "dataset to device"], "{}", lines[at]);
    assert_eq!(totals.len(), 1, "{}", lines[at]);
    let startup = totals[0];
    let slack = |figures: usize| 0.005 * figures as f64;
    assert!(phases.iter().all(|(_, s)| *s >= 0.0) && startup >= 0.0, "{}", lines[at]);
    assert!(phases.iter().map(|(_, s)| s).sum::<f64>() <= startup + slack(phases.len() + 1), "{}", lines[at]);
    let last = lines.last().unwrap();
    assert!(last.ends_with("s)") && last.contains("after the last epoch; the epochs spent "), "{last}");
    let (after_phases, after_totals) = time_line_figures(last, "After training");
    let after_names: Vec<&str> = after_phases.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(after_names, ["plots", "checkpoint wait"], "{last}");
    let [after, between] = after_totals[..] else { panic!("{last}") };
    assert!(after_phases.iter().all(|(_, s)| *s >= 0.0) && after >= 0.0 && between >= 0.0, "{last}");
    assert!(after_phases.iter().map(|(_, s)| s).sum::<f64>() <= after + slack(after_phases.len() + 1), "{last}");
    let rows = read_metrics(&dir.join("metrics.csv")).unwrap();
    let epochs: f64 = rows.iter().map(|r| r.seconds + r.eval_seconds).sum();
    let accounted = startup + epochs + between + after;
    assert!(accounted <= wall + slack(3) + 0.001 * rows.len() as f64, "start-up {startup}, epochs {epochs}, between {between}, after {after}: {accounted} s > the wall time {wall} s\n{log}");
}

/// `model eval` on a run folder scores what the run's log printed after its last epoch: the
/// same count, with and without flip TTA, and the same loss (metrics.csv keeps 6 decimals:
/// tolerance 1e-6). The same weights in a file as PyTorch writes it (no channel counts, logit
/// scale or normalisation in its metadata) load from their shapes, score the same count with
/// the normalisation computed from the training files (the run's own: same files) and in
/// batches of another size (the CPU's eval-mode forward treats each image alone), and the
/// scale they do not record must be given. The confusion matrix's rows hold each class's
/// 1,000 test images and its trace the correct count. The checkpoint says which data the run
/// read (its log's `Data:` line); bare weights say nothing of it.
#[test]
fn eval_of_a_run_folder_scores_what_the_run_logged() {
    use model::eval::{EvalRequest, evaluate_checkpoint};
    let ds = data::Cifar10::open(&cifar_dir()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().to_path_buf();
    let cfg = TrainConfig { epochs: 1, batch_size: 128, subset: Some(1024), width: 0.125, peak_epoch: 1, lr_min: 0.01, lr_max: 0.1, tta: true, ..TrainConfig::default() };
    run_training(&ds, &engine::Device::Cpu, run_opts(cfg, &runs, "e")).unwrap();
    let dir = runs.join("e");
    let logged = read_metrics(&dir.join("metrics.csv")).unwrap().pop().unwrap();
    let count = |percent: f64| (percent * 100.0).round() as usize;
    let mut lines = Vec::new();
    let req = EvalRequest { path: dir.clone(), tta: true, batch_size: None, plain: false, out_scale: None };
    let got = evaluate_checkpoint(&ds, &engine::Device::Cpu, &req, &mut |l| lines.push(l.to_string())).unwrap();
    assert_eq!(got.stats.correct, count(logged.test_acc), "{lines:#?}");
    assert_eq!(got.stats.tta_accuracy().map(count), logged.test_acc_tta.map(count));
    assert!((got.stats.loss - logged.test_loss).abs() <= 1e-6, "loss {} vs {} logged", got.stats.loss, logged.test_loss);
    assert!(lines.iter().any(|l| l.contains("batches of 128") && l.contains("f32 reference path")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("saved in the file")), "the run's normalisation was not read: {lines:#?}");
    // The data the run read, as its log's `Data:` line says it, recorded in the checkpoint.
    let trained_on = format!("Trained on: {}", ds.source);
    assert!(lines.contains(&trained_on), "no `{trained_on}` in {lines:#?}");
    assert!(std::fs::read_to_string(dir.join("train.log")).unwrap().contains(&format!("\nData: {}\n", ds.source)));
    assert_eq!(got.confusion.correct(), got.stats.correct);
    assert!((0..10).all(|t| got.confusion.class_total(t) == 1000), "{:?}", got.confusion);

    // The weights alone, as PyTorch's safetensors writes them.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let bare = runs.join("bare.safetensors");
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(&bare, safetensors::serialize(st.tensors(), Some(meta)).unwrap()).unwrap();
    let req = EvalRequest { path: bare.clone(), tta: false, batch_size: None, plain: false, out_scale: None };
    let e = evaluate_checkpoint(&ds, &engine::Device::Cpu, &req, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("give --out-scale"), "{e}");
    let mut lines = Vec::new();
    let req = EvalRequest { out_scale: Some(0.125), batch_size: Some(1000), ..req };
    let again = evaluate_checkpoint(&ds, &engine::Device::Cpu, &req, &mut |l| lines.push(l.to_string())).unwrap();
    assert_eq!(again.stats.correct, got.stats.correct, "{lines:#?}");
    assert_eq!(again.confusion, got.confusion);
    assert!((again.stats.loss - got.stats.loss).abs() <= 1e-6 * got.stats.loss, "{} vs {}", again.stats.loss, got.stats.loss);
    assert!(again.stats.tta.is_none());
    assert!(lines.iter().any(|l| l.contains("of the training files read")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.starts_with("Trained on:")), "bare weights say what they were trained on: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains("channels [8, 16, 32, 64]") && l.contains("logits x 0.125")), "{lines:#?}");
}
