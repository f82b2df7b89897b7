//! Opening, validating and reading the memory-mapped CIFAR-10 binary files.

use crate::{Error, IMAGE_BYTES, RECORD_BYTES, Result};
use memmap2::Mmap;
use std::path::{Path, PathBuf};

/// The training files, in order.
pub const TRAIN_FILES: [&str; 5] = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";
/// Records in the official training split.
pub const TRAIN_RECORDS: usize = 50_000;
/// Records in the official test split.
pub const TEST_RECORDS: usize = 10_000;

/// One split: its files, read in place.
pub struct Split {
    files: Vec<FileBytes>,
    /// Index of the first record of each file, plus the total at the end.
    starts: Vec<usize>,
}

/// The bytes of one dataset file: memory-mapped in place, or, for a gzip-compressed copy
/// (`NAME.gz` where `NAME` is absent), decompressed once into memory (about 30 MB per file).
pub enum FileBytes {
    Mapped(Mmap),
    Decompressed(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Decompressed(v) => v,
        }
    }
}

/// Both splits of CIFAR-10.
pub struct Cifar10 {
    pub train: Split,
    pub test: Split,
    /// Where they were read from.
    pub source: Source,
}

/// Where a dataset was read from: the logs' `Data:` line.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A folder of the six files.
    Folder(PathBuf),
    /// The archive, read in place ([`crate::archive`]), with its MD5.
    Archive { path: PathBuf, md5: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Folder(dir) => write!(f, "{}", dir.display()),
            Source::Archive { path, md5 } if md5 == crate::locate::MD5 => {
                write!(f, "{} (read in place; MD5 {md5}: the official archive)", path.display())
            }
            Source::Archive { path, md5 } => {
                write!(f, "{} (read in place; MD5 {md5}, not the official archive's {})", path.display(), crate::locate::MD5)
            }
        }
    }
}

impl Cifar10 {
    /// Memory-map and validate the six files in the folder `path`; or, when `path` is a
    /// `.tar.gz` file, read them from that archive ([`Cifar10::open_archive`]).
    pub fn open(path: &Path) -> Result<Cifar10> {
        if crate::archive::is_archive_file(path) {
            return Cifar10::open_archive(path);
        }
        check_folder(path)?;
        let train = Split::open(path, &TRAIN_FILES, TRAIN_RECORDS)?;
        let test = Split::open(path, &[TEST_FILE], TEST_RECORDS)?;
        Ok(Cifar10 { train, test, source: Source::Folder(path.to_path_buf()) })
    }

    /// The six files decompressed from the tar.gz `archive` into memory (in whatever folder of
    /// it they are, `cifar-10-batches-bin/` in the official one) and validated as from a folder;
    /// errors name a file as `ARCHIVE/PATH-INSIDE`.
    pub fn open_archive(archive: &Path) -> Result<Cifar10> {
        let names: Vec<&str> = TRAIN_FILES.iter().chain([&TEST_FILE]).copied().collect();
        // (Each file of the official archive holds 10,000 records: a larger member is refused
        // as it is read, not after the whole of it is in memory.)
        let members = crate::archive::read_members(archive, &names, TEST_RECORDS * RECORD_BYTES)?;
        let mut found = Vec::new();
        for ((name, bytes), inside) in names.iter().zip(members.files).zip(members.paths) {
            match (bytes, inside) {
                (Some(bytes), Some(inside)) => found.push((archive.join(inside), FileBytes::Decompressed(bytes))),
                _ => {
                    return Err(Error::NotFound(format!(
                        "{}: the archive holds no {name} (the binary version's archive, {}, holds {} and {TEST_FILE})",
                        archive.display(),
                        crate::archive::ARCHIVE_NAME,
                        TRAIN_FILES.join(", ")
                    )));
                }
            }
        }
        let test_files = found.split_off(TRAIN_FILES.len());
        let train = Split::from_files(archive, found, TRAIN_RECORDS)?;
        let test = Split::from_files(archive, test_files, TEST_RECORDS)?;
        Ok(Cifar10 { train, test, source: Source::Archive { path: archive.to_path_buf(), md5: members.md5 } })
    }
}

