//! `model`: train the CIFAR-10 ResNet-9, run the LR range test, show the data,
//! print the network. `cargo run -p model --release` trains with the recipe's defaults.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use engine::Device;
use engine::cuda::{ConvSearch, FirstConv};
use model::lr_find::{LrFindConfig, LrMinRule, LrRule};
use model::run::{RunOptions, run_training_timed};
use model::startup::{PhaseClock, steps_note};
use model::train::TrainConfig;
use model::{Error, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the commands that use a GPU keep our compiled kernels (`engine::kernel_cache`).
const KERNEL_CACHE_HELP: &str = "On a GPU, our CUDA kernels compiled by NVRTC are kept for the next run in \
    $CIFAR10_ENGINE_CACHE, else $XDG_CACHE_HOME/cifar10-engine/kernels, else ~/.cache/cifar10-engine/kernels \
    (CIFAR10_ENGINE_CACHE=off: no cache; deleting the folder is always safe).";

/// `lr-find --help`'s closing lines: it shares train's flags, but not all of them apply.
const LR_FIND_HELP: &str = "lr-find takes train's flags, but --lr-max/--lr-min and --resume are for train (refused here); \
    --epochs, --tta and --ema change nothing in the range test. On a GPU, our CUDA kernels compiled by NVRTC are kept \
    for the next run (see `model --help`).";

/// `eval --help`'s closing lines.
const EVAL_HELP: &str = "Given a run folder, the network is evaluated as the run evaluated it (its optimizer.safetensors says how: \
    bf16, channels last, batch size), so the accuracy is the one its log printed after the last epoch (with --ema, the moving \
    average's), on a GPU with the convolutions' default settings (a run trained with --first-conv, --cudnn-graph, --cudnn-search, \
    --no-tf32 or --deterministic, which the checkpoint does not record, may score a few images apart). Inputs are normalised \
    with the mean and std saved in the file (older files: those of the training files in --data). On the CPU, the f32 \
    reference path.";

/// `profile --help`'s closing lines.
const PROFILE_HELP: &str = "profile takes train's flags for the network, the device and the batch; it writes no run folder, \
    so --resume and --name are refused, and --epochs, --out, --tta and --ema change nothing. On a GPU, our CUDA kernels \
    compiled by NVRTC are kept for the next run (see `model --help`).";

#[derive(Parser)]
#[command(name = "model", version, about = "Train the CIFAR-10 ResNet-9 on our own CUDA engine (or the CPU reference).", after_help = KERNEL_CACHE_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train (the default): LR range test unless --lr-max/--lr-min are given, then the one-cycle epochs.
    #[command(after_help = KERNEL_CACHE_HELP)]
    Train(TrainArgs),
    /// Run only the LR range test and plot loss against LR.
    #[command(after_help = LR_FIND_HELP)]
    LrFind(TrainArgs),
    /// Time one training step operation by operation (CUDA events on a GPU), after warm-up steps.
    #[command(after_help = PROFILE_HELP)]
    Profile {
        #[command(flatten)]
        args: TrainArgs,
        /// Training steps before the profiled one (algorithm search, pool warm-up).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Steps timed end to end (synchronised) after the profiled one.
        #[arg(long, default_value_t = 10)]
        timed: usize,
    },
    /// Score a saved network on the test set: loss, accuracy, accuracy per class and the confusion matrix.
    #[command(after_help = EVAL_HELP)]
    Eval {
        /// A run folder (its model.safetensors) or a safetensors file of the network's state_dict.
        path: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// auto (the CUDA GPU if one is usable, else the CPU), cpu or cuda.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Also score flip test-time augmentation (the mean of the logits of each test image and of its mirror image).
        #[arg(long)]
        tta: bool,
        /// Images per batch (default: the run's batch size, else 512).
        #[arg(long)]
        batch_size: Option<usize>,
        /// On a GPU, the f32 reference path (NCHW, cuDNN's batch norm, a separate ReLU), whatever the run trained with.
        #[arg(long)]
        plain: bool,
        /// Multiplier of the logits, for a file that does not record it (ours do; 0.125 is D. Page's).
        #[arg(long)]
        out_scale: Option<f64>,
    },
    /// Print the layer table and the parameter count.
    Summary {
        /// Channel multiplier (1 = the real network).
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// Batch size shown in the output shapes.
        #[arg(long, default_value_t = 512)]
        batch_size: usize,
    },
    /// Write a PNG grid of augmented training images with their classes, and print per-class counts.
    ShowData {
        #[command(flatten)]
        data: DataArgs,
        /// Folder for `train_images.png`.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Seed of the augmentation shown.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Compile our CUDA kernels (ptx/*.cu) with NVRTC and write the PTX files (needs libnvrtc, no GPU;
    /// always compiled afresh, the kernel cache is neither read nor written).
    Ptx {
        /// Folder for the `.ptx` files.
        #[arg(long, default_value = "ptx-out")]
        out: PathBuf,
        /// Target architecture, e.g. sm_80 (A100) or sm_90 (H100).
        #[arg(long, default_value = "sm_90")]
        arch: String,
    },
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Folder holding the CIFAR-10 binary files (else $CIFAR10_DIR, else ./data/cifar-10-batches-bin).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Never download. Without it, when neither --data nor CIFAR10_DIR is given and ./data/cifar-10-batches-bin does not hold the files, the official archive is downloaded into ./data (MD5-checked); with it, that case is an error that says where to get the files.
    #[arg(long)]
    no_download: bool,
    /// The default since 2026-11-27 (the download used to need this flag); kept so that older command lines still run.
    #[arg(long, hide = true, conflicts_with = "no_download")]
    download: bool,
}

/// `--cudnn-search`: [`ConvSearch`]'s rules on the command line.
/// `--first-conv`: [`FirstConv`] as the command line spells it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FirstConvArg {
    Cudnn,
    CudnnGraph,
    DirectForward,
    Direct,
}

