//! A training run as the user starts it: the run folder, the log, the LR range
//! test, the epochs, metrics, plots and checkpoints, and `--resume`.
//!
//! `runs/<name>/` holds:
//! - `train.log`: everything printed (minus the progress bar);
//! - `metrics.csv`: one row per epoch (LR, train loss/accuracy, test loss/accuracy, seconds of
//!   training, seconds of test evaluation), written at the end of every epoch;
//! - `loss.png`, `accuracy.png`: train and test curves; `lr.png`: the LR of every step (written
//!   when the run ends, so that plotting does not slow the epochs down);
//! - `lr_find.png`, `lr_find.csv`: the range test, when it ran;
//! - `misclassified.png`: test images the final model gets wrong;
//! - `model.safetensors` (PyTorch `state_dict`; with `--ema` the moving average of the
//!   weights) and `optimizer.safetensors` (for `--resume`), written atomically at the end of
//!   every epoch;
//! - `model.prev.safetensors`, `optimizer.prev.safetensors`, `metrics.prev.csv`: the three
//!   files of the epoch before, which `--resume` takes when the last ones cannot be used
//!   (`RunFiles`, `read_checkpoint`).

use crate::batches::Normalization;
use crate::checkpoint;
use crate::ema::Ema;
use crate::graph::StepGraph;
use crate::image_grid::{GridImage, write_image_grid};
use crate::lr_find::{self, LrFindConfig};
use crate::plots::{LinePlot, Series, write_line_plot};
use crate::resnet::ResNet9;
use crate::saver::Saver;
use engine::download::StagingPool;
use crate::startup::PhaseClock;
use crate::train::{self, TrainConfig};
use crate::{Error, Result};
use engine::cuda::{ConvSearch, Precompiled};
use data::Cifar10;
use crate::pipeline::Pipeline;
use engine::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use ops::sgd::SgdState;
use rand::SeedableRng;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Prints a line and appends it to the run's `train.log`.
pub struct Logger {
    file: Option<std::fs::File>,
}

impl Logger {
    /// Log to stdout and, if given, to the file at `path` (appended).
    pub fn new(path: Option<&Path>) -> Result<Logger> {
        let file = match path {
            Some(p) => Some(std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| Error::io(p, e))?),
            None => None,
        };
        Ok(Logger { file })
    }

    /// Print `line` and append it to the log file.
    pub fn line(&mut self, line: &str) {
        // Not println!, which panics when stdout is gone (`model train | head`): the run goes
        // on, and the log file still gets the line.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
        self.file_only(line);
    }

    /// Append `line` to the log file only (a line printed elsewhere, such as the error the
    /// binary prints on stderr).
    pub fn file_only(&mut self, line: &str) {
        if let Some(f) = &mut self.file {
            // A full disk must not kill a run that is otherwise fine: the line was printed.
            let _ = writeln!(f, "{line}");
        }
    }
}

/// One row of `metrics.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    /// Seconds of training (the epoch's steps, until the GPU finished them).
    pub seconds: f64,
    /// Seconds of the test-set evaluation after the epoch.
    pub eval_seconds: f64,
    /// Test accuracy with flip test-time augmentation (`--tta`), if measured.
    pub test_acc_tta: Option<f64>,
}

const CSV_HEADER: &str = "epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds,eval_seconds,test_acc_tta";

/// Write all rows to `metrics.csv` (atomically).
pub fn write_metrics(path: &Path, rows: &[EpochRecord]) -> Result<()> {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&format!(
            "{},{:.6e},{:.6},{:.4},{:.6},{:.4},{:.3},{:.3},{}\n",
            r.epoch,
            r.lr,
            r.train_loss,
            r.train_acc,
            r.test_loss,
            r.test_acc,
            r.seconds,
            r.eval_seconds,
            r.test_acc_tta.map(|a| format!("{a:.4}")).unwrap_or_default()
        ));
    }
    checkpoint::write_atomic(path, s.as_bytes())
}

/// Read `metrics.csv` back (for `--resume`).
pub fn read_metrics(path: &Path) -> Result<Vec<EpochRecord>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // Not text: a damaged file (the previous epoch's may take its place), not an I/O error.
    let text = String::from_utf8(bytes).map_err(|_| Error::Invalid(format!("{}: not a text file (damaged)", path.display())))?;
    let bad = |n: usize| Error::Invalid(format!("{}: line {n} is not a metrics row", path.display()));
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1).filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        // 7 columns: written before eval_seconds existed (read as 0); 8: before test_acc_tta.
        if !(7..=9).contains(&f.len()) {
            return Err(bad(n + 1));
        }
        let num = |i: usize| f[i].parse::<f64>().map_err(|_| bad(n + 1));
        rows.push(EpochRecord {
            epoch: f[0].parse().map_err(|_| bad(n + 1))?,
            lr: num(1)?,
            train_loss: num(2)?,
            train_acc: num(3)?,
            test_loss: num(4)?,
            test_acc: num(5)?,
            seconds: num(6)?,
            eval_seconds: if f.len() >= 8 { num(7)? } else { 0.0 },
            test_acc_tta: if f.len() == 9 && !f[8].trim().is_empty() { Some(num(8)?) } else { None },
        });
    }
    Ok(rows)
}

/// Everything the `train` command needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub cfg: TrainConfig,
    /// `--lr-max`/`--lr-min` given by the user: skip the range test.
    pub lr_given: bool,
    pub lr_find: LrFindConfig,
    pub runs_dir: PathBuf,
    pub name: Option<String>,
    pub resume: bool,
    pub progress: bool,
    /// Capture the training step as a CUDA graph and replay it (GPU only; see `graph`).
    pub cuda_graph: bool,
    /// The recipe settings (keys of [`TrainConfig::to_meta`]) the command line gave
    /// explicitly: `--resume` refuses any of them that differ from the checkpoint's, instead
    /// of dropping them unsaid.
    pub explicit: Vec<String>,
}

/// An error if a GPU-only option is asked for on the CPU.
pub(crate) fn gpu_only(device: &Device, bf16: bool, channels_last: bool, cuda_graph: bool) -> Result<()> {
    if (bf16 || channels_last || cuda_graph) && !device.is_cuda() {
        return Err(Error::Invalid("--bf16, --channels-last and --cuda-graph run on a CUDA GPU only".into()));
    }
    Ok(())
}

/// Create folder `path` (and its parents) unless it exists; `what` names it in the error
/// when it is a file (an OS error alone would say "File exists").
pub fn make_folder(path: &Path, what: &str) -> Result<()> {
    if path.exists() && !path.is_dir() {
        return Err(Error::Invalid(format!("{what} {} is a file, not a folder", path.display())));
    }
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

/// `--name`: one folder name inside `--out` (not empty, no path separator, not `.` or `..`:
/// a run's files must not land loose in `--out` or outside it).
fn check_run_name(name: &str) -> Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        return Err(Error::Invalid(format!("--name must be one folder name inside --out (no '/', not '.' or '..'), got {name:?}")));
    }
    Ok(name)
}

/// The first `runs_dir/run-N` that does not exist.
fn fresh_run_name(runs_dir: &Path) -> String {
    (1..).map(|i| format!("run-{i}")).find(|n| !runs_dir.join(n).exists()).unwrap_or_else(|| "run".into())
}

