//! Checkpoints in safetensors format.
//!
//! A run folder holds two checkpoint files, both written atomically (to a new `<file>.tmp`,
//! synced, then renamed over the old one, so a crash never leaves a torn file), and the
//! same two of the epoch before (`model.prev.safetensors`, `optimizer.prev.safetensors`,
//! kept by `run.rs` for a resume that finds the last ones unusable):
//!
//! - `model.safetensors`: exactly the PyTorch `state_dict` of the network in
//!   `bench/resnet9.py`: every parameter (f32, same names and layouts:
//!   conv weights `[out, in, kh, kw]`, linear weight `[out, in]`) and every BN
//!   buffer (`running_mean`, `running_var` f32, `num_batches_tracked` i64 scalar).
//!   `torch.nn.Module.load_state_dict(safetensors.torch.load_file(path))` loads it.
//! - `optimizer.safetensors`: the SGD momentum buffers (`momentum.<param name>`)
//!   and, as safetensors metadata, the run's settings and progress, for `--resume`.
//!   With `--ema`, `model.safetensors` holds the moving average of the weights (what
//!   the run evaluates), and this file also holds the trained weights themselves, as a
//!   second `state_dict` whose names start with `trained.`: training resumes from those.
//!
//! Both files carry in their metadata the CRC-32 of their tensors' bytes (key `crc32`, see
//! `tensors_crc`) and of their other metadata entries (key `metadata_crc32`, see
//! `metadata_crc`): loading checks both, so a file damaged on disk after it was written is
//! refused instead of trained on, a damaged setting as much as a damaged weight. (safetensors
//! checks the header and the sizes, not the values; a file without the keys, such as one PyTorch
//! wrote, is loaded unchecked.)

use crate::batches::Normalization;
use crate::resnet::{Arch, ResNet9};
use crate::{Error, Result};
use engine::download::{Download, StagingPool};
use engine::{DType, Tensor};
use ops::sgd::SgdState;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

fn err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
}

/// Write `bytes` to `path` atomically: a new sibling temporary file `<path>.tmp`, fsync, rename
/// (checkpoints, metrics, plots). The temporary file is always a new one (a leftover is removed
/// first), never an existing file opened for writing: that could be a hard link to a file kept
/// elsewhere (`run.rs` keeps the previous epoch's checkpoint as hard links), which writing in
/// place would change too. A write that fails (a full disk) removes its temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| Error::io(&tmp, e));
    drop(f);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    rename_durably(&tmp, path)
}

/// Rename `from` over `to`, then sync their folder, so that the new name itself survives a power
/// loss (the file's data was synced before; the rename is an entry in the folder, written to disk
/// when the folder is). Where a folder cannot be opened, or its file system has no sync for
/// folders (it answers EINVAL or ENOTSUP: CIFS before Linux 4.17, some FUSE file systems), the
/// rename stands unsynced, as PostgreSQL and borg do: the run's previous checkpoint is kept
/// beside it for that case. Any other error of the sync (EIO) is one.
pub fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(to, e))?;
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        no_folder_sync_is_no_error(d.sync_all()).map_err(|e| Error::io(dir, std::io::Error::new(e.kind(), format!("syncing the folder after renaming {} into it: {e}", to.display()))))?;
    }
    Ok(())
}

/// A folder sync's result, with "this file system cannot sync a folder" (EINVAL, ENOTSUP)
/// taken as success (see [`rename_durably`]).
fn no_folder_sync_is_no_error(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported) => Ok(()),
        r => r,
    }
}

/// The metadata key of the CRC-32 of a checkpoint's tensor data.
pub const CRC32: &str = "crc32";

/// The CRC-32 (IEEE, as gzip and zip use) of the tensors' bytes, taken in the order of their
/// names, as 8 hexadecimal digits: the same for the entries written and the tensors read back.
fn tensors_crc<'a>(mut tensors: Vec<(&'a str, &'a [u8])>) -> String {
    tensors.sort_by_key(|(name, _)| *name);
    let mut h = crc32fast::Hasher::new();
    for (_, bytes) in tensors {
        h.update(bytes);
    }
    format!("{:08x}", h.finalize())
}

/// The metadata key of the CRC-32 of a checkpoint's other metadata entries (its settings and
/// progress, and the tensors' checksum).
pub const METADATA_CRC32: &str = "metadata_crc32";