impl From<FirstConv> for FirstConvArg {
    fn from(at: FirstConv) -> Self {
        match at {
            FirstConv::Cudnn => FirstConvArg::Cudnn,
            FirstConv::CudnnGraph => FirstConvArg::CudnnGraph,
            FirstConv::DirectForward => FirstConvArg::DirectForward,
            FirstConv::Direct => FirstConvArg::Direct,
        }
    }
}

impl From<FirstConvArg> for FirstConv {
    fn from(at: FirstConvArg) -> Self {
        match at {
            FirstConvArg::Cudnn => FirstConv::Cudnn,
            FirstConvArg::CudnnGraph => FirstConv::CudnnGraph,
            FirstConvArg::DirectForward => FirstConv::DirectForward,
            FirstConvArg::Direct => FirstConv::Direct,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum SearchArg {
    Heuristic,
    Find,
    Timed,
}

#[derive(Args, Clone)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// auto (the CUDA GPU; without a usable one, an error that says why and names --device
    /// cpu: the full recipe is not silently run on the CPU), cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 24)]
    epochs: usize,
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N training images only.
    #[arg(long)]
    subset: Option<usize>,
    /// Channel multiplier (1 = the real network).
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Peak LR of the one-cycle schedule (skips the range test together with --lr-min).
    #[arg(long)]
    lr_max: Option<f64>,
    /// Start/end LR of the one-cycle schedule (0 allowed: D. Page's 0 -> 0.4 -> 0).
    #[arg(long)]
    lr_min: Option<f64>,
    /// Epoch at whose end the LR peaks (default: 5/24 of the run, rounded, at least 1: epoch 5 of 24).
    #[arg(long)]
    peak_epoch: Option<usize>,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Plain momentum instead of Nesterov.
    #[arg(long)]
    no_nesterov: bool,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Cutout's 8x8 square always wholly inside the image (its centre in 4..=28, as D. Page's
    /// Cutout for this network), instead of centred anywhere and clipped at the border (DeVries
    /// and Taylor's, the default).
    #[arg(long)]
    cutout_inside: bool,
    /// Multiplier of the logits. 0.125 as in D. Page's ResNet-9 ("How to Train Your ResNet",
    /// myrtle.ai, 2018); with it the LR range test's minimum lands at Page's LR for this
    /// network (bench/results/lr-range-torch-cpu-w1-2026-11-25.md).
    #[arg(long, default_value_t = 0.125)]
    out_scale: f64,
    /// How the LR range test picks LRMAX: `minimum` (LR at the smoothed loss's minimum before it
    /// first rises 2% above it) or
    /// `steepest` (LR where it falls fastest) or `valley` (fastai's: the middle of the longest
    /// fall).
    #[arg(long, default_value = "minimum", value_parser = ["minimum", "steepest", "valley"])]
    lr_rule: String,
    /// How it picks LRMIN, where the one-cycle starts and ends: `onset` (where the loss starts
    /// to fall, kept within LRMAX/100 .. LRMAX/10) or `tenth` (LRMAX / 10).
    #[arg(long, default_value = "onset", value_parser = ["onset", "tenth"])]
    lr_min_rule: String,
    /// Steps of the LR range test.
    #[arg(long, default_value_t = 100)]
    lr_find_steps: usize,
    /// Folder that holds the run folders.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    /// Run folder name (default: the first free run-N).
    #[arg(long)]
    name: Option<String>,
    /// Finish the run --name from its last checkpoint (or the one of the epoch before, when the last cannot be used), with the settings saved in it: flags asking for others are refused.
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Forbid TF32 tensor-core math in f32 convolutions on the GPU (on by default, as in PyTorch).
    #[arg(long)]
    no_tf32: bool,
    /// Only convolution algorithms cuDNN marks deterministic, so that a seed gives the same
    /// run every time on one GPU (off by default: the fastest ones may sum with atomics).
    #[arg(long)]
    deterministic: bool,
    /// How each convolution shape's algorithms are chosen, once: `heuristic` (cuDNN's
    /// heuristic ranking, nothing timed), `find` (cuDNN's timed search of every algorithm) or
    /// `timed` (our timing of cuDNN's first 4 heuristic candidates, 3 runs each). On an H200
    /// (2026-11-26) all three reached the same step time; the heuristics cost no search time
    /// (0.3 s of warm-up against 2.1 s and 4.9 s), and `find` chose a slow plan in 5 of 19
    /// processes (0.6 s epochs instead of 0.4 s).
    #[arg(long, value_enum, default_value_t = SearchArg::Heuristic)]
    cudnn_search: SearchArg,
    /// With `--cudnn-search find`: searches per convolution, the median time deciding.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    cudnn_find_repeats: u32,
    /// Run convolutions through cuDNN's backend ("graph") API, as recent PyTorch does, with
    /// the first engine of cuDNN's heuristic ranking that our rules accept (with
    /// `--cudnn-search find` or `timed`: the fastest of its first 10 by our timing, as
    /// PyTorch's `cudnn.benchmark`), instead of the legacy API's algorithm numbers (a shape it
    /// has no plan for still runs on the legacy API, and the log says why). On an H100 (2026-11-26) it chose faster forward
    /// convolutions, but the step captured as a CUDA graph was no faster (3.55 ms either way).
    #[arg(long)]
    cudnn_graph: bool,
    /// Our kernels move one value per memory access, not 16 bytes (8 bf16 or 4 f32) where the
    /// shapes allow: batch norm + ReLU's one-value passes and reductions, cuDNN's max-pool
    /// forward and our one-value backward, one-value bf16 adds; to measure what they gain.
    #[arg(long)]
    no_vector_kernels: bool,
    /// Where the network's first convolution (3 input channels, bf16 channels-last) runs:
    /// `cudnn` like every other convolution, `cudnn-graph` (cuDNN's graph API for it alone, the
    /// fastest of its first 10 engines by our timing), `direct-forward` (our kernel `ptx/conv_c3.cu` for the
    /// forward pass, cuDNN for the weight gradient) or `direct` (our kernels for both); to
    /// measure each. The default is the fastest measured (see `engine::cuda::FirstConv`).
    #[arg(long, value_enum, default_value_t = FirstConvArg::from(FirstConv::DEFAULT))]
    first_conv: FirstConvArg,
    /// The most 256-thread blocks of batch norm + ReLU's channels-last 16-byte passes (each
    /// thread then reads its channels' values once for several 16-byte groups): `wave` (as
    /// many as the GPU runs at once for each kernel), a number, or 0: one thread per group, as
    /// before any cap; to measure what each gains.
    #[arg(long, default_value = "wave", value_parser = parse_block_cap)]
    bnr_max_blocks: u32,
    /// On the GPU, the reference path: f32 (TF32 convolutions), NCHW, cuDNN's batch norm and
    /// a separate ReLU, one launch per op. Without it a GPU trains with all four speed options
    /// below (on an H200, 2026-11-26: 0.52 s per epoch against 1.2 s, at the same accuracy);
    /// with it, each of those flags adds its one option.
    #[arg(long)]
    plain: bool,
    /// Mixed precision on the GPU: bf16 convolutions and activations, f32 parameters, BN
    /// statistics, linear layer and loss (like PyTorch's bf16 autocast).
    #[arg(long)]
    bf16: bool,
    /// NHWC ("channels last") activations and conv weights on the GPU, the order cuDNN's
    /// tensor-core convolutions read (like PyTorch's `channels_last`).
    #[arg(long)]
    channels_last: bool,
    /// Capture the training step as a CUDA graph after two warm-up steps and replay it for
    /// every full batch (one launch per step; the last, partial batch runs as usual).
    #[arg(long)]
    cuda_graph: bool,
    /// Batch norm and the ReLU after it as one op: on the GPU our kernels (two passes over
    /// memory forward, two backward, one in evaluation) instead of cuDNN's batch norm and a ReLU.
    #[arg(long)]
    fused_bn_relu: bool,
    /// With the fused batch norm + ReLU (on by default on a GPU), keep each residual block's
    /// add a separate op instead of part of the block's last batch norm + ReLU: to measure
    /// what that fusion gains.
    #[arg(long)]
    separate_residual_add: bool,
    /// Also report test accuracy with flip test-time augmentation: the mean of the logits of
    /// each test image and of its mirror image (D. Page, "How to Train Your ResNet 8: Bag of
    /// Tricks", myrtle.ai, 2019). The plain accuracy is still reported.
    #[arg(long)]
    tta: bool,
    /// Evaluate and save an exponential moving average of the weights and BN statistics
    /// (momentum 0.99, updated every 5 steps: D. Page, "How to Train Your ResNet 8"),
    /// instead of the trained weights; training is unchanged, and the trained weights'
    /// accuracy is reported once at the end.
    #[arg(long)]
    ema: bool,
}

/// `--bnr-max-blocks`: `wave` (engine::cuda::BNR_ONE_WAVE) or a block count.
fn parse_block_cap(s: &str) -> std::result::Result<u32, String> {
    if s == "wave" {
        return Ok(engine::cuda::BNR_ONE_WAVE);
    }
    match s.parse::<u32>() {
        Ok(n) if n != engine::cuda::BNR_ONE_WAVE => Ok(n),
        _ => Err(format!("expected `wave` or a block count, got `{s}`")),
    }
}

impl TrainArgs {
    fn defaults() -> TrainArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: TrainArgs,
        }
        Only::parse_from(["model"]).args
    }