fn progress_bar(len: usize, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:30.cyan/blue} {pos:>4}/{len} [{elapsed_precise}<{eta_precise}] {msg}") {
        pb.set_style(style);
    }
    pb
}

/// On a GPU, load every kernel file of `ptx/` now, from the kernel cache or compiled by NVRTC
/// one thread each (`CudaDevice::precompile`), instead of one file at a time as the first
/// steps need them. Returns what was done and the line to log ([`kernels_line`]); `None` on
/// the CPU.
pub(crate) fn precompile_kernels(device: &Device) -> Result<Option<(Precompiled, String)>> {
    let Device::Cuda(d) = device else { return Ok(None) };
    let t = std::time::Instant::now();
    let done = d.precompile(&ops::kernels::SOURCES)?;
    let cache = d.kernel_cache();
    let line = kernels_line(&done, cache.as_ref().map(|c| c.dir()), t.elapsed().as_secs_f64());
    Ok(Some((done, line)))
}

/// The log line of a precompile that took `seconds`, with the kernel cache's folder `cache`
/// (`None`: the cache is off): `Compiled our CUDA kernels (11 files, NVRTC, one thread each)
/// in 0.27s; kept in DIR for the next run` when nothing was cached (or `; not kept (why)`, or
/// `; kernel cache off`), `Loaded our CUDA kernels (11 files from the cache in DIR) in 0.01s`
/// when everything was, and `Loaded our CUDA kernels (9 files from the cache in DIR, 2
/// compiled by NVRTC, one thread each) in 0.05s; ...` in between.
fn kernels_line(done: &Precompiled, cache: Option<&Path>, seconds: f64) -> String {
    let dir = cache.map(|d| d.display().to_string()).unwrap_or_default();
    let kept = match (cache, &done.cache_error) {
        _ if done.compiled == 0 => String::new(),
        (None, _) => "; kernel cache off".to_string(),
        (Some(_), Some(why)) => format!("; not kept ({why})"),
        (Some(_), None) => format!("; kept in {dir} for the next run"),
    };
    let what = match (done.from_cache, done.compiled) {
        (0, n) => format!("Compiled our CUDA kernels ({n} files, NVRTC, one thread each)"),
        (c, 0) => format!("Loaded our CUDA kernels ({c} files from the cache in {dir})"),
        (c, n) => format!("Loaded our CUDA kernels ({c} files from the cache in {dir}, {n} compiled by NVRTC, one thread each)"),
    };
    format!("{what} in {seconds:.2}s{kept}")
}

/// The note after the kernels' seconds in the start-up line: where the files came from.
fn kernels_note(done: &Precompiled) -> String {
    match (done.from_cache, done.compiled) {
        (0, _) => "compiled".to_string(),
        (_, 0) => "from the cache".to_string(),
        (c, n) => format!("{c} from the cache, {n} compiled"),
    }
}

/// Train as configured; returns the final test accuracy in percent. (The log's `Start-up:`
/// line counts from this call: see [`run_training_timed`].)
pub fn run_training(ds: &Cifar10, device: &Device, opts: RunOptions) -> Result<f64> {
    run_training_timed(ds, device, opts, PhaseClock::start())
}

/// [`run_training`], with the phases measured before it in `clock` (the binary's `main`
/// starts it and measures opening the device and the data files): the run adds its own, and
/// logs them all in its `Start-up:` line before the first epoch (`startup.rs`).
pub fn run_training_timed(ds: &Cifar10, device: &Device, opts: RunOptions, mut clock: PhaseClock) -> Result<f64> {
    // Before anything is written. (A resumed run's settings come from its checkpoint: checked below.)
    opts.cfg.check(opts.lr_given)?;
    if !opts.resume && !opts.lr_given {
        lr_find::check(&opts.lr_find, &opts.cfg, &ds.train)?;
    }
    gpu_only(device, opts.cfg.bf16, opts.cfg.channels_last, opts.cuda_graph)?;
    make_folder(&opts.runs_dir, "--out")?;
    let name = match &opts.name {
        Some(n) => check_run_name(n)?.to_string(),
        None if opts.resume => return Err(Error::Invalid("--resume needs --name NAME of the run to continue".into())),
        None => fresh_run_name(&opts.runs_dir),
    };
    let dir = opts.runs_dir.join(&name);
    // The checkpoint files of the last epoch, and those of the epoch before.
    let (files, prev) = (RunFiles::new(&dir, ""), RunFiles::new(&dir, PREV));
    if opts.resume {
        if !files.opt.exists() && !prev.opt.exists() {
            return Err(Error::Invalid(format!(
                "nothing to resume: {} does not exist (a run stopped before it saved its first epoch starts again without --resume)",
                files.opt.display()
            )));
        }
    } else if files.opt.exists() {
        // (model.safetensors and metrics.csv without optimizer.safetensors, written last, are a
        // run stopped while it saved its first epoch: nothing to resume, so it may start again.)
        return Err(Error::Invalid(format!(
            "{} already holds a run; pass --resume to continue it, or choose another --name",
            dir.display()
        )));
    }
    // The run's settings, network, optimizer state and history, and with --ema the average
    // read back from the checkpoint; all checked before the run folder is touched. A
    // checkpoint that cannot be used (a run stopped while it saved its files, or a file damaged
    // since) gives way to the previous epoch's, kept beside it.
    let mut recovered = None;
    let network_start = std::time::Instant::now();
    let start = if opts.resume {
        let r = match read_checkpoint(&files, &opts) {
            Ok(r) => r,
            // The command line's fault, or a file that could not be read right now (not a
            // missing or damaged one): nothing the previous epoch's files would mend.
            Err(e) if !unusable_checkpoint(&e) => return Err(e),
            Err(last) => {
                if !prev.opt.exists() {
                    return Err(Error::Invalid(format!(
                        "{last}. The files are left as they are (start a new run under another --name)"
                    )));
                }
                match read_checkpoint(&prev, &opts) {
                    Ok(r) => {
                        recovered = Some(last);
                        r
                    }
                    Err(e @ Error::OtherSettings(_)) => return Err(e),
                    Err(e) => {
                        return Err(Error::Invalid(format!(
                            "{last}; the previous epoch's checkpoint beside it cannot be used either ({e}). The files are left as \
                             they are (start a new run under another --name)"
                        )));
                    }
                }
            }
        };
        // The recipe comes from the checkpoint; --tta only adds to the evaluation, so the
        // command line's choice holds (as --cuda-graph's does).
        Checkpoint { cfg: TrainConfig { tta: opts.cfg.tta, ..r.cfg }, ..r }
    } else {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.cfg.seed);
        let model = ResNet9::new(opts.cfg.width, opts.cfg.out_scale, DType::F32, &mut rng)?;
        Checkpoint { cfg: opts.cfg.clone(), model, state: SgdState::default(), rows: Vec::new(), average: None }
    };
    clock.add(NETWORK, network_start.elapsed().as_secs_f64());
    if opts.resume {
        clock.note(NETWORK, "read from the checkpoint".into());
    }
    gpu_only(device, start.cfg.bf16, start.cfg.channels_last, false)?;
    if recovered.is_some() {
        // The previous epoch's files become the run's again, so that the next checkpoint keeps
        // them, not the unusable ones, as its previous.
        prev.restore_over(&files)?;
    }
    make_folder(&dir, "the run folder")?;
    let mut log = Logger::new(Some(&dir.join("train.log")))?;
    log.line(&format!("Device: {device}"));
    log.line(&format!("Data: {}", ds.source));
    if let Some(why) = &recovered {
        log.line(&format!("The last checkpoint cannot be used ({why}): resuming from the previous epoch's, kept beside it"));
    }
    if opts.resume {
        log.line(&format!("Resuming {} after epoch {} of {}", dir.display(), start.rows.len(), start.cfg.epochs));
    }
    let result = train_run(ds, device, &opts, start, &dir, &mut log, &mut clock);
    if let Err(e) = &result {
        // The log ends with what stopped the run (the binary prints it on stderr).
        log.file_only(&format!("error: {e}"));
    }
    result
}