/// The CRC-32 of the metadata entries other than [`METADATA_CRC32`], taken in the order of their
/// keys, each as `key`, a zero byte, `value`, a zero byte (so that no two different sets of
/// entries give the same bytes), as 8 hexadecimal digits.
fn metadata_crc(meta: &HashMap<String, String>) -> String {
    let mut entries: Vec<(&String, &String)> = meta.iter().filter(|(k, _)| k.as_str() != METADATA_CRC32).collect();
    entries.sort();
    let mut h = crc32fast::Hasher::new();
    for (k, v) in entries {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    format!("{:08x}", h.finalize())
}

/// Refuse a file whose tensors, or whose metadata `meta`, do not match the CRC-32s saved in
/// `meta` (each checked where its key is there).
fn check_crc(path: &Path, st: &SafeTensors<'_>, meta: &HashMap<String, String>) -> Result<()> {
    let damaged = |what: &str, saved: &str, now: &str| {
        err(path, format!("{what} do not match the checksum saved with them (CRC-32 {saved}, now {now}): the file was damaged after it was written"))
    };
    if let Some(saved) = meta.get(METADATA_CRC32) {
        let now = metadata_crc(meta);
        if *saved != now {
            return Err(damaged("the settings and progress in its metadata", saved, &now));
        }
    }
    if let Some(saved) = meta.get(CRC32) {
        let tensors = st.tensors();
        let now = tensors_crc(tensors.iter().map(|(name, view)| (name.as_str(), view.data())).collect());
        if *saved != now {
            return Err(damaged("the tensors' bytes", saved, &now));
        }
    }
    Ok(())
}

/// What one checkpoint file holds, copied to the host: its tensors and its metadata. It holds
/// no device memory, so another thread may write it ([`Contents::write`]) while training goes
/// on (`saver.rs`).
pub struct Contents {
    entries: Vec<Entry>,
    meta: HashMap<String, String>,
}

impl Contents {
    /// Write the file atomically, with the two checksums added to its metadata.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut meta = self.meta.clone();
        meta.insert(CRC32.to_string(), tensors_crc(self.entries.iter().map(|(name, _, _, bytes)| (name.as_str(), bytes.as_slice())).collect()));
        meta.insert(METADATA_CRC32.to_string(), metadata_crc(&meta));
        let views: Vec<(String, TensorView<'_>)> = self
            .entries
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v)).map_err(|e| err(path, e.to_string()))
            })
            .collect::<Result<_>>()?;
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e.to_string()))?;
        write_atomic(path, &bytes)
    }
}

/// One tensor to serialize: name, type, shape, little-endian bytes.
type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// One tensor to serialize whose bytes may still be on their way (name, type, shape, bytes).
type PendingEntry = (String, Dtype, Vec<usize>, Option<Vec<u8>>);

/// A tensor to serialize whose bytes are still to be read: a tensor's as f32, or given.
enum Source<'a> {
    Tensor(&'a Tensor),
    Bytes(Vec<u8>),
}

/// What a checkpoint file will hold, its tensors' copies to the host queued
/// ([`engine::download::Download`]) but perhaps not finished: the GPU may still be copying
/// them while the host goes on. [`Pending::finish`] waits for them. It holds no reference to
/// the tensors, so it may be finished (and written) on another thread (`saver.rs`).
pub struct Pending {
    /// Each entry's bytes: `None` for the next of the download's.
    entries: Vec<PendingEntry>,
    download: Download,
    meta: HashMap<String, String>,
}