    /// The device `--device` names, with this run's GPU settings (TF32, deterministic
    /// algorithms, the convolution search, the 16-byte kernels) applied to it.
    fn device(&self) -> Result<Device> {
        let device = choose_device(&self.device)?;
        if let Device::Cuda(d) = &device {
            d.set_allow_tf32(!self.no_tf32);
            d.set_deterministic(self.deterministic);
            d.set_conv_search(match self.cudnn_search {
                SearchArg::Heuristic => ConvSearch::Heuristic,
                SearchArg::Find => ConvSearch::Find { repeats: self.cudnn_find_repeats as usize },
                SearchArg::Timed => ConvSearch::Timed,
            });
            d.set_vector_kernels(!self.no_vector_kernels);
            d.set_first_conv(self.first_conv.into());
            d.set_bnr_max_blocks(self.bnr_max_blocks);
            d.set_conv_graph(self.cudnn_graph);
        }
        Ok(device)
    }

    /// The run's options on `device`: on a GPU without `--plain`, every speed option is on.
    fn options(&self, device: &Device) -> Result<RunOptions> {
        let fast = device.is_cuda() && !self.plain;
        // (A library caller's peak beyond the run is clamped to its end; a flag asking for one
        // is refused rather than quietly changed.)
        if let Some(p) = self.peak_epoch
            && !(1..=self.epochs).contains(&p)
        {
            return Err(Error::Invalid(format!("--peak-epoch must be between 1 and --epochs ({}), got {p}", self.epochs)));
        }
        if self.lr_max.is_some() != self.lr_min.is_some() {
            return Err(Error::Invalid("give both --lr-max and --lr-min, or neither (then the LR range test picks them)".into()));
        }
        let cfg = TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            seed: self.seed,
            subset: self.subset,
            width: self.width,
            out_scale: self.out_scale,
            // (Saturating: an absurd --epochs is refused by `check`, not wrapped around here.)
            peak_epoch: self.peak_epoch.unwrap_or((self.epochs.saturating_mul(5).saturating_add(12) / 24).max(1)),
            momentum: self.momentum,
            nesterov: !self.no_nesterov,
            weight_decay: self.weight_decay,
            label_smoothing: self.label_smoothing,
            lr_min: self.lr_min.unwrap_or(0.0),
            lr_max: self.lr_max.unwrap_or(0.0),
            bf16: self.bf16 || fast,
            channels_last: self.channels_last || fast,
            fused_bn_relu: self.fused_bn_relu || fast,
            separate_residual_add: self.separate_residual_add,
            tta: self.tta,
            cutout_inside: self.cutout_inside,
            ema: self.ema,
        };
        cfg.check(self.lr_max.is_some())?;
        Ok(RunOptions {
            cfg,
            lr_given: self.lr_max.is_some(),
            lr_find: LrFindConfig {
                steps: self.lr_find_steps,
                rule: match self.lr_rule.as_str() {
                    "steepest" => LrRule::Steepest,
                    "valley" => LrRule::Valley,
                    _ => LrRule::Minimum,
                },
                min_rule: if self.lr_min_rule == "onset" { LrMinRule::Onset } else { LrMinRule::Tenth },
                ..LrFindConfig::default()
            },
            runs_dir: self.out.clone(),
            name: self.name.clone(),
            resume: self.resume,
            progress: !self.no_progress,
            cuda_graph: self.cuda_graph || fast,
            explicit: Vec::new(),
        })
    }
}

