//! The `eval` command: a saved network scored on the CIFAR-10 test set, with its accuracy per
//! class and its confusion matrix.
//!
//! What it reads: a `state_dict` in safetensors (a run's `model.safetensors`, or the same names
//! and shapes written by PyTorch from `bench/resnet9.py`), its channel counts taken from its
//! weights' shapes and its logits' scale from its metadata (`checkpoint::load_network`). The
//! inputs are normalised as the run normalised them: with the per-channel mean and standard
//! deviation saved in the file (`checkpoint::PIXEL_MEAN`), else with those of the training
//! files of the data folder (what training computes: the same numbers when it is the folder
//! the network was trained on).
//!
//! How it runs: given a run folder, as the run evaluated (its `optimizer.safetensors` says how:
//! on a GPU bf16, channels last and the fused batch norm + ReLU when the run used them; the
//! run's batch size), so that a run's last checkpoint scores what its log printed for the last
//! epoch (with `--ema`, the moving average's line). On a GPU that holds for a run trained with
//! the convolutions' default settings: the checkpoint does not record `--first-conv`,
//! `--cudnn-graph`, `--cudnn-search`, `--no-tf32` or `--deterministic`, and other kernels may
//! round a few logits across a decision. Given a file, on a GPU the training's default path. On
//! the CPU always the f32 reference path; `--plain` asks for it on a GPU.
//!
//! The confusion matrix `m[t][p]` counts the test images of true class `t` predicted as class
//! `p`; the accuracy of class `t` is `m[t][t] / sum_p m[t][p]`, and the trace over the total is
//! the accuracy of the `Test set:` line.

use crate::batches::Normalization;
use crate::checkpoint;
use crate::pipeline::Pipeline;
use crate::run::precompile_kernels;
use crate::train::{self, EvalStats, TrainConfig};
use crate::{Error, Result};
use data::{CLASS_NAMES, Cifar10, Split};
use engine::Device;
use std::path::{Path, PathBuf};

/// The classes of CIFAR-10.
const CLASSES: usize = CLASS_NAMES.len();

/// What `eval` is asked to do.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    /// A run folder (its `model.safetensors`) or a safetensors file.
    pub path: PathBuf,
    /// Also score flip test-time augmentation (see [`train::evaluate`]).
    pub tta: bool,
    /// Images per evaluation batch; `None`: the run's batch size, else 512.
    pub batch_size: Option<usize>,
    /// On a GPU, the f32 reference path (NCHW, cuDNN's batch norm) whatever the run used.
    pub plain: bool,
    /// The logits' multiplier, for a file that does not record it.
    pub out_scale: Option<f64>,
}

/// How the test images of each true class (rows) were classified (columns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    pub counts: [[usize; CLASSES]; CLASSES],
}

impl Confusion {
    /// The matrix of the test split `split`, from the evaluation's misclassified images
    /// (`EvalStats::misclassified`: record index and predicted class); every other image was
    /// predicted as its label.
    pub fn from_misclassified(split: &Split, misclassified: &[(usize, u32)]) -> Result<Confusion> {
        let mut counts = [[0usize; CLASSES]; CLASSES];
        for i in 0..split.len() {
            counts[split.label(i) as usize][split.label(i) as usize] += 1;
        }
        for &(i, p) in misclassified {
            if i >= split.len() || p as usize >= CLASSES {
                return Err(Error::Invalid(format!("misclassified image {i} predicted as {p}: outside the split of {} or the {CLASSES} classes", split.len())));
            }
            let t = split.label(i) as usize;
            if p as usize == t {
                return Err(Error::Invalid(format!("image {i} is listed as misclassified but predicted as its label {t}")));
            }
            counts[t][t] -= 1;
            counts[t][p as usize] += 1;
        }
        Ok(Confusion { counts })
    }

    /// Correct predictions (the diagonal's sum).
    pub fn correct(&self) -> usize {
        (0..CLASSES).map(|t| self.counts[t][t]).sum()
    }

    /// Test images of class `t`.
    pub fn class_total(&self, t: usize) -> usize {
        self.counts[t].iter().sum()
    }

