//! CIFAR-10, binary version, read in place through `memmap2`.
//!
//! The six files `data_batch_1.bin` … `data_batch_5.bin` (training, 50,000 records)
//! and `test_batch.bin` (10,000) are memory-mapped and validated, never copied
//! into another format (a file present only gzip-compressed, `NAME.bin.gz`, is
//! decompressed into memory instead: [`cifar::open_file`]; so are the six files of the
//! official archive `cifar-10-binary.tar.gz` when it is given unextracted: [`archive`]). A record is 3073 bytes: the label (0-9), then 3072 pixels,
//! 1024 red, 1024 green, 1024 blue, each plane row-major 32x32 (CHW).
//!
//! - [`cifar`]: opening and validating the files, record access;
//! - [`archive`]: the official archive read in place, with its MD5;
//! - [`locate`](mod@locate): finding the folder (`--data`, `$CIFAR10_DIR`, `./data/…`) and downloading it;
//! - [`shuffle`]: the seeded per-epoch order;
//! - [`augment`]: crop + flip + cutout + normalisation, the CPU reference.

pub mod archive;
pub mod augment;
pub mod cifar;
pub mod locate;
pub mod shuffle;

pub use cifar::{Cifar10, Source, Split, class_counts};
pub use locate::{download, locate};
pub use shuffle::epoch_order;

/// Bytes of one record: 1 label byte + 3 × 32 × 32 pixel bytes.
pub const RECORD_BYTES: usize = 3073;
/// Bytes of one image (CHW).
pub const IMAGE_BYTES: usize = 3072;
/// The class names, in label order (as in `batches.meta.txt`).
pub const CLASS_NAMES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Everything that can be wrong with the data, as a message that names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// The files are not where they were looked for.
    #[error("{0}")]
    NotFound(String),
    /// A file is there but its contents are wrong.
    #[error("{path}: {msg}")]
    Corrupt { path: std::path::PathBuf, msg: String },
    /// The download failed.
    #[error("{0}")]
    Download(String),
}

/// The data crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