/// What to do without a GPU, in the no-GPU error's one line.
const CPU_HINT: &str = "add --device cpu to run on the CPU, where a smaller training job takes minutes \
    (train --device cpu --width 0.25 --subset 5000 --epochs 4 --batch-size 128 --lr-rule steepest)";

/// Pick the device the user asked for; `auto` without a GPU is an error that says what to do.
fn choose_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::cuda(0)?),
        "auto" => match Device::best_available() {
            (d, None) => Ok(d),
            (_, Some(why)) => Err(Error::Invalid(format!(
                "no CUDA GPU is usable ({why}); the full recipe (ResNet-9, 24 epochs of 50,000 images) is meant for a GPU: {CPU_HINT}"
            ))),
        },
        other => Err(Error::Invalid(format!("--device must be auto, cpu or cuda, not '{other}'"))),
    }
}

/// Whether a dataset that is not found is downloaded: unless `--no-download`, and only for the
/// default folder. A folder the user named (`--data`, or `cifar10_dir`, the CIFAR10_DIR
/// variable, when set and not empty) is never replaced by a download: its error says what is
/// wrong with it.
fn download_wanted(args: &DataArgs, cifar10_dir: Option<&std::ffi::OsStr>) -> bool {
    !args.no_download && args.data.is_none() && cifar10_dir.is_none_or(|d| d.is_empty())
}