    /// The table printed by `eval`: one row per true class with its correct count, its
    /// accuracy and its row of the matrix.
    pub fn table(&self) -> String {
        let short = |name: &str| name.chars().take(5).collect::<String>();
        let mut s = format!("{:<11}{:>11}{:>9}   predicted as:", "class", "correct", "accuracy");
        for name in CLASS_NAMES {
            s += &format!("{:>6}", short(name));
        }
        s.push('\n');
        for (t, name) in CLASS_NAMES.iter().enumerate() {
            let total = self.class_total(t);
            let acc = 100.0 * self.counts[t][t] as f64 / total.max(1) as f64;
            s += &format!("{name:<11}{:>11}{:>8.2}%{:>16}", format!("{}/{total}", self.counts[t][t]), acc, "");
            for p in 0..CLASSES {
                s += &format!("{:>6}", self.counts[t][p]);
            }
            s.push('\n');
        }
        s
    }
}

/// What `eval` measured.
#[derive(Clone, Debug)]
pub struct CheckpointEval {
    /// The file evaluated.
    pub file: PathBuf,
    pub stats: EvalStats,
    pub confusion: Confusion,
}

/// The model file a request names: the file itself, or a run folder's `model.safetensors`.
pub fn model_file(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let file = path.join("model.safetensors");
        if !file.is_file() {
            return Err(Error::Invalid(format!("{} holds no model.safetensors (give a run folder of `model train`, or a .safetensors file)", path.display())));
        }
        return Ok(file);
    }
    if !path.exists() {
        return Err(Error::Invalid(format!("{}: no such file or folder", path.display())));
    }
    Ok(path.to_path_buf())
}

/// The settings a run folder's `optimizer.safetensors` records, if `path` is a run folder
/// that has a readable one; else why not (for the log).
fn run_settings(path: &Path) -> std::result::Result<TrainConfig, String> {
    if !path.is_dir() {
        return Err("a file, not a run folder".into());
    }
    let file = path.join("optimizer.safetensors");
    if !file.is_file() {
        return Err(format!("{} holds no optimizer.safetensors", path.display()));
    }
    checkpoint::CheckpointFile::read(&file)
        .and_then(|f| TrainConfig::from_meta(f.metadata()))
        .map_err(|e| e.to_string())
}