/// The folder exists, is not empty, and is not one of the other CIFAR-10 versions.
fn check_folder(dir: &Path) -> Result<()> {
    let binary_hint = "this program reads the *binary version* (cifar-10-binary.tar.gz: data_batch_1.bin … data_batch_5.bin, test_batch.bin)";
    let entries: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && crate::archive::is_archive_name(dir) => {
            return Err(Error::NotFound(format!(
                "{}: no such file (from --data, or CIFAR10_DIR); name the archive {} where it is, or the folder that holds the CIFAR-10 files",
                dir.display(),
                crate::archive::ARCHIVE_NAME
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(format!(
                "{}: no such folder (from --data, or CIFAR10_DIR); point it at the folder that holds the CIFAR-10 files, \
                 or leave both out to have `model` download the official archive into ./data; {binary_hint}",
                dir.display()
            )));
        }
        Err(e) => return Err(Error::Io { path: dir.to_path_buf(), source: e }),
    };
    let has = |name: &str| entries.iter().any(|e| e == name);
    if entries.is_empty() {
        return Err(Error::NotFound(format!("{} is empty; {binary_hint}", dir.display())));
    }
    if !has(TRAIN_FILES[0]) && has("data_batch_1") {
        return Err(Error::NotFound(format!(
            "{} holds the Python (pickle) version of CIFAR-10 (data_batch_1 without .bin); {binary_hint}",
            dir.display()
        )));
    }
    if !has(TRAIN_FILES[0]) && has("data_batch_1.mat") {
        return Err(Error::NotFound(format!("{} holds the MATLAB version of CIFAR-10 (.mat files); {binary_hint}", dir.display())));
    }
    Ok(())
}

/// The largest file a gzip-compressed copy may decompress to: the whole training split.
/// A larger stream is not CIFAR-10, and reading it on would only fill the memory.
const MAX_DECOMPRESSED: usize = TRAIN_RECORDS * RECORD_BYTES;

/// Where file `name` of `dir` may be: as is, or gzip-compressed beside it (`name.gz`).
pub fn file_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(name), dir.join(format!("{name}.gz")))
}

/// `dir/name` memory-mapped, else `dir/name.gz` decompressed, with the path it came from.
/// Nothing is checked here but that the bytes can be read (validation comes after, when the dataset is opened).
pub fn open_file(dir: &Path, name: &str) -> Result<(PathBuf, FileBytes)> {
    let (path, gz) = file_paths(dir, name);
    for p in [&path, &gz] {
        if p.is_dir() {
            return Err(Error::Corrupt { path: p.clone(), msg: "is a folder, not a CIFAR-10 file".into() });
        }
    }
    if path.exists() {
        let io = |e| Error::Io { path: path.clone(), source: e };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only and the dataset files are not modified while the
        // program runs; a concurrent truncation by another process would be outside Rust's model.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        return Ok((path, FileBytes::Mapped(map)));
    }
    if gz.exists() {
        let bytes = decompress(&gz, MAX_DECOMPRESSED)?;
        return Ok((gz, FileBytes::Decompressed(bytes)));
    }
    Err(Error::NotFound(format!(
        "{} is missing (nor is there a gzip-compressed {name}.gz): a CIFAR-10 folder holds {}, and {TEST_FILE}",
        path.display(),
        TRAIN_FILES.join(", ")
    )))
}

/// The whole decompressed contents of the gzip file `gz` (several gzip members are read as
/// one stream, as `gunzip` does), at most `limit` bytes.
fn decompress(gz: &Path, limit: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(gz).map_err(|e| Error::Io { path: gz.to_path_buf(), source: e })?;
    let mut bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file))
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Corrupt {
            path: gz.to_path_buf(),
            msg: format!("could not decompress it ({e}): the gzip stream is damaged or truncated; decompress it with gunzip to see more"),
        })?;
    if bytes.len() > limit {
        return Err(Error::Corrupt {
            path: gz.to_path_buf(),
            msg: format!("it decompresses to more than {limit} bytes, more than a CIFAR-10 file can hold"),
        });
    }
    Ok(bytes)
}