/// The start-up phase of the network's weights: initialised (or read from the checkpoint
/// with `--resume`), moved to the device, the moving average's copy made.
const NETWORK: &str = "network";

/// Train the run in `dir` from `start` (a new network, or the checkpoint resumed) to its end:
/// the LR range test if the LRs are not given, the epochs, a checkpoint after each, the plots.
/// `clock` holds the phases measured so far; the run's own are added, and the `Start-up:`
/// line before the first epoch and the `After training:` line at the end report them.
/// Returns the final test accuracy in percent.
fn train_run(ds: &Cifar10, device: &Device, opts: &RunOptions, start: Checkpoint, dir: &Path, log: &mut Logger, clock: &mut PhaseClock) -> Result<f64> {
    let Checkpoint { mut cfg, mut model, mut state, mut rows, mut average } = start;
    let (files, prev) = (RunFiles::new(dir, ""), RunFiles::new(dir, PREV));
    // (The first pass over the memory-mapped training files: their first read from disk.)
    let (mean, std) = clock.time("pixel statistics", || data::augment::channel_stats(&ds.train));
    let norm = Normalization { mean, std };
    let mut pipeline = clock.time("dataset to device", || Pipeline::new(device, &ds.train, &ds.test))?;
    clock.time(NETWORK, || -> Result<()> {
        model.to_device(device)?;
        cfg.apply_to(&mut model.arch);
        for b in state.momentum_buffers.iter_mut().flatten() {
            *b = b.to_device(device)?;
        }
        Ok(())
    })?;
    // Where the first convolution runs, when not where it runs by default (`--first-conv`;
    // bf16 channels-last only).
    let first_conv = match device {
        Device::Cuda(d) if cfg.bf16 && cfg.channels_last && d.first_conv() != engine::cuda::FirstConv::DEFAULT => {
            format!(", first convolution on {}", d.first_conv().describe())
        }
        _ => String::new(),
    };
    log.line(&format!(
        "ResNet-9 width {} ({} parameters){}, batch {}, {}, {} training images, seed {}",
        cfg.width,
        model.arch.num_params(),
        [
            (cfg.bf16, ", bf16 mixed precision"),
            (cfg.channels_last, ", channels last"),
            (cfg.fused_bn_relu && !cfg.separate_residual_add, ", fused BN+ReLU(+residual add)"),
            (cfg.fused_bn_relu && cfg.separate_residual_add, ", fused BN+ReLU (residual add separate)"),
            (opts.cuda_graph, ", CUDA graph"),
            (matches!(device, Device::Cuda(d) if d.conv_graph()), ", cuDNN graph API"),
            (!first_conv.is_empty(), first_conv.as_str()),
            (cfg.tta, ", flip TTA in evaluation"),
            (cfg.ema, ", EMA of the weights evaluated"),
            (cfg.cutout_inside, ", Cutout inside the image"),
        ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, s)| *s)
            .collect::<String>(),
        cfg.batch_size,
        epochs(cfg.epochs),
        cfg.train_len(&ds.train),
        cfg.seed
    ));
    // (No such phase on the CPU.)
    let kernels_start = std::time::Instant::now();
    if let Some((done, line)) = precompile_kernels(device)? {
        clock.add("kernels", kernels_start.elapsed().as_secs_f64());
        clock.note("kernels", kernels_note(&done));
        log.line(&line);
    }

    if !opts.resume && !opts.lr_given {
        let lr_find_start = std::time::Instant::now();
        log.line(&format!("LR range test: {} steps, LR {:.0e} -> {:.0e}", opts.lr_find.steps, opts.lr_find.start_lr, opts.lr_find.end_lr));
        let pb = progress_bar(opts.lr_find.steps, opts.progress);
        let r = lr_find::lr_find(&mut model, &ds.train, &mut pipeline, norm, &cfg, &opts.lr_find, |_, lr, s| {
            pb.inc(1);
            pb.set_message(format!("lr={lr:.2e} loss={s:.4}"));
        })?;
        pb.finish_and_clear();
        write_lr_find_outputs(dir, &r)?;
        cfg.lr_max = r.lr_max;
        cfg.lr_min = r.lr_min;
        log.line(&format!("LR range test suggests {}; plot: {})", suggestion(&r, &opts.lr_find), dir.join("lr_find.png").display()));
        if let Some(w) = no_reading(&r, &opts.lr_find) {
            log.line(&w);
        }
        clock.add("LR range test", lr_find_start.elapsed().as_secs_f64());
    }
    train::check_lrs(cfg.lr_min, cfg.lr_max)?;
    let schedule = cfg.schedule(&ds.train);
    let descent = if cfg.peak_epoch < cfg.epochs {
        format!(" -> LRMIN at the end of epoch {}", cfg.epochs)
    } else {
        " (the last: the LR only rises)".to_string()
    };
    log.line(&format!("One-cycle: LRMIN={:.4e} -> LRMAX={:.4e} at the end of epoch {}{descent}", cfg.lr_min, cfg.lr_max, cfg.peak_epoch.min(cfg.epochs)));

    // The moving average starts here, after the range test (which restores the weights it
    // trained), or continues from the checkpoint's.
    let mut ema = clock.time(NETWORK, || -> Result<Option<Ema>> {
        Ok(match (cfg.ema, average.take()) {
            (false, _) => None,
            (true, Some(mut avg)) => {
                avg.to_device(device)?;
                avg.arch = model.arch.clone();
                Some(Ema::from_model(avg))
            }
            (true, None) => Some(Ema::new(&model)?),
        })
    })?;
    let mut step_graph = match device {
        Device::Cuda(d) if opts.cuda_graph => Some(StepGraph::new(d, cfg.batch_size, schedule.steps_per_epoch)?),
        _ => None,
    };
    log.line(&clock.line("Start-up", "since the program started"));
    let start_epoch = rows.len();
    let mut last = None;
    let mut saver = Saver::new();
    // The page-locked host buffers the checkpoints are copied into (two per epoch, the model's
    // and the optimizer's: those being written and those being filled, more while a slow
    // disk lags).
    let staging = StagingPool::new();
    // What each checkpoint records as the data it was trained on (the log's `Data:` line).
    let trained_on = ds.source.to_string();
    // Each epoch's time outside its measured training and evaluation (the log lines, queuing
    // the checkpoint's copies to the host, handing it to the saver), and the copies' share of it.
    let (mut between, mut copies) = (0.0, 0.0);
    for epoch in start_epoch..cfg.epochs {
        let epoch_start = std::time::Instant::now();
        let spe = schedule.steps_per_epoch;
        log.line(&format!("EPOCH: {} (LR: {:.6})", epoch + 1, schedule.lr(epoch * spe)));
        let pb = progress_bar(spe, opts.progress);
        let stats = train::train_epoch(&mut model, &mut state, &ds.train, &mut pipeline, norm, &cfg, epoch, step_graph.as_mut(), ema.as_mut(), |b, _lr, loss, acc| {
            pb.set_position(b as u64 + 1);
            pb.set_message(format!("Loss={loss:.4} Accuracy={acc:.2}"));
        });
        pb.finish_and_clear();
        for notice in step_graph.as_mut().map(|g| g.take_notices()).unwrap_or_default() {
            log.line(&notice);
        }
        let stats = stats.map_err(|e| stopped(e, dir, &rows, &mut saver))?;
        let eval_start = std::time::Instant::now();
        // The last epoch's evaluation also lists the misclassified images (for the plot).
        // In batches of the training size: the tape keeps every activation of a batch, so larger
        // evaluation batches would set the run's peak memory.
        let eval = train::evaluate(evaluated(&mut model, &mut ema), &ds.test, &mut pipeline, norm, cfg.batch_size, epoch + 1 == cfg.epochs, cfg.tta)
            .map_err(|e| stopped(e, dir, &rows, &mut saver))?;
        let eval_seconds = eval_start.elapsed().as_secs_f64();
        log.line(&format!(
            "Train: Loss={:.4} Accuracy={:.2}% ({:.1}s)",
            stats.loss, stats.accuracy, stats.seconds
        ));
        log.line(&format!(
            "Test set: Average loss: {:.4}, Accuracy: {}/{} ({:.2}%)",
            eval.loss, eval.correct, eval.total, eval.accuracy()
        ));
        if let Some(t) = eval.tta {
            log.line(&format!(
                "Test set with flip TTA: Average loss: {:.4}, Accuracy: {}/{} ({:.2}%)",
                t.loss,
                t.correct,
                eval.total,
                eval.tta_accuracy().unwrap_or(0.0)
            ));
        }
        // The losses of the epoch were finite, but each was computed before its step's update:
        // the last update may still have broken the weights. Then they are not saved.
        if !eval.loss.is_finite() {
            let e = format!("epoch {}: the test loss is {} (not finite) after the epoch's last update", epoch + 1, eval.loss);
            return Err(stopped(e, dir, &rows, &mut saver));
        }
        rows.push(EpochRecord {
            epoch: epoch + 1,
            lr: stats.last_lr,
            train_loss: stats.loss,
            train_acc: stats.accuracy,
            test_loss: eval.loss,
            test_acc: eval.accuracy(),
            seconds: stats.seconds,
            eval_seconds,
            test_acc_tta: eval.tta_accuracy(),
        });
        // The checkpoint's copies to the host are queued now, on the GPU's stream ahead of the
        // next epoch's updates, which change the weights (`engine::download`); the saver's
        // thread waits for them and writes the files while the next epoch trains (`saver.rs`):
        // the last epoch's files are kept (for a resume that finds these unusable), then the
        // checkpoint first, then the metrics that say it exists.
        let copy_start = std::time::Instant::now();
        let model_file = checkpoint::model_contents(
            ema.as_ref().map_or(&model, |e| &e.model),
            Some(epoch + 1),
            Some(norm),
            Some(&trained_on),
            &staging,
        );
        let mut meta = cfg.to_meta();
        meta.insert(checkpoint::EPOCHS_DONE.into(), (epoch + 1).to_string());
        let opt_file = checkpoint::optimizer_contents(&model, &state, meta, ema.is_some().then_some(&model), &staging);
        let (model_file, opt_file) = match (model_file, opt_file) {
            (Ok(m), Ok(o)) => (m, o),
            (Err(e), _) | (_, Err(e)) => return Err(stopped(format!("epoch {}'s checkpoint: {e}", epoch + 1), dir, &rows[..rows.len() - 1], &mut saver)),
        };
        copies += copy_start.elapsed().as_secs_f64();
        let job = {
            let (files, prev, rows) = (files.clone(), prev.clone(), rows.clone());
            move || {
                let (model_file, opt_file) = (model_file.finish()?, opt_file.finish()?);
                prev.keep_from(&files)?;
                // The optimizer file last: a run folder that holds one holds a whole first
                // checkpoint (a stop between two writes of a later epoch is caught by the
                // epochs the files record, and the previous epoch's files take their place).
                model_file.write(&files.model)?;
                write_metrics(&files.metrics, &rows)?;
                opt_file.write(&files.opt)
            }
        };
        // (An error here is the previous epoch's checkpoint that could not be written.)
        saver.submit(format!("epoch {}'s checkpoint", epoch + 1), job).map_err(|e| save_failed(e, dir, &rows))?;
        last = Some(eval);
        between += (epoch_start.elapsed().as_secs_f64() - stats.seconds - eval_seconds).max(0.0);
    }
    let mut after = PhaseClock::start();
    let eval = match last {
        Some(e) => e,
        // (A resumed run that had no epoch left.)
        None => after.time("evaluation", || train::evaluate(evaluated(&mut model, &mut ema), &ds.test, &mut pipeline, norm, cfg.batch_size, true, cfg.tta))?,
    };
    if ema.is_some() {
        // What the average adds: the same run's trained weights, scored once.
        let trained = after.time("trained weights' evaluation", || train::evaluate(&mut model, &ds.test, &mut pipeline, norm, cfg.batch_size, false, cfg.tta))?;
        log.line(&format!(
            "Trained weights without EMA: Average loss: {:.4}, Accuracy: {}/{} ({:.2}%){}",
            trained.loss,
            trained.correct,
            trained.total,
            trained.accuracy(),
            trained.tta_accuracy().map(|a| format!(", with flip TTA {a:.2}%")).unwrap_or_default()
        ));
    }
    after.time("plots", || -> Result<()> {
        write_curves(dir, &rows)?;
        write_lr_schedule(dir, &schedule)?;
        write_misclassified(dir, ds, &eval.misclassified)
    })?;
    // The last epoch's checkpoint was written while the plots were made.
    after.time("checkpoint wait", || saver.wait()).map_err(|e| save_failed(e, dir, &rows))?;
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    let with_eval: f64 = rows.iter().map(|r| r.seconds + r.eval_seconds).sum();
    log.line(&format!(
        "Done: test accuracy {:.2}%{} after {}, {:.1}s of training ({:.1}s with the test evaluations). Outputs in {}",
        eval.accuracy(),
        eval.tta_accuracy().map(|a| format!(" ({a:.2}% with flip TTA)")).unwrap_or_default(),
        epochs(rows.len()),
        total,
        with_eval,
        dir.display()
    ));
    if let Device::Cuda(d) = device {
        log.line(&format!(
            "GPU memory: peak {:.0} MiB in tensors, peak {:.0} MiB held from the driver (pool, dataset, workspace)",
            d.peak_in_use_bytes() as f64 / 1048576.0,
            d.peak_held_bytes() as f64 / 1048576.0
        ));
        for r in d.conv_refusals() {
            log.line(&format!("cuDNN refused a convolution, run in NCHW instead: {r}"));
        }
        // The step's speed depends on the algorithms chosen: keep them with the run.
        let mut plans = d.conv_plan_lines();
        plans.extend(d.graph_plan_lines().into_iter().map(|l| format!("graph API: {l}")));
        plans.extend(d.graph_refusals().into_iter().map(|l| format!("no graph-API plan (legacy API instead): {l}")));
        let first = d.first_conv().describe();
        let text = format!("convolution search: {}\nthe first convolution (3 channels): {first}\n{}\n", search_rule(d), plans.join("\n"));
        let path = dir.join("conv_plans.txt");
        after.time("convolution plans", || std::fs::write(&path, text)).map_err(|e| Error::io(&path, e))?;
        log.line(&format!("Convolution algorithms ({}): {} plans, in {}", search_rule(d), plans.len(), path.display()));
    }
    log.line(&format!(
        "{}; the epochs spent {between:.2}s outside their training and evaluation (queuing the checkpoints' copies to the host {copies:.2}s)",
        after.line("After training", "after the last epoch")
    ));
    Ok(eval.accuracy())
}