impl Pending {
    /// Queue the copies of `entries`' tensors to the host, into a buffer of `pool` (see
    /// [`Download::start`]).
    fn start(entries: Vec<(String, Dtype, Vec<usize>, Source<'_>)>, meta: HashMap<String, String>, pool: &StagingPool) -> Result<Pending> {
        let tensors: Vec<&Tensor> = entries
            .iter()
            .filter_map(|(_, _, _, s)| match s {
                Source::Tensor(t) => Some(*t),
                Source::Bytes(_) => None,
            })
            .collect();
        let download = Download::start(&tensors, pool)?;
        let entries = entries
            .into_iter()
            .map(|(name, dtype, shape, s)| {
                let bytes = match s {
                    Source::Tensor(_) => None,
                    Source::Bytes(b) => Some(b),
                };
                (name, dtype, shape, bytes)
            })
            .collect();
        Ok(Pending { entries, download, meta })
    }

    /// Wait for the copies to the host and return the file's contents.
    pub fn finish(self) -> Result<Contents> {
        let mut copied = self.download.finish()?.into_iter();
        let entries = self
            .entries
            .into_iter()
            .map(|(name, dtype, shape, bytes)| {
                let bytes = bytes.or_else(|| copied.next()).expect("one download part per tensor entry");
                (name, dtype, shape, bytes)
            })
            .collect();
        Ok(Contents { entries, meta: self.meta })
    }
}

/// The network's `state_dict` entries, each name preceded by `prefix` ("" for PyTorch's).
fn state_dict_entries<'a>(model: &'a ResNet9, prefix: &str) -> Vec<(String, Dtype, Vec<usize>, Source<'a>)> {
    let arch = &model.arch;
    let mut entries = Vec::new();
    for (i, t) in model.params.iter().enumerate() {
        entries.push((format!("{prefix}{}", arch.param_names[i]), Dtype::F32, t.shape().to_vec(), Source::Tensor(t)));
    }
    for (i, s) in model.bn.iter().enumerate() {
        let bn = format!("{prefix}{}", arch.bn_name(i));
        entries.push((format!("{bn}.running_mean"), Dtype::F32, s.mean.shape().to_vec(), Source::Tensor(&s.mean)));
        entries.push((format!("{bn}.running_var"), Dtype::F32, s.var.shape().to_vec(), Source::Tensor(&s.var)));
        let count = (s.num_batches_tracked as i64).to_le_bytes().to_vec();
        entries.push((format!("{bn}.num_batches_tracked"), Dtype::I64, vec![], Source::Bytes(count)));
    }
    entries
}

/// Save the network as a PyTorch-compatible `state_dict`; `epochs_done`, if given, goes into the
/// metadata (a run's checkpoint: see [`epochs_done`]).
pub fn save_model(path: &Path, model: &ResNet9, epochs_done: Option<usize>) -> Result<()> {
    model_contents(model, epochs_done, None, None, &StagingPool::new())?.finish()?.write(path)
}

/// What [`save_model`] writes, its copies to the host queued into a buffer of `pool`. A run's
/// checkpoint also records in the metadata `norm`, the normalisation of the network's inputs
/// (see [`saved_normalization`]), and `trained_on`, the data its last epoch read (the log's
/// `Data:` line: see [`TRAINED_ON`]).
pub fn model_contents(
    model: &ResNet9,
    epochs_done: Option<usize>,
    norm: Option<Normalization>,
    trained_on: Option<&str>,
    pool: &StagingPool,
) -> Result<Pending> {
    let arch = &model.arch;
    let entries = state_dict_entries(model, "");
    let mut meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("channels".to_string(), format!("{:?}", arch.channels)),
        ("out_scale".to_string(), arch.out_scale.to_string()),
    ]);
    if let Some(n) = epochs_done {
        meta.insert(EPOCHS_DONE.to_string(), n.to_string());
    }
    if let Some(n) = norm {
        meta.insert(PIXEL_MEAN.to_string(), format!("{:?}", n.mean));
        meta.insert(PIXEL_STD.to_string(), format!("{:?}", n.std));
    }
    if let Some(data) = trained_on {
        meta.insert(TRAINED_ON.to_string(), data.to_string());
    }
    Pending::start(entries, meta, pool)
}

/// The metadata key of the data a run's network was trained on, as its log's `Data:` line says
/// it (`data::Source`: a folder's path, or an archive's with its MD5 and whether that is the
/// published one); after a `--resume`, the data of the epoch that saved the file. Informative
/// only: nothing reads the data from it.
pub const TRAINED_ON: &str = "trained_on";

/// The metadata keys of the normalisation a run's network was trained with: the per-channel
/// (R, G, B) mean and standard deviation of its training pixels scaled to [0, 1], as
/// `[0.49139968, 0.48215827, 0.44653124]` (each value printed so that it reads back as the
/// same f32).
pub const PIXEL_MEAN: &str = "pixel_mean";
/// See [`PIXEL_MEAN`].
pub const PIXEL_STD: &str = "pixel_std";