/// Check a file's size and labels (`path` names it in the errors).
fn validate(path: &Path, bytes: &[u8]) -> Result<()> {
    let corrupt = |msg: String| Error::Corrupt { path: path.to_path_buf(), msg };
    if bytes.is_empty() {
        return Err(corrupt("the file is empty".into()));
    }
    if !bytes.len().is_multiple_of(RECORD_BYTES) {
        let whole = bytes.len() / RECORD_BYTES;
        return Err(corrupt(format!(
            "{} bytes is not a whole number of {RECORD_BYTES}-byte records: the file is truncated or has bytes added \
             (record {whole} is incomplete)",
            bytes.len()
        )));
    }
    if let Some((r, &label)) = bytes.chunks_exact(RECORD_BYTES).map(|rec| &rec[0]).enumerate().find(|(_, l)| **l > 9) {
        return Err(corrupt(format!("label {label} at record {r} (labels are 0-9): not a CIFAR-10 binary file")));
    }
    Ok(())
}

impl Split {
    /// Open the files `names` of `dir` (each memory-mapped, or its `.gz` copy decompressed: see
    /// [`open_file`]), check each, and check that they hold `expected` records in all.
    pub fn open(dir: &Path, names: &[&str], expected: usize) -> Result<Split> {
        let files = names.iter().map(|name| open_file(dir, name)).collect::<Result<Vec<_>>>()?;
        Split::from_files(dir, files, expected)
    }

    /// The split of `files` (each with the path that names it in errors), in order: each file
    /// checked, then the total against `expected`; `whole` (their folder or archive) is named
    /// when no one file is to blame.
    pub fn from_files(whole: &Path, files: Vec<(PathBuf, FileBytes)>, expected: usize) -> Result<Split> {
        let (paths, files): (Vec<PathBuf>, Vec<FileBytes>) = files.into_iter().unzip();
        let mut starts = vec![0];
        for (path, bytes) in paths.iter().zip(&files) {
            validate(path, bytes)?;
            starts.push(starts.last().copied().unwrap_or(0) + bytes.len() / RECORD_BYTES);
        }
        let names: Vec<String> = paths.iter().map(|p| p.file_name().unwrap_or(p.as_os_str()).to_string_lossy().into_owned()).collect();
        let total = *starts.last().unwrap_or(&0);
        if total != expected {
            let all = format!("{} hold {total} records, expected {expected}", names.join(", "));
            // The official files hold equal shares: name the first that does not.
            let share = expected.checked_div(names.len()).unwrap_or(0);
            let odd = (!names.is_empty() && expected.is_multiple_of(names.len()))
                .then(|| starts.windows(2).position(|w| w[1] - w[0] != share))
                .flatten();
            return Err(match odd {
                Some(i) => Error::Corrupt {
                    path: paths[i].clone(),
                    msg: format!("holds {} records where each file holds {share} ({all})", starts[i + 1] - starts[i]),
                },
                None => Error::Corrupt { path: whole.to_path_buf(), msg: all },
            });
        }
        Ok(Split { files, starts })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    /// Whether the split has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole record `i` (label byte + pixels).
    ///
    /// # Panics
    /// If `i >= len()`: indices come from the program's own shuffles, never from input.
    pub fn record(&self, i: usize) -> &[u8] {
        assert!(i < self.len(), "record {i} of a split of {}", self.len());
        let f = self.starts.partition_point(|&s| s <= i) - 1;
        let off = (i - self.starts[f]) * RECORD_BYTES;
        &self.files[f][off..off + RECORD_BYTES]
    }

    /// The 3072 pixel bytes of image `i`, CHW.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.record(i)[1..1 + IMAGE_BYTES]
    }

    /// The label of record `i`.
    pub fn label(&self, i: usize) -> u8 {
        self.record(i)[0]
    }

    /// The raw bytes of each file, in order (records back to back), for a bulk
    /// upload to the GPU.
    pub fn files(&self) -> impl Iterator<Item = &[u8]> {
        self.files.iter().map(|f| &f[..])
    }
}