fn open_data(args: &DataArgs) -> Result<data::Cifar10> {
    let dir = match data::locate(args.data.as_deref()) {
        Ok(dir) => dir,
        Err(_) if download_wanted(args, std::env::var_os("CIFAR10_DIR").as_deref()) => {
            eprintln!("CIFAR-10 is not in {} (and CIFAR10_DIR is not set): downloading the official archive into ./data ...", data::locate::DEFAULT_DIR);
            data::download(std::path::Path::new("data"))?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(data::Cifar10::open(&dir)?)
}

/// The recipe settings (keys of `TrainConfig::to_meta`) that the command line of `m` gave,
/// for `--resume` to compare with the checkpoint's. `--tta` is left out: it only adds to the
/// evaluation, and a resumed run takes the command line's choice.
fn explicit_settings(m: &ArgMatches) -> Vec<String> {
    let keys = TrainConfig::default().to_meta();
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .flat_map(|id| match id.as_str() {
            "no_nesterov" => vec!["nesterov"],
            "plain" => vec!["bf16", "channels_last", "fused_bn_relu"],
            other => vec![other],
        })
        .filter(|k| *k != "tta" && keys.contains_key(*k))
        .map(String::from)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `train`, or with `only_lr_find` the `lr-find` command; `explicit`: see [`explicit_settings`].
/// `clock` started with the program: opening the device and the data are measured on it, and
/// the run's `Start-up:` line reports them.
fn train(args: &TrainArgs, only_lr_find: bool, explicit: Vec<String>, mut clock: PhaseClock) -> Result<()> {
    // (--tta and --ema, which only change what a training run evaluates, are let through:
    // bench/side_by_side.py passes our run's flags to lr-find too.)
    if only_lr_find && (args.lr_max.is_some() || args.lr_min.is_some() || args.resume) {
        return Err(Error::Invalid("lr-find runs the LR range test alone: --lr-max/--lr-min and --resume are for train".into()));
    }
    let device = clock.time("device", || args.device())?;
    if let Device::Cuda(d) = &device {
        // Context, cuBLAS and cuDNN are made as the device opens (`CudaDevice::open`).
        clock.note("device", steps_note(d.open_phases()));
    }
    let mut opts = RunOptions { explicit, ..args.options(&device)? };
    let ds = clock.time("data", || open_data(&args.data))?;
    if matches!(ds.source, data::Source::Archive { .. }) {
        // (Memory-mapping a folder is near free; the archive is decompressed and hashed.)
        clock.note("data", "decompressed from the archive".into());
    }
    if only_lr_find {
        opts.lr_given = false;
        return model::run::run_lr_find(&ds, &device, opts);
    }
    run_training_timed(&ds, &device, opts, clock).map(|_| ())
}

fn summary(width: f64, batch: usize) -> Result<()> {
    if batch == 0 {
        return Err(Error::Invalid("--batch-size must be at least 1".into()));
    }
    let arch = model::resnet::Arch::new(width, 1.0)?;
    println!("{:<44} {:>20} {:>12}", "layer", "output shape", "parameters");
    println!("{}", "-".repeat(78));
    for (name, shape, params) in arch.summary(batch) {
        println!("{name:<44} {:>20} {params:>12}", format!("{shape:?}"));
    }
    println!("{}", "-".repeat(78));
    println!("{:<44} {:>20} {:>12}", "total", "", arch.num_params());
    Ok(())
}

/// `model ptx`: every kernel file compiled by NVRTC now (never read from the kernel cache:
/// this is for reading what NVRTC makes of the sources) and written as `<name>.ptx` in `out`.
fn write_ptx(out: &std::path::Path, arch: &str) -> Result<()> {
    // Checked before the folder is made: NVRTC's own refusal is a raw option error.
    let number = arch.strip_prefix("sm_").or_else(|| arch.strip_prefix("compute_"));
    if !number.is_some_and(|n| n.len() >= 2 && n.chars().next().is_some_and(|c| c.is_ascii_digit()) && n.chars().all(|c| c.is_ascii_alphanumeric())) {
        return Err(Error::Invalid(format!("--arch must name a GPU architecture such as sm_80 (A100) or sm_90 (H100), got {arch:?}")));
    }
    model::run::make_folder(out, "--out")?;
    for (name, source) in ops::kernels::SOURCES {
        let ptx = engine::nvrtc::compile_ptx(name, source, arch)?;
        let path = out.join(name.replace(".cu", ".ptx"));
        std::fs::write(&path, ptx).map_err(|e| Error::io(&path, e))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Run the command `cli`, parsed from `matches`; `clock` started with the program.
fn run(cli: Cli, matches: &ArgMatches, clock: PhaseClock) -> Result<()> {
    let explicit = |name: &str| matches.subcommand_matches(name).map(explicit_settings).unwrap_or_default();
    match cli.command.unwrap_or_else(|| Command::Train(TrainArgs::defaults())) {
        Command::Train(a) => train(&a, false, explicit("train"), clock),
        Command::LrFind(a) => train(&a, true, Vec::new(), clock),
        Command::Summary { width, batch_size } => summary(width, batch_size),
        Command::Eval { path, data, device, tta, batch_size, plain, out_scale } => {
            // (A wrong path or batch size is told before a GPU is opened or the data are looked for.)
            model::eval::model_file(&path)?;
            if batch_size == Some(0) {
                return Err(Error::Invalid("--batch-size must be at least 1".into()));
            }
            let (device, why_cpu) = match device.as_str() {
                // Scoring 10,000 images is no long job: without a GPU, the CPU does it (and the
                // Device line says why the GPU was not taken).
                "auto" => Device::best_available(),
                other => (choose_device(other)?, None),
            };
            // (A closed standard output, `model eval ... | head`, must not panic.)
            let mut print = |line: &str| {
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{line}");
            };
            print(&format!("Device: {device}{}", why_cpu.map(|e| format!(" (no usable CUDA GPU: {e})")).unwrap_or_default()));
            let ds = open_data(&data)?;
            print(&format!("Data: {}", ds.source));
            let req = model::eval::EvalRequest { path, tta, batch_size, plain, out_scale };
            model::eval::evaluate_checkpoint(&ds, &device, &req, &mut print).map(|_| ())
        }
        Command::Profile { args, warmup, timed } => {
            if args.resume || args.name.is_some() {
                return Err(Error::Invalid("profile writes no run folder: --resume and --name are for train and lr-find".into()));
            }
            let device = args.device()?;
            let opts = args.options(&device)?;
            let ds = open_data(&args.data)?;
            model::profile::run_profile(&ds, &device, &opts.cfg, warmup, timed, opts.cuda_graph)
        }
        Command::Ptx { out, arch } => write_ptx(&out, &arch),
        Command::ShowData { data, out, seed } => {
            let ds = open_data(&data)?;
            model::run::show_data(&ds, &out, seed)
        }
    }
}

/// A command-line error as one line (clap's own are several: the error, a tip, the usage, a
/// pointer to `--help`), then exit status 2, as clap's; `--help` and `--version` print as clap
/// prints them.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit()
    }
    eprintln!("{}", one_line(&e.render().to_string()));
    std::process::exit(2)
}

/// clap's rendered error `text` folded into one line: its indented continuation lines joined to
/// the line before, the tip and the usage after `; `, the closing pointer to `--help` shortened.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("For more information") {
            continue;
        }
        if out.is_empty() {
            out.push_str(trimmed);
        } else if let Some(usage) = trimmed.strip_prefix("Usage:") {
            out += &format!("; usage:{usage}");
        } else if trimmed.starts_with("tip:") || !line.starts_with(char::is_whitespace) {
            out += &format!("; {trimmed}");
        } else {
            out += &format!(" {trimmed}");
        }
    }
    out + " (see --help)"
}