/// The normalisation saved in a model file's metadata `meta` (see [`PIXEL_MEAN`]); `None` for a
/// file without it (written before it existed, or by PyTorch), an error for one whose values
/// are not three numbers (three positive ones for the standard deviation).
pub fn saved_normalization(path: &Path, meta: &HashMap<String, String>) -> Result<Option<Normalization>> {
    let three = |key: &str| -> Result<Option<[f32; 3]>> {
        let Some(v) = meta.get(key) else { return Ok(None) };
        let values: Vec<f32> = v
            .trim()
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .map(|v| v.split(',').map(|x| x.trim().parse::<f32>()).collect::<std::result::Result<Vec<_>, _>>())
            .and_then(|r| r.ok())
            .filter(|x| x.len() == 3 && x.iter().all(|x| x.is_finite()))
            .ok_or_else(|| err(path, format!("{key} is {v:?}, not three numbers")))?;
        Ok(Some([values[0], values[1], values[2]]))
    };
    match (three(PIXEL_MEAN)?, three(PIXEL_STD)?) {
        (None, None) => Ok(None),
        (Some(mean), Some(std)) if std.iter().all(|s| *s > 0.0) => Ok(Some(Normalization { mean, std })),
        (Some(_), Some(std)) => Err(err(path, format!("{PIXEL_STD} is {std:?}: a standard deviation must be above 0"))),
        _ => Err(err(path, format!("the metadata has one of {PIXEL_MEAN} and {PIXEL_STD} without the other"))),
    }
}

/// The network a `state_dict` file holds (ours, or PyTorch's of `bench/resnet9.py`), loaded
/// on the CPU in f32 as [`load_model`] does, and the file's metadata. Its channel counts are
/// read off the convolutions' weight shapes (`prep.conv.weight` is `[c0, 3, 3, 3]`,
/// `layer1.conv.weight` `[c1, c0, 3, 3]`, and so on), so any width loads; the logits' scale is
/// `out_scale` if given, else the metadata's `out_scale` (which our files record), else an
/// error that says to give it.
pub fn load_network(path: &Path, out_scale: Option<f64>) -> Result<(ResNet9, HashMap<String, String>)> {
    let bytes = read_file(path)?;
    let (st, meta) = open(path, &bytes)?;
    let mut channels = [0usize; 4];
    // (Only the output channels are read here: the load below checks every shape, the input
    // channels included, against the network these counts make.)
    for (c, name) in channels.iter_mut().zip(["prep.conv.weight", "layer1.conv.weight", "layer2.conv.weight", "layer3.conv.weight"]) {
        let view = st.tensor(name).map_err(|_| err(path, format!("tensor {name} is missing: not a ResNet-9 state_dict")))?;
        match view.shape() {
            [out, _, 3, 3] => *c = *out,
            other => return Err(err(path, format!("tensor {name} has shape {other:?}, not [out, in, 3, 3]"))),
        }
    }
    let out_scale = match (out_scale, meta.get("out_scale")) {
        (Some(s), _) => s,
        (None, Some(v)) => v.parse().map_err(|_| err(path, format!("out_scale is {v:?}, not a number")))?,
        (None, None) => return Err(err(path, "the file does not record the logits' scale (out_scale): give --out-scale (0.125 for D. Page's ResNet-9)")),
    };
    let arch = Arch::with_channels(channels, out_scale).map_err(|e| err(path, e.to_string()))?;
    // (Placeholders of the right shapes, which the load replaces.)
    let params = arch.param_shapes.iter().map(|s| Tensor::zeros(s, DType::F32)).collect();
    let mut model = ResNet9 { params, bn: arch.init_bn_stats(DType::F32), arch };
    load_state_dict(path, &st, "", &mut model)?;
    Ok((model, meta))
}

/// The metadata key of the epochs a run's checkpoint files were saved after.
pub const EPOCHS_DONE: &str = "epochs_done";

/// The epochs after which the checkpoint file at `path` was saved, from its metadata `meta` (as
/// [`load_model`] and [`load_optimizer`] return it); `None` for a file without that entry
/// (written before it existed, or not by a run).
pub fn epochs_done(path: &Path, meta: &HashMap<String, String>) -> Result<Option<usize>> {
    match meta.get(EPOCHS_DONE) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| err(path, format!("{EPOCHS_DONE} is {v:?}, not a count"))),
    }
}

/// The metadata of the safetensors file `path` whose bytes are `bytes` (empty if it has none).
fn metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| err(path, e.to_string()))?;
    Ok(header.metadata().clone().unwrap_or_default())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn load_f32(path: &Path, st: &SafeTensors<'_>, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let view = st.tensor(name).map_err(|_| err(path, format!("tensor {name} is missing")))?;
    if view.dtype() != Dtype::F32 {
        return Err(err(path, format!("tensor {name} is {:?}, expected F32", view.dtype())));
    }
    if view.shape() != shape {
        return Err(err(path, format!("tensor {name} has shape {:?}, the network expects {shape:?}", view.shape())));
    }
    let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(Tensor::new(shape, values)?.to_dtype(dtype))
}