/// Number of records of each class.
pub fn class_counts(split: &Split) -> [usize; 10] {
    let mut counts = [0; 10];
    for bytes in split.files() {
        for rec in bytes.chunks_exact(RECORD_BYTES) {
            counts[rec[0] as usize] += 1;
        }
    }
    counts
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The real files: `$CIFAR10_DIR`, else `../shared/cifar10` beside the checkout.
    pub(crate) fn real_dir() -> PathBuf {
        let dir = std::env::var_os("CIFAR10_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cifar10"));
        assert!(crate::locate::holds_dataset(&dir), "CIFAR-10 not found in {} (set CIFAR10_DIR)", dir.display());
        dir
    }

    /// `n` synthetic records with random pixels and labels `i % 10`.
    fn records(n: usize, seed: u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(n * RECORD_BYTES);
        let mut x = (seed as u32).wrapping_mul(2654435761).wrapping_add(1);
        for i in 0..n {
            v.push((i % 10) as u8);
            for _ in 0..IMAGE_BYTES {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                v.push((x >> 24) as u8);
            }
        }
        v
    }

    /// A folder of the six files with `n` records each.
    fn synthetic(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, f) in TRAIN_FILES.iter().chain([&TEST_FILE]).enumerate() {
            std::fs::write(dir.path().join(f), records(n, i as u8)).unwrap();
        }
        dir
    }

    fn open_err(dir: &Path) -> String {
        match Cifar10::open(dir) {
            Ok(_) => panic!("{} opened although it is bad", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_real_files_open_with_the_official_counts() {
        let ds = Cifar10::open(&real_dir()).unwrap();
        assert_eq!((ds.train.len(), ds.test.len()), (50_000, 10_000));
        assert_eq!(class_counts(&ds.train), [5000; 10]);
        assert_eq!(class_counts(&ds.test), [1000; 10]);
        // Record 10,000 is the first of data_batch_2.bin (as is, or decompressed from .gz).
        let (_, f2) = open_file(&real_dir(), "data_batch_2.bin").unwrap();
        assert_eq!(ds.train.record(10_000), &f2[..RECORD_BYTES]);
        assert_eq!(ds.train.image(10_001), &f2[RECORD_BYTES + 1..2 * RECORD_BYTES]);
        assert_eq!(ds.train.label(10_001), f2[RECORD_BYTES]);
        assert_eq!(ds.train.files().map(|f| f.len()).sum::<usize>(), 50_000 * RECORD_BYTES);
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = synthetic(2);
        std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("data_batch_3.bin is missing"), "{e}");
    }

    #[test]
    fn a_truncated_file_says_where() {
        let dir = synthetic(2);
        let p = dir.path().join("data_batch_2.bin");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..RECORD_BYTES + 100]).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("data_batch_2.bin") && e.contains("3173 bytes is not a whole number"), "{e}");
        assert!(e.contains("truncated or has bytes added (record 1 is incomplete)"), "{e}");
    }

    #[test]
    fn a_bad_label_names_the_record() {
        let dir = synthetic(3);
        let p = dir.path().join("data_batch_4.bin");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[2 * RECORD_BYTES] = 12;
        std::fs::write(&p, bytes).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("data_batch_4.bin") && e.contains("label 12 at record 2"), "{e}");
    }

    #[test]
    fn wrong_record_counts_are_reported() {
        let dir = synthetic(3);
        let e = open_err(dir.path());
        assert!(e.contains("hold 15 records, expected 50000"), "{e}");
    }

    /// A folder where a dataset file should be is named as such, not as an OS error.
    #[test]
    fn a_folder_in_place_of_a_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data_batch_1.bin")).unwrap();
        let e = open_file(dir.path(), "data_batch_1.bin").err().expect("a folder opened").to_string();
        assert!(e.ends_with("data_batch_1.bin: is a folder, not a CIFAR-10 file"), "{e}");
    }

    /// One short file among full ones: the error names it, not the first file.
    #[test]
    fn a_file_with_too_few_records_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for (i, f) in TRAIN_FILES.iter().enumerate() {
            std::fs::write(dir.path().join(f), records(if i == 3 { 3 } else { 4 }, i as u8)).unwrap();
        }
        let e = Split::open(dir.path(), &TRAIN_FILES, 20).err().expect("a short file opened").to_string();
        assert!(e.contains("data_batch_4.bin: holds 3 records where each file holds 4"), "{e}");
        assert!(e.contains("hold 19 records, expected 20"), "{e}");
        // Kept gzip-compressed, the file named is the one read.
        let p = dir.path().join("data_batch_4.bin");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &std::fs::read(&p).unwrap()).unwrap();
        std::fs::write(dir.path().join("data_batch_4.bin.gz"), gz.finish().unwrap()).unwrap();
        std::fs::remove_file(&p).unwrap();
        let e = Split::open(dir.path(), &TRAIN_FILES, 20).err().expect("a short file opened").to_string();
        assert!(e.contains("data_batch_4.bin.gz: holds 3 records"), "{e}");
        // No files at all: an error (not a division by zero).
        let e = Split::open(dir.path(), &[], 20).err().expect("no files opened").to_string();
        assert!(e.contains("hold 0 records, expected 20"), "{e}");
    }

    #[test]
    fn empty_python_and_matlab_folders_are_recognised() {
        let empty = tempfile::tempdir().unwrap();
        assert!(open_err(empty.path()).contains("is empty"));
        let py = tempfile::tempdir().unwrap();
        for f in ["data_batch_1", "data_batch_2", "batches.meta", "test_batch"] {
            std::fs::write(py.path().join(f), b"\x80\x02}q\x00.").unwrap();
        }
        assert!(open_err(py.path()).contains("Python"));
        let mat = tempfile::tempdir().unwrap();
        for f in ["data_batch_1.mat", "test_batch.mat"] {
            std::fs::write(mat.path().join(f), b"MATLAB 5.0 MAT-file").unwrap();
        }
        assert!(open_err(mat.path()).contains("MATLAB"));
        let missing = empty.path().join("nope");
        let e = open_err(&missing);
        assert!(e.contains("nope: no such folder"), "{e}");
        // A missing archive is a missing file, not a folder.
        let e = open_err(&empty.path().join("cifar-10-binary.tar.gz"));
        assert!(e.contains("cifar-10-binary.tar.gz: no such file"), "{e}");
    }

    #[test]
    fn an_empty_file_is_an_error() {
        let dir = synthetic(1);
        std::fs::write(dir.path().join("data_batch_5.bin"), b"").unwrap();
        assert!(open_err(dir.path()).contains("data_batch_5.bin: the file is empty"));
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    /// Replace `dir/name` by a gzip-compressed `dir/name.gz` of `bytes` (its contents if None).
    fn gzip_in_place(dir: &Path, name: &str, bytes: Option<&[u8]>) {
        let p = dir.join(name);
        let original = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(dir.join(format!("{name}.gz")), gzip(bytes.unwrap_or(&original))).unwrap();
    }

    #[test]
    fn gzip_compressed_files_read_as_the_originals() {
        let dir = synthetic(4);
        let plain: Vec<Vec<u8>> = TRAIN_FILES.iter().map(|f| std::fs::read(dir.path().join(f)).unwrap()).collect();
        gzip_in_place(dir.path(), "data_batch_1.bin", None);
        gzip_in_place(dir.path(), "data_batch_4.bin", None);
        assert!(crate::locate::holds_dataset(dir.path()));
        let split = Split::open(dir.path(), &TRAIN_FILES, 20).unwrap();
        let got: Vec<&[u8]> = split.files().collect();
        assert_eq!(got, plain.iter().map(|v| &v[..]).collect::<Vec<_>>());
        assert_eq!(split.record(13), &plain[3][RECORD_BYTES..2 * RECORD_BYTES]);
    }

    #[test]
    fn a_plain_file_wins_over_its_gzip_copy() {
        let dir = synthetic(2);
        std::fs::write(dir.path().join("data_batch_2.bin.gz"), b"not gzip").unwrap();
        let split = Split::open(dir.path(), &TRAIN_FILES, 10).unwrap();
        assert_eq!(split.len(), 10);
    }

    #[test]
    fn damaged_gzip_copies_are_named() {
        let dir = synthetic(2);
        let p = dir.path().join("data_batch_3.bin");
        let original = std::fs::read(&p).unwrap();
        let mut gz = gzip(&original);
        gz.truncate(gz.len() / 2);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(dir.path().join("data_batch_3.bin.gz"), gz).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("data_batch_3.bin.gz: could not decompress it"), "{e}");

        // Whole gzip stream, but the records inside are cut short.
        let dir = synthetic(2);
        let original = std::fs::read(dir.path().join("data_batch_2.bin")).unwrap();
        gzip_in_place(dir.path(), "data_batch_2.bin", Some(&original[..RECORD_BYTES + 100]));
        let e = open_err(dir.path());
        assert!(e.contains("data_batch_2.bin.gz: 3173 bytes is not a whole number"), "{e}");
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.gz");
        std::fs::write(&p, gzip(&records(5, 7))).unwrap();
        assert_eq!(decompress(&p, 5 * RECORD_BYTES).unwrap(), records(5, 7));
        let e = decompress(&p, 5 * RECORD_BYTES - 1).unwrap_err().to_string();
        assert!(e.contains("big.gz: it decompresses to more than 15364 bytes"), "{e}");
    }

    /// A tar.gz at `dir/name` of `members` (path inside, bytes).
    fn tar_gz(dir: &Path, name: &str, members: &[(String, Vec<u8>)]) -> PathBuf {
        let refs: Vec<(&str, &[u8])> = members.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
        crate::archive::tests::tar_gz(dir, name, &refs)
    }

    /// The six files of `dir` (and a readme, as in the official archive) under
    /// `cifar-10-batches-bin/`.
    fn members_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut m: Vec<(String, Vec<u8>)> = TRAIN_FILES
            .iter()
            .chain([&TEST_FILE])
            .map(|f| (format!("cifar-10-batches-bin/{f}"), open_file(dir, f).unwrap().1.to_vec()))
            .collect();
        m.insert(2, ("cifar-10-batches-bin/readme.html".into(), b"<meta>".to_vec()));
        m
    }

    /// The real files packed as the official archive is (a copy of our own, so not its MD5):
    /// read in place, every record is the folder's, and the source names the archive's MD5.
    #[test]
    fn the_real_files_read_from_an_archive_equal_the_folders() {
        let dir = real_dir();
        let tmp = tempfile::tempdir().unwrap();
        let archive = tar_gz(tmp.path(), crate::archive::ARCHIVE_NAME, &members_of(&dir));
        let from_archive = Cifar10::open(&archive).unwrap();
        let from_folder = Cifar10::open(&dir).unwrap();
        for (a, f) in [(&from_archive.train, &from_folder.train), (&from_archive.test, &from_folder.test)] {
            assert_eq!(a.len(), f.len());
            assert!(a.files().zip(f.files()).all(|(x, y)| x == y), "the archive's bytes differ from the folder's");
        }
        let md5 = crate::locate::md5_hex(&archive).unwrap();
        assert_eq!(from_archive.source, Source::Archive { path: archive.clone(), md5: md5.clone() });
        assert_eq!(
            from_archive.source.to_string(),
            format!("{} (read in place; MD5 {md5}, not the official archive's {})", archive.display(), crate::locate::MD5)
        );
        assert_eq!(from_folder.source.to_string(), dir.display().to_string());
        let official = Source::Archive { path: archive.clone(), md5: crate::locate::MD5.into() };
        assert!(official.to_string().ends_with(": the official archive)"), "{official}");
    }

    /// What is wrong inside an archive is named as ARCHIVE/PATH-INSIDE, as a file of a folder
    /// would be; a missing member names what the archive should hold.
    #[test]
    fn an_archives_bad_members_are_named_inside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = synthetic(3);
        let mut members = members_of(dir.path());
        // Too few records (3 per file, of 10,000): the first file is named, inside the archive.
        let a = tar_gz(tmp.path(), "a.tar.gz", &members);
        let e = Cifar10::open(&a).err().expect("opened").to_string();
        let first = a.join("cifar-10-batches-bin/data_batch_1.bin");
        assert!(e.starts_with(&format!("{}: holds 3 records where each file holds 10000", first.display())), "{e}");
        assert!(e.contains("hold 15 records, expected 50000"), "{e}");
        // A bad label in one file.
        members[4].1[RECORD_BYTES] = 10;
        let b = tar_gz(tmp.path(), "b.tgz", &members);
        let e = Cifar10::open(&b).err().expect("opened").to_string();
        assert!(e.contains(&format!("{}: label 10 at record 1", b.join("cifar-10-batches-bin/data_batch_4.bin").display())), "{e}");
        // The test file missing.
        members.pop();
        let c = tar_gz(tmp.path(), "c.tar.gz", &members);
        let e = Cifar10::open(&c).err().expect("opened").to_string();
        assert!(e.contains("the archive holds no test_batch.bin"), "{e}");
    }
}