fn main() -> ExitCode {
    // The start-up phases a training run logs are measured from here.
    let clock = PhaseClock::start();
    // Parsed in two steps so that `--resume` can tell the flags given from the defaults.
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => usage_error(e),
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| usage_error(e));
    match run(cli, &matches, clock) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// mimalloc instead of the system allocator: the CPU path allocates large short-lived
/// buffers every op, which glibc's malloc maps and unmaps each time (500,000 page faults in
/// 6 training steps at width 0.25, batch 128; 26% of the step time). Measured on the 2-core
/// VM, 2026-11-25, `model profile --device cpu --width 0.25 --batch-size 128 --timed 5
/// --warmup 1`: median step 439 ms with glibc, 342 ms with mimalloc (page faults 510k -> 15k).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(test)]
mod tests {
    use super::*;

    /// `--bnr-max-blocks`: `wave`, a count, 0; anything else (and the sentinel's own value
    /// given as a number) is refused with the accepted forms named.
    #[test]
    fn block_cap_parses_wave_or_a_count() {
        assert_eq!(parse_block_cap("wave"), Ok(engine::cuda::BNR_ONE_WAVE));
        assert_eq!(parse_block_cap("1024"), Ok(1024));
        assert_eq!(parse_block_cap("0"), Ok(0));
        assert!(parse_block_cap("waves").unwrap_err().contains("`wave` or a block count"));
        assert!(parse_block_cap(&u32::MAX.to_string()).is_err());
        assert_eq!(TrainArgs::defaults().bnr_max_blocks, engine::cuda::BNR_ONE_WAVE);
    }