/// Load a `state_dict` written by [`save_model`] (or by PyTorch) into `model`,
/// checking every name, dtype and shape; `model` is unchanged on error. Returns the file's
/// metadata.
pub fn load_model(path: &Path, model: &mut ResNet9) -> Result<HashMap<String, String>> {
    let bytes = read_file(path)?;
    let (st, meta) = open(path, &bytes)?;
    load_state_dict(path, &st, "", model)?;
    Ok(meta)
}

/// The tensors and the metadata of the safetensors file `path` whose bytes are `bytes`, its
/// checksum checked.
fn open<'a>(path: &Path, bytes: &'a [u8]) -> Result<(SafeTensors<'a>, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| err(path, format!("not a safetensors file: {e}")))?;
    let meta = metadata(path, bytes)?;
    check_crc(path, &st, &meta)?;
    Ok((st, meta))
}

/// A checkpoint file read once, its checksum checked: `--resume` takes the run's settings, the
/// trained weights and the momentum buffers from one `optimizer.safetensors` without reading
/// (and checking) it three times.
pub struct CheckpointFile {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    meta: HashMap<String, String>,
}

impl CheckpointFile {
    pub fn read(path: &Path) -> Result<CheckpointFile> {
        let bytes = read_file(path)?;
        let (_, meta) = open(path, &bytes)?;
        Ok(CheckpointFile { path: path.to_path_buf(), bytes, meta })
    }

    /// The file's metadata (empty if it has none).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.meta
    }

    fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| err(&self.path, format!("not a safetensors file: {e}")))
    }

    /// The trained weights that [`save_optimizer`] stored beside the momentum buffers (a run
    /// with `--ema`), loaded into `model` as [`load_model`] does; an error if the file has none.
    pub fn load_trained(&self, model: &mut ResNet9) -> Result<()> {
        load_state_dict(&self.path, &self.tensors()?, TRAINED, model)
    }

    /// What [`save_optimizer`] wrote: the momentum buffers (checked against the network's
    /// shapes); the metadata is [`CheckpointFile::metadata`].
    pub fn load_optimizer(&self, model: &ResNet9) -> Result<SgdState> {
        let st = self.tensors()?;
        let names = st.names();
        let mut bufs = Vec::with_capacity(model.params.len());
        for (i, p) in model.params.iter().enumerate() {
            let name = format!("momentum.{}", model.arch.param_names[i]);
            if names.iter().any(|n| *n == name) {
                bufs.push(Some(load_f32(&self.path, &st, &name, p.shape(), p.dtype())?));
            } else {
                bufs.push(None);
            }
        }
        Ok(SgdState { momentum_buffers: bufs })
    }
}

/// [`CheckpointFile::load_trained`] of the file at `path`.
pub fn load_trained(path: &Path, model: &mut ResNet9) -> Result<()> {
    CheckpointFile::read(path)?.load_trained(model)
}

/// The names' prefix of the trained weights in `optimizer.safetensors`.
const TRAINED: &str = "trained.";

/// The `state_dict` whose names start with `prefix` in `st` into `model` (unchanged on error).
fn load_state_dict(path: &Path, st: &SafeTensors<'_>, prefix: &str, model: &mut ResNet9) -> Result<()> {
    let arch = &model.arch;
    let mut params = Vec::with_capacity(model.params.len());
    for (i, p) in model.params.iter().enumerate() {
        params.push(load_f32(path, st, &format!("{prefix}{}", arch.param_names[i]), p.shape(), p.dtype())?);
    }
    let mut bn = model.bn.clone();
    for (i, s) in bn.iter_mut().enumerate() {
        let prefix = format!("{prefix}{}", arch.bn_name(i));
        s.mean = load_f32(path, st, &format!("{prefix}.running_mean"), s.mean.shape(), s.mean.dtype())?;
        s.var = load_f32(path, st, &format!("{prefix}.running_var"), s.var.shape(), s.var.dtype())?;
        let name = format!("{prefix}.num_batches_tracked");
        let view = st.tensor(&name).map_err(|_| err(path, format!("tensor {name} is missing")))?;
        let b: [u8; 8] = view.data().try_into().map_err(|_| err(path, format!("{name} is not one i64")))?;
        s.num_batches_tracked = i64::from_le_bytes(b).max(0) as u64;
    }
    model.params = params;
    model.bn = bn;
    Ok(())
}