/// `eval`: the network saved at `req.path` scored on `ds`'s test split on `device`, each line
/// of the report passed to `out` as it is known.
pub fn evaluate_checkpoint(ds: &Cifar10, device: &Device, req: &EvalRequest, out: &mut dyn FnMut(&str)) -> Result<CheckpointEval> {
    if req.batch_size == Some(0) {
        return Err(Error::Invalid("--batch-size must be at least 1".into()));
    }
    let file = model_file(&req.path)?;
    let (mut model, meta) = checkpoint::load_network(&file, req.out_scale)?;
    let epochs = match checkpoint::epochs_done(&file, &meta)? {
        Some(n) => format!(", saved after epoch {n}"),
        None => String::new(),
    };
    out(&format!(
        "Network: {} ({} parameters: channels {:?}, logits x {}{epochs})",
        file.display(),
        model.arch.num_params(),
        model.arch.channels,
        model.arch.out_scale
    ));
    if let Some(data) = meta.get(checkpoint::TRAINED_ON) {
        out(&format!("Trained on: {data}"));
    }
    let run = run_settings(&req.path);
    // How to evaluate: as the run did where it is known, on the GPU's default path otherwise,
    // and always the f32 reference path on the CPU or with --plain.
    let fast_default = TrainConfig { bf16: true, channels_last: true, fused_bn_relu: true, ..TrainConfig::default() };
    let (mut cfg, how) = match &run {
        Ok(cfg) => (cfg.clone(), "as the run trained"),
        Err(_) => (fast_default, "the GPU's default"),
    };
    if !device.is_cuda() || req.plain {
        cfg = TrainConfig { bf16: false, channels_last: false, fused_bn_relu: false, ..cfg };
    }
    cfg.apply_to(&mut model.arch);
    let batch_size = req.batch_size.unwrap_or(match &run {
        Ok(c) => c.batch_size,
        Err(_) => 512,
    });
    let path_words = if cfg.bf16 || cfg.channels_last || cfg.fused_bn_relu {
        let mut on = Vec::new();
        if cfg.bf16 {
            on.push("bf16");
        }
        if cfg.channels_last {
            on.push("channels last");
        }
        if cfg.fused_bn_relu {
            on.push("fused BN+ReLU");
        }
        format!("{} ({how})", on.join(", "))
    } else if device.is_cuda() {
        format!("f32 reference path ({})", if req.plain { "--plain" } else { how })
    } else {
        "f32 reference path (CPU)".to_string()
    };
    let run_note = match &run {
        Ok(_) => String::new(),
        Err(why) => format!("; no run settings: {why}"),
    };
    out(&format!("Evaluated on {device}: {path_words}, batches of {}{run_note}", batch_size.min(ds.test.len())));
    let norm = match checkpoint::saved_normalization(&file, &meta)? {
        Some(n) => {
            out(&format!("Inputs normalised with the training pixels' mean {:?} and std {:?} saved in the file", n.mean, n.std));
            n
        }
        None => {
            let (mean, std) = data::augment::channel_stats(&ds.train);
            out(&format!(
                "Inputs normalised with the mean {mean:?} and std {std:?} of the training files read (the file does not record the ones it was trained with)"
            ));
            Normalization { mean, std }
        }
    };
    if let Some((_, line)) = precompile_kernels(device)? {
        out(&line);
    }
    model.to_device(device)?;
    let mut pipeline = Pipeline::new(device, &ds.train, &ds.test)?;
    let stats = train::evaluate(&mut model, &ds.test, &mut pipeline, norm, batch_size, true, req.tta)?;
    out(&format!("Test set: Average loss: {:.4}, Accuracy: {}/{} ({:.2}%)", stats.loss, stats.correct, stats.total, stats.accuracy()));
    if let (Some(t), Some(acc)) = (stats.tta, stats.tta_accuracy()) {
        out(&format!("Test set with flip TTA: Average loss: {:.4}, Accuracy: {}/{} ({acc:.2}%)", t.loss, t.correct, stats.total));
    }
    let confusion = Confusion::from_misclassified(&ds.test, &stats.misclassified)?;
    if confusion.correct() != stats.correct {
        return Err(Error::Invalid(format!("the confusion matrix counts {} correct, the evaluation {}", confusion.correct(), stats.correct)));
    }
    out("Per class (rows: the true class; columns: how its test images were classified):");
    for line in confusion.table().lines() {
        out(line);
    }
    Ok(CheckpointEval { file, stats, confusion })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A split of `labels`, each record's pixels all `label * 20`.
    fn split_of(labels: &[u8]) -> (tempfile::TempDir, data::Split) {
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for &l in labels {
            bytes.push(l);
            bytes.extend(std::iter::repeat_n(l * 20, 3072));
        }
        std::fs::write(tmp.path().join("test_batch.bin"), bytes).unwrap();
        let split = data::Split::open(tmp.path(), &["test_batch.bin"], labels.len()).unwrap();
        (tmp, split)
    }

    /// The matrix moves each misclassified image from its diagonal cell to its predicted
    /// column: row sums stay the class counts, the trace is the correct count; impossible
    /// entries (a prediction equal to the label, an index or class out of range) are errors.
    #[test]
    fn the_confusion_matrix_moves_each_mistake_off_the_diagonal() {
        let labels = [3u8, 3, 5, 0, 9, 3, 5, 1];
        let (_tmp, split) = split_of(&labels);
        let m = Confusion::from_misclassified(&split, &[(1, 5), (2, 3), (4, 0)]).unwrap();
        assert_eq!(m.counts[3][3], 2);
        assert_eq!(m.counts[3][5], 1);
        assert_eq!(m.counts[5][3], 1);
        assert_eq!(m.counts[5][5], 1);
        assert_eq!(m.counts[9][0], 1);
        assert_eq!(m.counts[9][9], 0);
        assert_eq!(m.correct(), labels.len() - 3);
        for t in 0..CLASSES {
            assert_eq!(m.class_total(t), labels.iter().filter(|&&l| l as usize == t).count(), "class {t}");
        }
        let table = m.table();
        assert_eq!(table.lines().count(), 1 + CLASSES);
        assert!(table.lines().nth(4).unwrap().starts_with("cat") && table.lines().nth(4).unwrap().contains("2/3"), "{table}");
        assert!(Confusion::from_misclassified(&split, &[(0, 3)]).is_err(), "predicted as its own label");
        assert!(Confusion::from_misclassified(&split, &[(8, 1)]).is_err(), "index out of the split");
        assert!(Confusion::from_misclassified(&split, &[(0, 10)]).is_err(), "class out of range");
    }

    /// A path that is neither a file nor a folder with `model.safetensors` is an error that
    /// says so.
    #[test]
    fn a_missing_model_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let e = model_file(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("holds no model.safetensors"), "{e}");
        let e = model_file(&tmp.path().join("nope.safetensors")).unwrap_err().to_string();
        assert!(e.contains("no such file or folder"), "{e}");
        std::fs::write(tmp.path().join("model.safetensors"), b"x").unwrap();
        assert_eq!(model_file(tmp.path()).unwrap(), tmp.path().join("model.safetensors"));
    }
}