/// The network the evaluations score: the moving average with `--ema`, else the trained one.
fn evaluated<'a>(model: &'a mut ResNet9, ema: &'a mut Option<Ema>) -> &'a mut ResNet9 {
    match ema {
        Some(e) => &mut e.model,
        None => model,
    }
}

/// The suffix of the previous epoch's checkpoint files (`model.prev.safetensors`, ...).
const PREV: &str = ".prev";

/// A run folder's checkpoint files: `model<suffix>.safetensors`, `optimizer<suffix>.safetensors`
/// and `metrics<suffix>.csv`, the last epoch's (suffix "") or the one before ([`PREV`]).
#[derive(Clone)]
struct RunFiles {
    model: PathBuf,
    opt: PathBuf,
    metrics: PathBuf,
}

impl RunFiles {
    fn new(dir: &Path, suffix: &str) -> RunFiles {
        RunFiles {
            model: dir.join(format!("model{suffix}.safetensors")),
            opt: dir.join(format!("optimizer{suffix}.safetensors")),
            metrics: dir.join(format!("metrics{suffix}.csv")),
        }
    }

    fn all(&self) -> [&PathBuf; 3] {
        [&self.model, &self.opt, &self.metrics]
    }

    /// Make these files copies of `from`'s (those that exist), each replaced atomically: a hard
    /// link where the file system allows, else a synced copy. (The files are never written in
    /// place: `checkpoint::write_atomic` replaces them, so a link stays what it was.)
    fn keep_from(&self, from: &RunFiles) -> Result<()> {
        for (src, dst) in from.all().into_iter().zip(self.all()) {
            if !src.exists() {
                continue;
            }
            let mut tmp = dst.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(src, &tmp).is_err() {
                std::fs::copy(src, &tmp).map_err(|e| Error::io(&tmp, e))?;
                std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
            }
            checkpoint::rename_durably(&tmp, dst)?;
            // Renaming a link over another link to the same file does nothing and succeeds,
            // leaving the temporary name behind.
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(())
    }

    /// Put these files back as `to`'s (used when `to`'s cannot be read).
    fn restore_over(&self, to: &RunFiles) -> Result<()> {
        to.keep_from(self).map_err(|e| Error::Invalid(format!("restoring the previous epoch's checkpoint: {e}")))
    }
}

/// What a run's checkpoint files hold: its settings, network (the trained weights), optimizer
/// state, metrics, and with `--ema` the average.
struct Checkpoint {
    cfg: TrainConfig,
    model: ResNet9,
    state: SgdState,
    rows: Vec<EpochRecord>,
    average: Option<ResNet9>,
}

/// Read `files` back for `--resume`, checking everything before anything is written: the saved
/// settings (and that the command line asks for no others), every tensor's name, shape and
/// checksum, and that the three files were saved after the same epoch.
fn read_checkpoint(files: &RunFiles, opts: &RunOptions) -> Result<Checkpoint> {
    let opt_path = &files.opt;
    let opt = checkpoint::CheckpointFile::read(opt_path)?;
    let cfg = TrainConfig::from_meta(opt.metadata())
        .and_then(|cfg| cfg.check(true).map(|()| cfg))
        .map_err(|e| Error::Checkpoint { path: opt_path.clone(), msg: format!("its saved settings: {e}") })?;
    let dir = opt_path.parent().unwrap_or(Path::new("."));
    refuse_other_settings(dir, &cfg, &opts.cfg, &opts.explicit)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut model = ResNet9::new(cfg.width, cfg.out_scale, DType::F32, &mut rng)?;
    let model_meta = checkpoint::load_model(&files.model, &mut model)?;
    // With --ema, model.safetensors is the average; the trained weights are beside the
    // momentum buffers.
    let average = if cfg.ema {
        let average = model.clone();
        opt.load_trained(&mut model)?;
        Some(average)
    } else {
        None
    };
    let state = opt.load_optimizer(&model)?;
    let rows = read_metrics(&files.metrics)?;
    // The three files are written one after the other at the end of an epoch: a run stopped
    // between two of them would resume from files of different epochs.
    for (path, meta) in [(&files.model, &model_meta), (opt_path, opt.metadata())] {
        if let Some(done) = checkpoint::epochs_done(path, meta)?
            && done != rows.len()
        {
            return Err(Error::Invalid(format!(
                "{} was saved after epoch {done} but {} records {}: the files are of different epochs (a run stopped \
                 while it saved them, or a file changed since), and resuming from them would mix epochs",
                path.display(),
                files.metrics.display(),
                epochs(rows.len())
            )));
        }
    }
    Ok(Checkpoint { cfg, model, state, rows, average })
}

/// Whether `e`, from [`read_checkpoint`], says the checkpoint files cannot be used (damaged,
/// missing, of different epochs), so that the previous epoch's may take their place; not for
/// other settings asked on the command line, nor for I/O errors other than a missing file
/// (permissions, a full file table: the files may be fine).
fn unusable_checkpoint(e: &Error) -> bool {
    match e {
        Error::OtherSettings(_) => false,
        Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => true,
    }
}

/// "1 epoch", "24 epochs".
fn epochs(n: usize) -> String {
    if n == 1 { "1 epoch".into() } else { format!("{n} epochs") }
}

/// `--resume` continues a run with the settings saved in its checkpoint (`saved`): refuse the
/// recipe settings the command line gave (`explicit`, keys of [`TrainConfig::to_meta`]) that
/// differ from them, rather than drop them unsaid. A one-cycle run can be finished, not
/// extended or changed part-way.
fn refuse_other_settings(dir: &Path, saved: &TrainConfig, asked: &TrainConfig, explicit: &[String]) -> Result<()> {
    let (saved, asked) = (saved.to_meta(), asked.to_meta());
    // An empty subset is the whole training split.
    let shown = |m: &HashMap<String, String>, k: &str| match m.get(k).map(String::as_str) {
        Some("") => "all".to_string(),
        v => v.unwrap_or("?").to_string(),
    };
    // Each as its flag: `--peak-epoch 2 (saved: 1)`, `--bf16 (saved: off)`.
    let as_flag = |k: &str| {
        let (a, s) = (shown(&asked, k), shown(&saved, k));
        let flag = format!("--{}", k.replace('_', "-"));
        match (k, a.as_str()) {
            ("nesterov", "false") => "--no-nesterov (saved: Nesterov momentum)".to_string(),
            ("nesterov", _) => "Nesterov momentum (saved: --no-nesterov)".to_string(),
            (_, "true") => format!("{flag} (saved: off)"),
            (_, "false") => format!("{flag} off (saved: on)"),
            _ => format!("{flag} {a} (saved: {s})"),
        }
    };
    let differ: Vec<String> = explicit.iter().filter(|k| asked.get(*k) != saved.get(*k)).map(|k| as_flag(k)).collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::OtherSettings(format!(
        "--resume continues {} with the settings saved in its checkpoint, and the command line asks for others: {}. \
         A one-cycle run cannot be extended or changed part-way: drop those flags to finish it, or start a new run \
         under another --name",
        dir.display(),
        differ.join(", ")
    )))
}

