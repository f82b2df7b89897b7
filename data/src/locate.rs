//! Where the dataset is, and how to get it.

use crate::archive::{ARCHIVE_NAME, is_archive_file};
use crate::{Error, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The official archive of the binary version.
pub const URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its MD5, as published on the CIFAR-10 page.
pub const MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The default folder, relative to the working directory.
pub const DEFAULT_DIR: &str = "data/cifar-10-batches-bin";

/// Whether `dir` holds the first training file, as is or gzip-compressed.
pub fn holds_dataset(dir: &Path) -> bool {
    let (plain, gz) = crate::cifar::file_paths(dir, crate::cifar::TRAIN_FILES[0]);
    plain.is_file() || gz.is_file()
}

/// The folder (or archive) to read: `flag` (`--data`) if given, else `$CIFAR10_DIR`, else
/// `./data/cifar-10-batches-bin`. A folder given explicitly is returned as is (opening it
/// then says what is wrong with it), unless it is the folder the official archive was
/// extracted in (then its `cifar-10-batches-bin/` is returned) or holds the archive alone
/// (then the archive is, to be read in place: [`crate::archive`]); a `.tar.gz` file given
/// explicitly is returned as is. When the default folder lacks the files but
/// `./data/cifar-10-binary.tar.gz` is there, that archive is returned. Otherwise the error
/// says where it looked and what to do.
pub fn locate(flag: Option<&Path>) -> Result<PathBuf> {
    // (An empty CIFAR10_DIR counts as unset.)
    let env_dir = std::env::var_os("CIFAR10_DIR").filter(|d| !d.is_empty()).map(PathBuf::from);
    locate_in(flag, env_dir.as_deref(), Path::new(""))
}

/// [`locate`] with `$CIFAR10_DIR`'s value given (`env_dir`), and the default folder and
/// archive looked for under `base` (the working directory: `""`, so that the paths stay
/// relative as the messages show them).
fn locate_in(flag: Option<&Path>, env_dir: Option<&Path>, base: &Path) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return given_folder(dir, "--data");
    }
    if let Some(dir) = env_dir {
        return given_folder(dir, "CIFAR10_DIR");
    }
    let default = base.join(DEFAULT_DIR);
    if holds_dataset(&default) {
        return Ok(default);
    }
    let archive = base.join("data").join(ARCHIVE_NAME);
    if is_archive_file(&archive) {
        return Ok(archive);
    }
    Err(Error::NotFound(format!(
        "CIFAR-10 not found: no --data, no CIFAR10_DIR, and {} does not hold data_batch_1.bin (or data_batch_1.bin.gz), \
         nor is there a ./data/{ARCHIVE_NAME}. Download {URL} (MD5 {MD5}) into ./data/ (read from there as it is, or \
         extracted so that the files are in {}/; `model` downloads it itself unless given --no-download), or pass --data DIR",
        default.display(),
        default.display()
    )))
}

/// A folder the user named (`what`: `--data` or `CIFAR10_DIR`), or the archive: any other
/// file is refused (the usual slip: naming one of the dataset's files), a folder is as
/// [`archive_folder_within`].
fn given_folder(dir: &Path, what: &str) -> Result<PathBuf> {
    if is_archive_file(dir) {
        return Ok(dir.to_path_buf());
    }
    if dir.is_file() {
        return Err(Error::NotFound(format!(
            "{what} {} is a file: give the folder that holds data_batch_1.bin ... data_batch_5.bin and test_batch.bin, \
             or the archive {ARCHIVE_NAME}",
            dir.display()
        )));
    }
    Ok(archive_folder_within(dir))
}

/// When `dir` does not hold the dataset: its `cifar-10-batches-bin/` if that does (`--data
/// data` after extracting the archive in `data/`), else its `cifar-10-binary.tar.gz` if that
/// is there (the archive copied in, not extracted); else `dir`.
fn archive_folder_within(dir: &Path) -> PathBuf {
    if holds_dataset(dir) {
        return dir.to_path_buf();
    }
    let inner = dir.join("cifar-10-batches-bin");
    let archive = dir.join(ARCHIVE_NAME);
    if holds_dataset(&inner) {
        inner
    } else if is_archive_file(&archive) {
        archive
    } else {
        dir.to_path_buf()
    }
}