    /// `--first-conv`: our direct kernels unless asked (the measured default,
    /// `FirstConv::DEFAULT`), the four choices by name, anything else refused.
    #[test]
    fn first_conv_defaults_to_our_kernels_and_takes_the_four_choices() {
        let first_conv = |args: &[&str]| {
            let Some(Command::Train(a)) = Cli::try_parse_from([&["model", "train"][..], args].concat()).unwrap().command else { panic!("not train") };
            FirstConv::from(a.first_conv)
        };
        assert_eq!(first_conv(&[]), FirstConv::Direct);
        assert_eq!(first_conv(&["--first-conv", "direct-forward"]), FirstConv::DirectForward);
        assert_eq!(first_conv(&["--first-conv=direct"]), FirstConv::Direct);
        assert_eq!(first_conv(&["--first-conv", "cudnn"]), FirstConv::Cudnn);
        assert_eq!(first_conv(&["--first-conv", "cudnn-graph"]), FirstConv::CudnnGraph);
        assert!(Cli::try_parse_from(["model", "train", "--first-conv", "ours"]).is_err());
    }

    /// lr-find refuses the flags that would skip or replace its range test, before it looks for
    /// a device or data; the evaluation-only flags pass (the data error comes next).
    #[test]
    fn lr_find_refuses_the_flags_that_skip_its_test() {
        let lr_find = |args: &[&str]| {
            let Some(Command::LrFind(a)) = Cli::try_parse_from(args).unwrap().command else { panic!("not lr-find") };
            train(&a, true, Vec::new(), PhaseClock::start()).unwrap_err().to_string()
        };
        let nowhere = ["--device", "cpu", "--data", "/nonexistent/cifar"];
        for flags in [&["--lr-max", "0.4", "--lr-min", "0.004"][..], &["--resume", "--name", "a"]] {
            let e = lr_find(&[&["model", "lr-find"][..], flags, &nowhere].concat());
            assert!(e.contains("are for train"), "{flags:?}: {e}");
        }
        let e = lr_find(&[&["model", "lr-find", "--tta", "--ema"][..], &nowhere].concat());
        assert!(e.contains("/nonexistent/cifar"), "{e}");
    }

    /// The flags given on the command line, as the checkpoint's setting names; defaults,
    /// `--tta` and the flags that are not recipe settings are left out.
    /// Every recipe setting the checkpoint saves (but `tta`) has a flag that marks it given:
    /// a renamed flag would drop out of `--resume`'s comparison, and this would fail.
    #[test]
    fn every_saved_setting_has_a_flag_that_marks_it() {
        for key in TrainConfig::default().to_meta().into_keys().filter(|k| k != "tta") {
            let flag = if key == "nesterov" { "--no-nesterov".to_string() } else { format!("--{}", key.replace('_', "-")) };
            let mut args = vec!["model", "train", flag.as_str()];
            let value = match key.as_str() {
                "nesterov" | "bf16" | "channels_last" | "fused_bn_relu" | "separate_residual_add" | "cutout_inside" | "ema" => None,
                "lr_max" | "lr_min" => Some("0.1"),
                _ => Some("3"),
            };
            args.extend(value);
            let m = Cli::command().try_get_matches_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(explicit_settings(m.subcommand_matches("train").unwrap()), std::slice::from_ref(&key), "{args:?}");
        }
    }