/// How device `d`'s convolution algorithms were chosen, in words: the legacy API's rule, and
/// where cuDNN's graph API runs convolutions, how its engines are chosen (`ops::conv2d_plan::graph_plan`).
pub(crate) fn search_rule(d: &engine::cuda::CudaDevice) -> String {
    let search = d.conv_search();
    let legacy = match search {
        ConvSearch::Heuristic => "cuDNN's heuristic ranking, no timing".to_string(),
        ConvSearch::Timed => format!(
            "our timing of cuDNN's first {} heuristic candidates per kind, median of {} runs",
            ops::conv2d_plan::TIMED_CANDIDATES,
            ops::conv2d_plan::TIMED_RUNS
        ),
        ConvSearch::Find { repeats } => format!("cudnnFind, {repeats} search(es) per kind, median time"),
    };
    let timed_engines = format!(
        "the fastest of its first {} engines by our timing, median of {} runs",
        ops::conv2d_plan::GRAPH_TIMED_CANDIDATES,
        ops::conv2d_plan::TIMED_RUNS
    );
    if d.conv_graph() {
        let engines = if search == ConvSearch::Heuristic { "its ranking's first usable engine".to_string() } else { timed_engines };
        format!("cuDNN's graph API, {engines}; where it has no plan, {legacy}")
    } else if d.first_conv() == engine::cuda::FirstConv::CudnnGraph {
        format!("{legacy}; the first convolution through cuDNN's graph API, {timed_engines}")
    } else {
        legacy
    }
}