/// Download the official archive into `into` (e.g. `./data`), check its MD5, extract it,
/// and return the folder of the binary files (`into/cifar-10-batches-bin`).
pub fn download(into: &Path) -> Result<PathBuf> {
    download_from(URL, MD5, into)
}

/// [`download`] from any URL with any expected MD5 (tests point it at unreachable addresses).
pub fn download_from(url: &str, md5: &str, into: &Path) -> Result<PathBuf> {
    let archive = into.join("cifar-10-binary.tar.gz");
    let part = into.join("cifar-10-binary.tar.gz.part");
    let what_to_do = format!(
        "download {URL} (MD5 {MD5}) by hand into {} (read from there as it is, or extracted so that the files are in {})",
        into.display(),
        into.join("cifar-10-batches-bin").display()
    );
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().timeout_connect(Some(std::time::Duration::from_secs(20))).build(),
    );
    let response = agent
        .get(url)
        .call()
        .map_err(|e| Error::Download(format!("could not reach {url}: {e}. Without network access, {what_to_do}")))?;
    // Only now: without network, no empty folder is left behind.
    std::fs::create_dir_all(into).map_err(|e| Error::Io { path: into.to_path_buf(), source: e })?;
    let total = response.body().content_length();
    let mut reader = response.into_body().into_reader();
    let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}") {
        bar.set_style(style);
    }
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::Io { path: p, source: e }
    };
    let mut copy = || -> Result<()> {
        let mut out = std::fs::File::create(&part).map_err(io(&part))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| Error::Download(format!("the download of {url} broke off: {e}. Rerun, or {what_to_do}")))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io(&part))?;
            bar.inc(n as u64);
        }
        out.sync_all().map_err(io(&part))
    };
    let copied = copy();
    bar.finish_and_clear();
    if copied.is_err() {
        // A partial archive is of no use to a rerun, which starts over.
        let _ = std::fs::remove_file(&part);
        copied?;
    }
    let result = verify_and_extract(&part, md5, into);
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
        return result;
    }
    std::fs::rename(&part, &archive).map_err(io(&archive))?;
    result
}