/// Save the momentum buffers and the run's metadata; with `trained` (a run with `--ema`, whose
/// `model.safetensors` holds the average), also the trained weights, for [`load_trained`].
pub fn save_optimizer(path: &Path, model: &ResNet9, state: &SgdState, meta: HashMap<String, String>, trained: Option<&ResNet9>) -> Result<()> {
    optimizer_contents(model, state, meta, trained, &StagingPool::new())?.finish()?.write(path)
}

/// What [`save_optimizer`] writes, its copies to the host queued into a buffer of `pool`.
pub fn optimizer_contents(model: &ResNet9, state: &SgdState, meta: HashMap<String, String>, trained: Option<&ResNet9>, pool: &StagingPool) -> Result<Pending> {
    let mut entries = trained.map(|t| state_dict_entries(t, TRAINED)).unwrap_or_default();
    for (i, buf) in state.momentum_buffers.iter().enumerate() {
        if let Some(t) = buf {
            entries.push((format!("momentum.{}", model.arch.param_names[i]), Dtype::F32, t.shape().to_vec(), Source::Tensor(t)));
        }
    }
    Pending::start(entries, meta, pool)
}

/// Load what [`save_optimizer`] wrote to `path`: the momentum buffers (checked against the
/// network's shapes) and the metadata.
pub fn load_optimizer(path: &Path, model: &ResNet9) -> Result<(SgdState, HashMap<String, String>)> {
    let file = CheckpointFile::read(path)?;
    Ok((file.load_optimizer(model)?, file.meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn model_round_trips_and_rejects_a_mismatched_network() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("model.safetensors");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut a = ResNet9::new(0.125, 1.0, DType::F32, &mut rng).unwrap();
        a.bn[2].num_batches_tracked = 17;
        a.bn[2].mean = Tensor::randn(a.bn[2].mean.shape(), DType::F32, 1.0, &mut rng);
        save_model(&path, &a, Some(7)).unwrap();
        assert!(!dir.join("model.safetensors.tmp").exists());

        let mut b = ResNet9::new(0.125, 1.0, DType::F32, &mut rng).unwrap();
        assert!(b.params[0].max_abs_diff(&a.params[0]).unwrap() > 0.0);
        let meta = load_model(&path, &mut b).unwrap();
        assert_eq!(epochs_done(&path, &meta).unwrap(), Some(7));
        for (x, y) in a.params.iter().zip(&b.params) {
            assert_eq!(x.to_f64_vec(), y.to_f64_vec());
        }
        assert_eq!(b.bn[2].num_batches_tracked, 17);
        assert_eq!(b.bn[2].mean.to_f64_vec(), a.bn[2].mean.to_f64_vec());

        let mut wider = ResNet9::new(0.25, 1.0, DType::F32, &mut rng).unwrap();
        let e = load_model(&path, &mut wider).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");

        std::fs::write(&path, b"garbage").unwrap();
        assert!(load_model(&path, &mut b).is_err());
    }

    /// A small f32 network (width 0.125, logit scale 0.125) of random weights.
    fn small_net(rng: &mut impl rand::Rng) -> ResNet9 {
        ResNet9::new(0.125, 0.125, DType::F32, rng).unwrap()
    }

    /// Momentum buffers of random values, one per parameter of `net`.
    fn random_momentum(net: &ResNet9, rng: &mut impl rand::Rng) -> SgdState {
        SgdState { momentum_buffers: net.params.iter().map(|p| Some(Tensor::randn(p.shape(), DType::F32, 1.0, rng))).collect() }
    }

    /// A byte of tensor data changed on disk (a valid file still, to safetensors) is refused by
    /// its checksum, leaving the network as it was; so is a changed optimizer file; a file
    /// without a checksum (PyTorch's, or one written before) still loads.
    #[test]
    fn damaged_tensor_data_is_refused_by_the_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("model.safetensors");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let a = small_net(&mut rng);
        save_model(&path, &a, Some(1)).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        let i = bad.len() - 100;
        bad[i] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let mut b = small_net(&mut rng);
        let before = b.params[0].to_f64_vec();
        let e = load_model(&path, &mut b).unwrap_err().to_string();
        assert!(e.contains("do not match the checksum saved with them") && e.contains("damaged"), "{e}");
        assert_eq!(b.params[0].to_f64_vec(), before);

        let opt = tmp.path().join("optimizer.safetensors");
        let state = random_momentum(&a, &mut rng);
        save_optimizer(&opt, &a, &state, HashMap::new(), None).unwrap();
        let mut bytes = std::fs::read(&opt).unwrap();
        let i = bytes.len() - 4;
        bytes[i] ^= 0x01;
        std::fs::write(&opt, &bytes).unwrap();
        assert!(load_optimizer(&opt, &a).unwrap_err().to_string().contains("checksum"));

        // The same tensors without the metadata entry: loaded unchecked.
        let st = SafeTensors::deserialize(&good).unwrap();
        let plain = safetensors::serialize(st.tensors(), None).unwrap();
        std::fs::write(&path, plain).unwrap();
        load_model(&path, &mut b).unwrap();
        assert_eq!(b.params[0].to_f64_vec(), a.params[0].to_f64_vec());
    }

    /// A file system without folder sync (EINVAL, ENOTSUP) does not fail a save; a failing disk
    /// (EIO) does.
    #[test]
    fn only_a_failing_folder_sync_is_an_error() {
        use std::io::Error as IoError;
        assert!(no_folder_sync_is_no_error(Err(IoError::from_raw_os_error(22))).is_ok(), "EINVAL");
        assert!(no_folder_sync_is_no_error(Err(IoError::from_raw_os_error(95))).is_ok(), "EOPNOTSUPP (Linux)");
        assert_eq!(no_folder_sync_is_no_error(Err(IoError::from_raw_os_error(5))).unwrap_err().raw_os_error(), Some(5), "EIO");
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&a, b"x").unwrap();
        rename_durably(&a, &b).unwrap();
        assert!(!a.exists() && std::fs::read(&b).unwrap() == b"x");
    }

    /// A setting changed on disk to another value still in range (a file safetensors still
    /// reads) is refused by the metadata's checksum; a file with the tensors' checksum only (as
    /// written before the metadata's existed) loads.
    #[test]
    fn damaged_settings_are_refused_by_the_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let opt = tmp.path().join("optimizer.safetensors");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let a = small_net(&mut rng);
        let state = random_momentum(&a, &mut rng);
        let meta = HashMap::from([("weight_decay".to_string(), "0.0005".to_string()), ("epochs".to_string(), "24".to_string())]);
        save_optimizer(&opt, &a, &state, meta, None).unwrap();
        let good = std::fs::read(&opt).unwrap();
        let (_, read) = load_optimizer(&opt, &a).unwrap();
        assert_eq!(read["weight_decay"], "0.0005");

        let at = good.windows(6).position(|w| w == b"0.0005").unwrap();
        let mut bad = good.clone();
        bad[at..at + 6].copy_from_slice(b"0.0006");
        std::fs::write(&opt, &bad).unwrap();
        let e = load_optimizer(&opt, &a).unwrap_err().to_string();
        assert!(e.contains("the settings and progress in its metadata do not match the checksum"), "{e}");

        let st = SafeTensors::deserialize(&good).unwrap();
        let mut older = read.clone();
        older.remove(METADATA_CRC32);
        older.insert("weight_decay".to_string(), "0.0006".to_string());
        std::fs::write(&opt, safetensors::serialize(st.tensors(), Some(older)).unwrap()).unwrap();
        let (state_back, read) = load_optimizer(&opt, &a).unwrap();
        assert_eq!(read["weight_decay"], "0.0006");
        assert_eq!(state_back.momentum_buffers[0].as_ref().unwrap().to_f64_vec(), state.momentum_buffers[0].as_ref().unwrap().to_f64_vec());
    }

    /// With `--ema` the optimizer file also carries the trained weights (`trained.*`): they
    /// come back exactly, beside the momentum buffers, and a file without them is an error
    /// that names the missing tensor.
    #[test]
    fn the_trained_weights_round_trip_through_the_optimizer_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("optimizer.safetensors");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let average = small_net(&mut rng);
        let mut trained = small_net(&mut rng);
        trained.bn[5].var = Tensor::uniform(trained.bn[5].var.shape(), DType::F32, 0.5, 2.0, &mut rng);
        trained.bn[5].num_batches_tracked = 9;
        let momentum: Vec<Option<Tensor>> = trained.params.iter().map(|p| Some(Tensor::randn(p.shape(), DType::F32, 1.0, &mut rng))).collect();
        let state = SgdState { momentum_buffers: momentum.clone() };
        save_optimizer(&path, &average, &state, HashMap::new(), Some(&trained)).unwrap();

        let mut back = average.clone();
        load_trained(&path, &mut back).unwrap();
        for (x, y) in trained.params.iter().zip(&back.params) {
            assert_eq!(x.to_f64_vec(), y.to_f64_vec());
        }
        assert_eq!(back.bn[5].var.to_f64_vec(), trained.bn[5].var.to_f64_vec());
        assert_eq!(back.bn[5].num_batches_tracked, 9);
        let (loaded, _) = load_optimizer(&path, &average).unwrap();
        for (x, y) in loaded.momentum_buffers.iter().zip(&momentum) {
            assert_eq!(x.as_ref().unwrap().to_f64_vec(), y.as_ref().unwrap().to_f64_vec());
        }

        save_optimizer(&path, &average, &state, HashMap::new(), None).unwrap();
        let mut unchanged = average.clone();
        let e = load_trained(&path, &mut unchanged).unwrap_err().to_string();
        assert!(e.contains("trained.prep.conv.weight is missing"), "{e}");
        assert_eq!(unchanged.params[0].to_f64_vec(), average.params[0].to_f64_vec());
    }

    /// A network of a width whose channel counts `Arch::new` cannot be asked for by another
    /// width (0.3: 19, 38, 77, 154) loads from its shapes alone, with every tensor equal; the
    /// normalisation saved with it reads back as the same f32 values, bit for bit; a file with
    /// one of the two keys, or a value that is not three numbers, is refused.
    #[test]
    fn a_saved_network_loads_from_its_shapes_with_its_normalisation() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("model.safetensors");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let net = ResNet9::new(0.3, 0.25, DType::F32, &mut rng).unwrap();
        assert_eq!(net.arch.channels, [19, 38, 77, 154]);
        let norm = Normalization { mean: [0.4914009, 0.48215827, 0.1 + 0.2], std: [0.24703233, 1.0 / 3.0, 0.2616] };
        model_contents(&net, Some(3), Some(norm), Some("/d/cifar-10-binary.tar.gz (read in place; ...)"), &StagingPool::new())
            .unwrap()
            .finish()
            .unwrap()
            .write(&path)
            .unwrap();
        let (loaded, meta) = load_network(&path, None).unwrap();
        assert_eq!(loaded.arch.channels, net.arch.channels);
        assert_eq!(loaded.arch.out_scale, 0.25);
        for (a, b) in loaded.params.iter().zip(&net.params) {
            assert_eq!(a.to_f32_vec(), b.to_f32_vec());
        }
        for (a, b) in loaded.bn.iter().zip(&net.bn) {
            assert_eq!((a.mean.to_f32_vec(), a.var.to_f32_vec()), (b.mean.to_f32_vec(), b.var.to_f32_vec()));
        }
        assert_eq!(meta.get(TRAINED_ON).map(String::as_str), Some("/d/cifar-10-binary.tar.gz (read in place; ...)"));
        let back = saved_normalization(&path, &meta).unwrap().unwrap();
        assert_eq!(back.mean.map(f32::to_bits), norm.mean.map(f32::to_bits));
        assert_eq!(back.std.map(f32::to_bits), norm.std.map(f32::to_bits));
        assert_eq!(load_network(&path, Some(2.0)).unwrap().0.arch.out_scale, 2.0, "a given scale wins");
        let mut m = meta.clone();
        m.remove(PIXEL_STD);
        assert!(saved_normalization(&path, &m).unwrap_err().to_string().contains("without the other"));
        for bad in ["[0.1, 0.2]", "0.1, 0.2, 0.3", "[0.1, x, 0.3]", "[0.1, NaN, 0.3]"] {
            let mut m = meta.clone();
            m.insert(PIXEL_MEAN.into(), bad.into());
            assert!(saved_normalization(&path, &m).unwrap_err().to_string().contains("not three numbers"), "{bad}");
        }
        let mut m = meta.clone();
        m.insert(PIXEL_STD.into(), "[0.2, 0, 0.2]".into());
        assert!(saved_normalization(&path, &m).unwrap_err().to_string().contains("above 0"));
        m.remove(PIXEL_STD);
        m.remove(PIXEL_MEAN);
        assert!(saved_normalization(&path, &m).unwrap().is_none());
        // Not a ResNet-9: a state_dict without the first convolution.
        let other = tmp.path().join("other.safetensors");
        let view = TensorView::new(Dtype::F32, vec![2], &[0u8; 8]).unwrap();
        std::fs::write(&other, safetensors::serialize([("fc.bias", view)], None).unwrap()).unwrap();
        assert!(load_network(&other, Some(1.0)).unwrap_err().to_string().contains("prep.conv.weight is missing"));
    }
}