/// "LRMAX=… LRMIN=… (rules … and …; smoothed minimum at …, steepest descent at …, valley at …,
/// loss falls from …" or "no point where the loss starts to fall" (the caller closes it). The onset is shown before the bounds of the
/// `onset` rule apply.
fn suggestion(r: &lr_find::LrFindResult, lf: &LrFindConfig) -> String {
    format!(
        "LRMAX={:.4e} LRMIN={:.4e} (rules {} and {:?}; smoothed minimum at {:.3e}, steepest descent at {:.3e}, valley at {:.3e}, {}",
        r.lr_max,
        r.lr_min,
        if r.lr_max_rule == lf.rule { format!("{:?}", r.lr_max_rule) } else { format!("{:?} (the loss never turned up inside the range, so not {:?})", r.lr_max_rule, lf.rule) },
        lf.min_rule,
        r.lr_at_minimum,
        r.lr_steepest,
        r.lr_valley,
        r.lr_onset.map_or("no point where the loss starts to fall".to_string(), |lr| format!("loss falls from {lr:.3e}"))
    )
}

fn write_lr_find_outputs(dir: &Path, r: &lr_find::LrFindResult) -> Result<()> {
    // Clip the divergent tail so the interesting part of the curve stays readable.
    let first = r.points.first().map_or(1.0, |p| p.2);
    let cap = |v: f64| v.min(2.0 * first);
    let mut csv = String::from("lr,loss,smoothed_loss\n");
    for (lr, raw, s) in &r.points {
        csv.push_str(&format!("{lr:.6e},{raw:.6},{s:.6}\n"));
    }
    checkpoint::write_atomic(&dir.join("lr_find.csv"), csv.as_bytes())?;
    write_line_plot(
        &dir.join("lr_find.png"),
        &LinePlot {
            title: "LR range test",
            x_label: "learning rate",
            y_label: "training loss",
            series: vec![
                Series { name: "loss (clipped)".into(), points: r.points.iter().map(|p| (p.0, cap(p.1))).collect() },
                Series { name: "smoothed loss".into(), points: r.points.iter().map(|p| (p.0, cap(p.2))).collect() },
            ],
            log_x: true,
            vlines: vec![
                (r.lr_max, format!("LRMAX {:.2e}", r.lr_max)),
                (r.lr_min, format!("LRMIN {:.2e}", r.lr_min)),
            ]
            .into_iter()
            .chain(
                [(r.lr_at_minimum, "minimum"), (r.lr_steepest, "steepest"), (r.lr_valley, "valley")]
                    .into_iter()
                    .chain(r.lr_onset.map(|lr| (lr, "onset")))
                    .filter(|(lr, _)| *lr != r.lr_max && *lr != r.lr_min)
                    .map(|(lr, name)| (lr, name.to_string())),
            )
            .collect(),
        },
    )
}

/// The error that ends a run whose checkpoint could not be written (`e` names the epoch and
/// why): the files of the last two epochs are as the write left them, and `--resume` takes
/// the intact ones. The curves are written (best effort).
fn save_failed(e: Error, dir: &Path, rows: &[EpochRecord]) -> Error {
    let _ = write_curves(dir, rows);
    Error::Training(format!("{e}; training stopped, --resume takes whichever of the last two epochs' checkpoints is intact"))
}

/// The error that ends a run whose training broke (`e`: a non-finite loss), saying which
/// checkpoint is kept once `saver` has finished writing it (or that writing it failed); the
/// curves of the epochs that finished are written (best effort: the error is what matters).
fn stopped(e: impl std::fmt::Display, dir: &Path, rows: &[EpochRecord], saver: &mut Saver) -> Error {
    let _ = write_curves(dir, rows);
    let kept = match saver.wait() {
        Err(saved) => format!("and {saved}; --resume takes whichever of the last two epochs' checkpoints is intact"),
        Ok(()) if rows.is_empty() => "no checkpoint was written yet".to_string(),
        Ok(()) => format!("the last good checkpoint (end of epoch {}) is kept in {}", rows.len(), dir.display()),
    };
    Error::Training(format!("{e}; training stopped, {kept}"))
}