    /// Flags refused before anything runs, each with the flag named: a --peak-epoch outside
    /// the run (a library caller's is clamped, a flag is not quietly changed), profile's
    /// --resume/--name, summary's batch 0 and width beyond the bound, ptx's unknown --arch
    /// (before its folder is made), eval's path that names nothing and its batch 0 (before the data).
    #[test]
    fn flags_outside_their_range_are_refused_with_the_flag_named() {
        let train_args = |args: &[&str]| {
            let Some(Command::Train(a)) = Cli::try_parse_from([&["model", "train"][..], args].concat()).unwrap().command else { panic!("not train") };
            a
        };
        for (flags, says) in [
            (&["--peak-epoch", "5", "--epochs", "2"][..], "--peak-epoch must be between 1 and --epochs (2), got 5"),
            (&["--peak-epoch", "0"], "--peak-epoch must be between 1"),
            (&["--epochs", "18446744073709551615"], "--epochs must be at most 10000"),
            (&["--width", "1000"], "--width must be a number in (0, 8]"),
            (&["--lr-max", "inf", "--lr-min", "0.005"], "need 0 <= LRMIN <= LRMAX"),
        ] {
            let e = train_args(flags).options(&Device::Cpu).err().unwrap_or_else(|| panic!("{flags:?} accepted")).to_string();
            assert!(e.contains(says), "{flags:?}: {e}");
        }
        assert_eq!(train_args(&["--epochs", "2"]).options(&Device::Cpu).unwrap().cfg.peak_epoch, 1, "the default peak: 5/24 of the run");
        let cli = |args: &[&str]| {
            let m = Cli::command().try_get_matches_from(args).unwrap();
            run(Cli::from_arg_matches(&m).unwrap(), &m, PhaseClock::start()).unwrap_err().to_string()
        };
        for flags in [&["--resume", "--name", "a"][..], &["--name", "a"]] {
            let e = cli(&[&["model", "profile", "--device", "cpu"][..], flags].concat());
            assert!(e.contains("profile writes no run folder"), "{flags:?}: {e}");
        }
        assert!(cli(&["model", "summary", "--batch-size", "0"]).contains("--batch-size must be at least 1"));
        // eval names a wrong path before it looks for the data (none here).
        let e = cli(&["model", "eval", "/nonexistent/run", "--device", "cpu", "--data", "/nonexistent/cifar"]);
        assert!(e.contains("/nonexistent/run: no such file or folder"), "{e}");
        let run = tempfile::tempdir().unwrap();
        std::fs::write(run.path().join("model.safetensors"), b"x").unwrap();
        let e = cli(&["model", "eval", run.path().to_str().unwrap(), "--batch-size", "0", "--device", "cpu", "--data", "/nonexistent/cifar"]);
        assert!(e.contains("--batch-size must be at least 1"), "{e}");
        assert!(cli(&["model", "summary", "--width", "1e30"]).contains("--width must be a number in (0, 8]"));
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("ptx");
        let e = cli(&["model", "ptx", "--arch", "sm_xx", "--out", dir.to_str().unwrap()]);
        assert!(e.contains("--arch must name a GPU architecture such as sm_80"), "{e}");
        assert!(!dir.exists(), "the output folder was made");
    }

    /// clap's usage errors become one line that keeps what each said: the error, the tip, the
    /// values allowed, the arguments missing, the usage.
    #[test]
    fn usage_errors_are_one_line() {
        let folded = |args: &[&str]| one_line(&Cli::command().try_get_matches_from(args).unwrap_err().render().to_string());
        for (args, says) in [
            (&["model", "train", "--epoch", "3"][..], &["error: unexpected argument '--epoch' found", "tip: a similar argument exists: '--epochs'"][..]),
            (&["model", "train", "--epochs", "x"], &["error: invalid value 'x' for '--epochs <EPOCHS>'"]),
            (&["model", "trian"], &["unrecognized subcommand 'trian'", "tip: a similar subcommand exists: 'train'"]),
            (&["model", "eval"], &["the following required arguments were not provided: <PATH>", "usage: model eval <PATH>"]),
            (&["model", "train", "--lr-rule", "foo"], &["[possible values: minimum, steepest, valley]"]),
        ] {
            let line = folded(args);
            assert!(!line.contains('\n') && line.starts_with("error: ") && line.ends_with(" (see --help)"), "{args:?}: {line:?}");
            for s in says {
                assert!(line.contains(s), "{args:?}: {line:?} lacks {s:?}");
            }
        }
    }

    /// The official archive is downloaded by default for the default folder only: not for a
    /// folder named by --data or CIFAR10_DIR (an empty one counts as unset), not with
    /// --no-download; the old --download still parses (the default now).
    #[test]
    fn the_default_folder_alone_is_downloaded_unless_told_not_to() {
        let data = |args: &[&str]| {
            let Some(Command::ShowData { data, .. }) = Cli::try_parse_from([&["model", "show-data"][..], args].concat()).unwrap().command else { panic!("not show-data") };
            data
        };
        let dir = std::ffi::OsStr::new("/some/cifar");
        assert!(download_wanted(&data(&[]), None));
        assert!(download_wanted(&data(&[]), Some(std::ffi::OsStr::new(""))));
        assert!(download_wanted(&data(&["--download"]), None));
        assert!(!download_wanted(&data(&[]), Some(dir)));
        assert!(!download_wanted(&data(&["--data", "/x"]), None));
        assert!(!download_wanted(&data(&["--no-download"]), None));
        assert!(Cli::try_parse_from(["model", "show-data", "--download", "--no-download"]).is_err());
    }

    #[test]
    fn explicit_settings_are_the_recipe_flags_given() {
        let given = |args: &[&str]| {
            let m = Cli::command().try_get_matches_from(args).unwrap();
            let mut keys = explicit_settings(m.subcommand_matches("train").unwrap());
            keys.sort();
            keys
        };
        assert!(given(&["model", "train"]).is_empty());
        assert_eq!(
            given(&["model", "train", "--epochs", "24", "--plain", "--bf16", "--tta", "--resume", "--name", "a", "--device", "cpu"]),
            ["bf16", "channels_last", "epochs", "fused_bn_relu"]
        );
        assert_eq!(given(&["model", "train", "--no-nesterov", "--lr-max", "0.4", "--lr-min", "0", "--ema"]), ["ema", "lr_max", "lr_min", "nesterov"]);
    }
}