/// MD5 of a file, lowercase hex.
pub fn md5_hex(path: &Path) -> Result<String> {
    use md5::{Digest, Md5};
    let mut f = std::fs::File::open(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    let mut h = Md5::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    Ok(to_hex(&h.finalize()))
}

/// Bytes as lowercase hex (a digest as MD5 sums are written).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Check `archive`'s MD5 against `md5`, then unpack it (a .tar.gz) into `into`.
/// Returns `into/cifar-10-batches-bin`.
pub fn verify_and_extract(archive: &Path, md5: &str, into: &Path) -> Result<PathBuf> {
    let got = md5_hex(archive)?;
    if got != md5 {
        return Err(Error::Corrupt {
            path: archive.to_path_buf(),
            msg: format!("MD5 is {got}, expected {md5}: the download is damaged; delete it and retry"),
        });
    }
    let f = std::fs::File::open(archive).map_err(|e| Error::Io { path: archive.to_path_buf(), source: e })?;
    tar::Archive::new(flate2::read::GzDecoder::new(f))
        .unpack(into)
        .map_err(|e| Error::Corrupt { path: archive.to_path_buf(), msg: format!("could not extract: {e}") })?;
    Ok(into.join("cifar-10-batches-bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(dir: &Path) -> PathBuf {
        crate::archive::tests::tar_gz(dir, "a.tar.gz", &[("cifar-10-batches-bin/data_batch_1.bin", b"\x03hello")])
    }

    #[test]
    fn checksum_then_extract() {
        let dir = tempfile::tempdir().unwrap();
        let a = tar_gz(dir.path());
        let sum = md5_hex(&a).unwrap();
        assert_eq!(sum.len(), 32);
        let bad = verify_and_extract(&a, "00000000000000000000000000000000", dir.path()).unwrap_err().to_string();
        assert!(bad.contains("MD5"), "{bad}");
        assert!(!dir.path().join("cifar-10-batches-bin").exists());
        let out = verify_and_extract(&a, &sum, dir.path()).unwrap();
        assert_eq!(std::fs::read(out.join("data_batch_1.bin")).unwrap(), b"\x03hello");
    }

    #[test]
    fn md5_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(md5_hex(&p).unwrap(), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn unreachable_network_says_what_to_download() {
        let dir = tempfile::tempdir().unwrap();
        let into = dir.path().join("data");
        let e = download_from("http://127.0.0.1:9/cifar.tar.gz", MD5, &into).unwrap_err().to_string();
        assert!(e.contains(URL) && e.contains(MD5) && e.contains("cifar-10-batches-bin"), "{e}");
        assert!(!into.exists(), "a failed download left {} behind", into.display());
    }

    /// A server that sends the headers of a 1,000-byte archive, 10 bytes, and hangs up: the
    /// error says the download broke off, and no partial file is left.
    #[test]
    fn a_download_that_breaks_off_leaves_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/cifar.tar.gz", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789").unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let e = download_from(&url, MD5, dir.path()).unwrap_err().to_string();
        server.join().unwrap();
        assert!(e.contains("broke off"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a partial file was left");
    }

    /// Without --data or CIFAR10_DIR: the extracted default folder, else the archive beside
    /// it in ./data (copied in by hand, or a download whose folder was deleted), else an error
    /// that names both.
    #[test]
    fn the_default_folder_else_the_archive_in_data() {
        let base = tempfile::tempdir().unwrap();
        let e = locate_in(None, None, base.path()).unwrap_err().to_string();
        assert!(e.contains("nor is there a ./data/cifar-10-binary.tar.gz") && e.contains(MD5), "{e}");
        let data = base.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join(ARCHIVE_NAME), b"x").unwrap();
        assert_eq!(locate_in(None, None, base.path()).unwrap(), data.join(ARCHIVE_NAME));
        std::fs::create_dir(data.join("cifar-10-batches-bin")).unwrap();
        std::fs::write(data.join("cifar-10-batches-bin/data_batch_1.bin"), b"x").unwrap();
        assert_eq!(locate_in(None, None, base.path()).unwrap(), base.path().join(DEFAULT_DIR));
        // CIFAR10_DIR, then --data, come before both.
        assert_eq!(locate_in(None, Some(Path::new("/e")), base.path()).unwrap(), Path::new("/e"));
        assert_eq!(locate_in(Some(Path::new("/f")), Some(Path::new("/e")), base.path()).unwrap(), Path::new("/f"));
    }

    #[test]
    fn an_explicit_folder_wins() {
        assert_eq!(locate(Some(Path::new("/some/where"))).unwrap(), PathBuf::from("/some/where"));
    }

    /// Naming one of the dataset's files instead of its folder is refused with what to give;
    /// an archive is taken as it is.
    #[test]
    fn a_file_given_as_the_folder_is_refused_unless_an_archive() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data_batch_1.bin");
        std::fs::write(&file, b"x").unwrap();
        let e = locate(Some(&file)).unwrap_err().to_string();
        assert!(e.starts_with("--data ") && e.contains("is a file: give the folder") && e.contains(ARCHIVE_NAME), "{e}");
        let archive = dir.path().join("copy.tar.gz");
        std::fs::write(&archive, b"x").unwrap();
        assert_eq!(locate(Some(&archive)).unwrap(), archive);
    }

    /// A folder that holds the archive alone leads to the archive; extracted files, in the
    /// folder or in its `cifar-10-batches-bin/`, win over it.
    #[test]
    fn a_folder_with_the_archive_alone_leads_to_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join(ARCHIVE_NAME);
        std::fs::write(&archive, b"x").unwrap();
        assert_eq!(locate(Some(dir.path())).unwrap(), archive);
        let inner = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("data_batch_1.bin"), b"x").unwrap();
        assert_eq!(locate(Some(dir.path())).unwrap(), inner);
        std::fs::write(dir.path().join("data_batch_1.bin"), b"x").unwrap();
        assert_eq!(locate(Some(dir.path())).unwrap(), dir.path());
    }

    #[test]
    fn the_folder_of_the_extracted_archive_leads_to_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&inner).unwrap();
        // Nothing in the subfolder yet: the folder is returned as given.
        assert_eq!(locate(Some(dir.path())).unwrap(), dir.path());
        std::fs::write(inner.join("data_batch_1.bin.gz"), b"x").unwrap();
        assert_eq!(locate(Some(dir.path())).unwrap(), inner);
        // A folder that holds the files itself is never replaced by a subfolder.
        std::fs::write(dir.path().join("data_batch_1.bin"), b"x").unwrap();
        assert_eq!(locate(Some(dir.path())).unwrap(), dir.path());
    }
}