fn write_curves(dir: &Path, rows: &[EpochRecord]) -> Result<()> {
    let series = |name: &str, f: fn(&EpochRecord) -> f64| Series {
        name: name.into(),
        points: rows.iter().map(|r| (r.epoch as f64, f(r))).collect(),
    };
    write_line_plot(
        &dir.join("loss.png"),
        &LinePlot {
            title: "Loss",
            x_label: "epoch",
            y_label: "cross-entropy",
            series: vec![series("train", |r| r.train_loss), series("test", |r| r.test_loss)],
            log_x: false,
            vlines: vec![],
        },
    )?;
    write_line_plot(
        &dir.join("accuracy.png"),
        &LinePlot {
            title: "Accuracy",
            x_label: "epoch",
            y_label: "accuracy (%)",
            series: {
                let mut s = vec![series("train", |r| r.train_acc), series("test", |r| r.test_acc)];
                if rows.iter().any(|r| r.test_acc_tta.is_some()) {
                    s.push(Series {
                        name: "test, flip TTA".into(),
                        points: rows.iter().filter_map(|r| r.test_acc_tta.map(|a| (r.epoch as f64, a))).collect(),
                    });
                }
                s
            },
            log_x: false,
            vlines: vec![],
        },
    )
}

fn write_lr_schedule(dir: &Path, s: &crate::schedule::OneCycle) -> Result<()> {
    let spe = s.steps_per_epoch as f64;
    write_line_plot(
        &dir.join("lr.png"),
        &LinePlot {
            title: "One-cycle LR schedule (per step)",
            x_label: "epoch",
            y_label: "learning rate",
            series: vec![Series { name: "lr".into(), points: (0..s.total_steps()).map(|t| (t as f64 / spe, s.lr(t))).collect() }],
            log_x: false,
            vlines: vec![],
        },
    )
}

fn write_misclassified(dir: &Path, ds: &Cifar10, wrong: &[(usize, u32)]) -> Result<()> {
    let images: Vec<GridImage<'_>> = wrong
        .iter()
        .take(40)
        .map(|&(i, p)| GridImage {
            chw: ds.test.image(i),
            caption: format!("{} / {}", data::CLASS_NAMES[ds.test.label(i) as usize], data::CLASS_NAMES[p as usize]),
        })
        .collect();
    if images.is_empty() {
        return Ok(());
    }
    write_image_grid(&dir.join("misclassified.png"), "Misclassified test images (true / predicted)", &images, 8, 3)
}

/// What the commands that train a fresh network for a few steps (`lr-find`, `profile`) start
/// from: the training split's normalisation, the network of `cfg`'s seed, width and logit
/// scale on `device` with `cfg`'s compute settings, and the data pipeline on `device`.
pub(crate) fn fresh_network(ds: &Cifar10, device: &Device, cfg: &TrainConfig) -> Result<(Normalization, ResNet9, Pipeline)> {
    let (mean, std) = data::augment::channel_stats(&ds.train);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut model = ResNet9::new(cfg.width, cfg.out_scale, DType::F32, &mut rng)?;
    gpu_only(device, cfg.bf16, cfg.channels_last, false)?;
    model.to_device(device)?;
    cfg.apply_to(&mut model.arch);
    let pipeline = Pipeline::new(device, &ds.train, &ds.test)?;
    Ok((Normalization { mean, std }, model, pipeline))
}

/// The `lr-find` command: the range test alone, its plot and CSV in `runs/<name>/`.
pub fn run_lr_find(ds: &Cifar10, device: &Device, opts: RunOptions) -> Result<()> {
    opts.cfg.check(false)?;
    lr_find::check(&opts.lr_find, &opts.cfg, &ds.train)?;
    gpu_only(device, opts.cfg.bf16, opts.cfg.channels_last, false)?;
    make_folder(&opts.runs_dir, "--out")?;
    let name = match &opts.name {
        Some(n) => check_run_name(n)?.to_string(),
        None => fresh_run_name(&opts.runs_dir),
    };
    let dir = opts.runs_dir.join(name);
    make_folder(&dir, "the run folder")?;
    let mut log = Logger::new(Some(&dir.join("lr_find.log")))?;
    log.line(&format!("Device: {device}"));
    log.line(&format!("Data: {}", ds.source));
    if let Some((_, line)) = precompile_kernels(device)? {
        log.line(&line);
    }
    let cfg = &opts.cfg;
    let (norm, mut model, mut pipeline) = fresh_network(ds, device, cfg)?;
    let pb = progress_bar(opts.lr_find.steps, opts.progress);
    let r = lr_find::lr_find(&mut model, &ds.train, &mut pipeline, norm, cfg, &opts.lr_find, |_, lr, s| {
        pb.inc(1);
        pb.set_message(format!("lr={lr:.2e} loss={s:.4}"));
    })?;
    pb.finish_and_clear();
    write_lr_find_outputs(&dir, &r)?;
    log.line(&format!(
        "{} steps{}; suggested {}); plot {}",
        r.points.len(),
        if r.diverged { " (stopped at divergence)" } else { "" },
        suggestion(&r, &opts.lr_find),
        dir.join("lr_find.png").display()
    ));
    if let Some(w) = no_reading(&r, &opts.lr_find) {
        log.line(&w);
    }
    Ok(())
}

/// A warning when the range test's loss never fell (the `Onset` rule found no fall of 5% or
/// more, `lr_find::onset`): its suggestion is then a noisy point of a flat curve, usually near
/// the range's start, not a reading of a fall (a run from it would hardly train).
fn no_reading(r: &lr_find::LrFindResult, lf: &LrFindConfig) -> Option<String> {
    r.lr_onset.is_none().then(|| {
        format!(
            "Warning: the loss did not fall during the LR range test ({} steps from LR {:.0e}), so LRMAX={:.4e} is no reading of \
             a fall: give --lr-max and --lr-min, or check the settings (--out-scale, --width), or give the test more steps",
            r.points.len(),
            lf.start_lr,
            r.lr_max
        )
    })
}

/// The `show-data` command: a grid of augmented training images with their class
/// names (`<out>/train_images.png`), and the per-class counts of both splits.
pub fn show_data(ds: &Cifar10, out: &Path, seed: u64) -> Result<()> {
    make_folder(out, "--out")?;
    let (mean, std) = data::augment::channel_stats(&ds.train);
    let norm = Normalization { mean, std };
    let n = 48;
    let order = data::epoch_order(ds.train.len(), seed, 0);
    let params = train::epoch_aug_params(seed, 0, n, false);
    let (x, labels) = crate::batches::train_batch(&ds.train, &order[..n], &params, norm)?;
    let x = x.to_f32_vec();
    let pixels: Vec<Vec<u8>> = x.chunks_exact(3072).map(|img| crate::image_grid::chw_from_normalized(img, mean, std)).collect();
    let images: Vec<GridImage<'_>> = pixels
        .iter()
        .zip(&labels)
        .map(|(p, &l)| GridImage { chw: p, caption: data::CLASS_NAMES[l as usize].to_string() })
        .collect();
    let path = out.join("train_images.png");
    write_image_grid(&path, "Augmented training images (crop + flip + cutout)", &images, 8, 3)?;
    println!("Data: {}", ds.source);
    println!("{:<12} {:>8} {:>8}", "class", "train", "test");
    let (tr, te) = (data::class_counts(&ds.train), data::class_counts(&ds.test));
    for (i, name) in data::CLASS_NAMES.iter().enumerate() {
        println!("{name:<12} {:>8} {:>8}", tr[i], te[i]);
    }
    println!("{:<12} {:>8} {:>8}", "total", ds.train.len(), ds.test.len());
    println!("channel mean {mean:?}, std {std:?}");
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    /// LRMIN may be 0 (Page's schedule) but not negative, above LRMAX or NaN; LRMAX must be positive.
    #[test]
    fn lr_bounds_accept_pages_zero_and_refuse_the_rest() {
        assert!(train::check_lrs(0.0, 0.4).is_ok());
        assert!(train::check_lrs(0.004, 0.4).is_ok());
        assert!(train::check_lrs(0.4, 0.4).is_ok());
        for (lo, hi) in [(-0.1, 0.4), (0.5, 0.4), (0.0, 0.0), (f64::NAN, 0.4), (0.1, f64::NAN)] {
            let e = train::check_lrs(lo, hi).unwrap_err().to_string();
            assert!(e.contains("LRMIN"), "{lo} {hi}: {e}");
        }
    }

    use super::*;

    /// A run trained on a GPU with the default speed options: resuming it with the command line
    /// that started it passes, whatever flags of it were typed; `--plain` (which turns those
    /// options off) and a longer run are refused with each setting named once; a whole-split
    /// run shows its subset as "all".
    #[test]
    fn a_resume_refuses_only_the_settings_that_differ() {
        let dir = Path::new("runs/a");
        let saved = TrainConfig { bf16: true, channels_last: true, fused_bn_relu: true, lr_max: 0.4, lr_min: 0.004, ..TrainConfig::default() };
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // `model train --bf16 --epochs 24` on a GPU: bf16 is on either way.
        refuse_other_settings(dir, &saved, &TrainConfig { lr_max: 0.0, lr_min: 0.0, ..saved.clone() }, &keys(&["bf16", "epochs"])).unwrap();
        // --plain turns the speed options off.
        let plain = TrainConfig { bf16: false, channels_last: false, fused_bn_relu: false, ..saved.clone() };
        let e = refuse_other_settings(dir, &saved, &plain, &keys(&["bf16", "channels_last", "fused_bn_relu"])).unwrap_err().to_string();
        assert!(e.contains("asks for others: --bf16 off (saved: on), --channels-last off (saved: on), --fused-bn-relu off (saved: on)."), "{e}");
        let e = refuse_other_settings(dir, &saved, &TrainConfig { subset: Some(5000), epochs: 30, ..saved.clone() }, &keys(&["epochs", "subset"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--epochs 30 (saved: 24), --subset 5000 (saved: all)"), "{e}");
        // Each setting as its flag: --no-nesterov, and a flag that turns an option on.
        let e = refuse_other_settings(dir, &saved, &TrainConfig { nesterov: false, ema: true, peak_epoch: 2, ..saved.clone() }, &keys(&["ema", "nesterov", "peak_epoch"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ema (saved: off), --no-nesterov (saved: Nesterov momentum), --peak-epoch 2 (saved: 5)"), "{e}");
    }

    /// The previous epoch's checkpoint takes over for damaged or missing files, not for the
    /// command line's settings nor for files that could not be read right now.
    #[test]
    fn only_unusable_files_give_way_to_the_previous_epoch() {
        let io = |kind| Error::io("runs/a/model.safetensors", std::io::Error::from(kind));
        assert!(unusable_checkpoint(&io(std::io::ErrorKind::NotFound)));
        assert!(!unusable_checkpoint(&io(std::io::ErrorKind::PermissionDenied)));
        assert!(unusable_checkpoint(&Error::Checkpoint { path: "m".into(), msg: "damaged".into() }));
        assert!(!unusable_checkpoint(&Error::OtherSettings("epochs 5 (saved: 3)".into())));
    }

    #[test]
    fn metrics_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.csv");
        let rows = vec![
            EpochRecord { epoch: 1, lr: 0.0123, train_loss: 1.5, train_acc: 45.5, test_loss: 1.25, test_acc: 55.25, seconds: 3.5, eval_seconds: 0.25, test_acc_tta: None },
            EpochRecord { epoch: 2, lr: 0.25, train_loss: 1.0, train_acc: 65.0, test_loss: 0.75, test_acc: 75.0, seconds: 3.25, eval_seconds: 0.5, test_acc_tta: Some(75.5) },
        ];
        write_metrics(&p, &rows).unwrap();
        assert_eq!(read_metrics(&p).unwrap(), rows);
        // A file from before the eval_seconds column still reads.
        std::fs::write(&p, "epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds\n1,1.23e-2,1.5,45.5,1.25,55.25,3.5\n").unwrap();
        assert_eq!(read_metrics(&p).unwrap()[0], EpochRecord { eval_seconds: 0.0, ..rows[0].clone() });
        // ... and one from before the test_acc_tta column.
        std::fs::write(&p, "epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds,eval_seconds\n2,0.25,1.0,65.0,0.75,75.0,3.25,0.5\n").unwrap();
        assert_eq!(read_metrics(&p).unwrap()[0], EpochRecord { test_acc_tta: None, ..rows[1].clone() });
        std::fs::write(&p, "epoch,lr\n1,2\n").unwrap();
        assert!(read_metrics(&p).is_err());
    }

    /// The kernels' line says where the files came from, where the cache is (or that it is
    /// off, or why nothing was kept), and keeps the words of the line before the cache
    /// (`Compiled our CUDA kernels (N files, NVRTC, one thread each) in S`) when nothing was
    /// cached; the start-up line's note matches it.
    #[test]
    fn the_kernels_line_says_where_they_came_from() {
        let dir = Path::new("/c/kernels");
        let done = |from_cache, compiled, why: Option<&str>| Precompiled { from_cache, compiled, cache_error: why.map(String::from) };
        assert_eq!(
            kernels_line(&done(0, 11, None), Some(dir), 0.271),
            "Compiled our CUDA kernels (11 files, NVRTC, one thread each) in 0.27s; kept in /c/kernels for the next run"
        );
        assert_eq!(kernels_line(&done(0, 11, None), None, 0.27), "Compiled our CUDA kernels (11 files, NVRTC, one thread each) in 0.27s; kernel cache off");
        assert_eq!(
            kernels_line(&done(0, 11, Some("kernel cache: creating /c: Permission denied")), Some(dir), 0.27),
            "Compiled our CUDA kernels (11 files, NVRTC, one thread each) in 0.27s; not kept (kernel cache: creating /c: Permission denied)"
        );
        assert_eq!(kernels_line(&done(11, 0, None), Some(dir), 0.012), "Loaded our CUDA kernels (11 files from the cache in /c/kernels) in 0.01s");
        assert_eq!(
            kernels_line(&done(9, 2, None), Some(dir), 0.05),
            "Loaded our CUDA kernels (9 files from the cache in /c/kernels, 2 compiled by NVRTC, one thread each) in 0.05s; kept in /c/kernels for the next run"
        );
        assert_eq!(kernels_line(&done(0, 0, None), Some(dir), 0.0), "Compiled our CUDA kernels (0 files, NVRTC, one thread each) in 0.00s");
        assert_eq!([kernels_note(&done(0, 11, None)), kernels_note(&done(11, 0, None)), kernels_note(&done(9, 2, None))], ["compiled", "from the cache", "9 from the cache, 2 compiled"]);
    }
}
