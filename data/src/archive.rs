//! The official archive, `cifar-10-binary.tar.gz`, read in place: the six dataset files are
//! decompressed from it into memory (about 180 MB), and nothing is written to disk.
//!
//! This is for a machine where the archive was copied by hand (no network, or a read-only
//! folder beside the checkout): `--data cifar-10-binary.tar.gz`, or the archive alone in the
//! folder named. One pass over the file both unpacks the members and computes its MD5, so the
//! log can say whether it is the archive published on the CIFAR-10 page
//! ([`crate::locate::MD5`]). Extracting it once (`tar xzf`) is still the faster start: a
//! folder of `.bin` files is memory-mapped, not decompressed at every start.

use crate::{Error, Result};
use md5::{Digest, Md5};
use std::io::Read;
use std::path::Path;

/// The archive's file name, as published.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

/// Whether `path` is named like a gzip-compressed tar archive (`.tar.gz` or `.tgz`).
pub fn is_archive_name(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Whether `path` is a file named like a gzip-compressed tar archive ([`is_archive_name`]).
pub fn is_archive_file(path: &Path) -> bool {
    path.is_file() && is_archive_name(path)
}

/// What [`read_members`] found in an archive.
pub struct Members {
    /// The contents of each wanted name, in the order asked for (`None`: not in the archive).
    pub files: Vec<Option<Vec<u8>>>,
    /// The path of each found member inside the archive (e.g. `cifar-10-batches-bin/test_batch.bin`).
    pub paths: Vec<Option<String>>,
    /// The MD5 of the whole archive file, lowercase hex.
    pub md5: String,
}

/// A reader that passes the bytes through and hashes them on the way.
struct HashingReader<R> {
    inner: R,
    hash: Md5,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Read the regular files of the tar.gz `path` whose file names (the last part of their path,
/// in whatever folder) are in `names`, each at most `limit` bytes; every other entry (another
/// name, a folder, a link) is skipped. The whole file is read: every gzip member to its end,
/// each CRC checked (several members are one stream, as `gunzip` and GNU tar read them), so
/// that [`Members::md5`] is the file's. A name found twice, a file over `limit`, or bytes that
/// are not gzip-compressed tar (cut short, damaged, or anything after the last member) is an
/// error naming the archive.
pub fn read_members(path: &Path, names: &[&str], limit: usize) -> Result<Members> {
    let damaged = |e: std::io::Error| Error::Corrupt {
        path: path.to_path_buf(),
        msg: format!("could not read it as a gzip-compressed tar archive ({e}): it is damaged, cut short, or not a .tar.gz"),
    };
    let file = std::fs::File::open(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    let hashing = HashingReader { inner: std::io::BufReader::new(file), hash: Md5::new() };
    let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(hashing));
    let mut files: Vec<Option<Vec<u8>>> = vec![None; names.len()];
    let mut paths: Vec<Option<String>> = vec![None; names.len()];
    for entry in tar.entries().map_err(damaged)? {
        let entry = entry.map_err(damaged)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path().map_err(damaged)?.to_string_lossy().into_owned();
        let file_name = Path::new(&member).file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(i) = names.iter().position(|n| *n == file_name) else {
            continue;
        };
        if let Some(first) = &paths[i] {
            return Err(Error::Corrupt { path: path.to_path_buf(), msg: format!("holds {} twice ({first} and {member})", names[i]) });
        }
        if entry.size() > limit as u64 {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                msg: format!("its {member} is {} bytes, more than a CIFAR-10 file can hold ({limit})", entry.size()),
            });
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.take(limit as u64 + 1).read_to_end(&mut bytes).map_err(damaged)?;
        files[i] = Some(bytes);
        paths[i] = Some(member);
    }
    // The rest of the stream (the tar's padding, then each member's trailer, whose CRC the
    // decoder checks at its end) to the end of the file: all of it goes into the MD5.
    let mut gz = tar.into_inner();
    std::io::copy(&mut gz, &mut std::io::sink()).map_err(damaged)?;
    let md5 = crate::locate::to_hex(&gz.into_inner().hash.finalize());
    Ok(Members { files, paths, md5 })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar.gz at `dir/name` of the members `(path inside, bytes)`, as `tar czf` makes it.
    pub(crate) fn tar_gz(dir: &Path, name: &str, members: &[(&str, &[u8])]) -> std::path::PathBuf {
        let path = dir.join(name);
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        for (p, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, p, *data).unwrap();
        }
        t.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn wanted_members_are_read_in_any_folder_and_the_md5_is_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let b: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        let a = tar_gz(dir.path(), "x.tar.gz", &[("top/a.bin", b"alpha"), ("top/readme.html", b"<p>"), ("other/b.bin", &b)]);
        let m = read_members(&a, &["b.bin", "a.bin", "c.bin"], 10_000).unwrap();
        assert_eq!(m.files, vec![Some(b.clone()), Some(b"alpha".to_vec()), None]);
        assert_eq!(m.paths, vec![Some("other/b.bin".to_string()), Some("top/a.bin".to_string()), None]);
        assert_eq!(m.md5, crate::locate::md5_hex(&a).unwrap());
    }

    /// The same tar split into two gzip members (as concatenating two .gz files makes it) reads
    /// as one stream, as `gunzip` and GNU tar read it, and the MD5 is still the whole file's.
    #[test]
    fn several_gzip_members_are_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let b: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2246822519) >> 24) as u8).collect();
        let one = tar_gz(dir.path(), "one.tar.gz", &[("d/a.bin", b"alpha"), ("d/b.bin", &b)]);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&one).unwrap()).read_to_end(&mut tar).unwrap();
        let mut two = Vec::new();
        for part in [&tar[..700], &tar[700..]] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, part).unwrap();
            two.extend(gz.finish().unwrap());
        }
        let path = dir.path().join("two.tar.gz");
        std::fs::write(&path, &two).unwrap();
        let m = read_members(&path, &["a.bin", "b.bin"], 10_000).unwrap();
        assert_eq!(m.files, vec![Some(b"alpha".to_vec()), Some(b)]);
        assert_eq!(m.md5, crate::locate::md5_hex(&path).unwrap());
    }

    /// Only regular files are read: a folder or a link with a wanted name is skipped.
    #[test]
    fn links_and_folders_are_not_members() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.tar.gz");
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        t.append_link(&mut h, "d/a.bin", "elsewhere").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "e/a.bin", &b"abc"[..]).unwrap();
        t.into_inner().unwrap().finish().unwrap();
        let m = read_members(&path, &["a.bin"], 10).unwrap();
        assert_eq!((m.files, m.paths), (vec![Some(b"abc".to_vec())], vec![Some("e/a.bin".to_string())]));
    }

    #[test]
    fn a_name_twice_and_a_member_too_large_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = tar_gz(dir.path(), "x.tar.gz", &[("p/a.bin", b"1"), ("q/a.bin", b"2")]);
        let e = read_members(&a, &["a.bin"], 10).err().expect("read").to_string();
        assert!(e.contains("holds a.bin twice (p/a.bin and q/a.bin)"), "{e}");
        let e = read_members(&a, &["a.bin"], 0).err().expect("read").to_string();
        assert!(e.contains("its p/a.bin is 1 bytes, more than a CIFAR-10 file can hold (0)"), "{e}");
    }

    /// Cut short anywhere, or with a byte of its compressed stream changed, an archive is
    /// refused (the gzip CRC or the stream's structure), never read as fewer or other bytes.
    #[test]
    fn a_damaged_or_truncated_archive_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2246822519) >> 23) as u8).collect();
        let a = tar_gz(dir.path(), "x.tar.gz", &[("d/a.bin", &payload)]);
        let whole = std::fs::read(&a).unwrap();
        for cut in [10, whole.len() / 2, whole.len() - 4] {
            std::fs::write(&a, &whole[..cut]).unwrap();
            let e = read_members(&a, &["a.bin"], 1 << 20).err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains("could not read it as a gzip-compressed tar archive")), "cut at {cut}: {e:?}");
        }
        let mut flipped = whole.clone();
        flipped[whole.len() / 2] ^= 0x40;
        std::fs::write(&a, &flipped).unwrap();
        assert!(read_members(&a, &["a.bin"], 1 << 20).is_err(), "a changed byte went unnoticed");
        // Bytes after the last gzip member are refused too (they are not a member).
        let mut trailing = whole.clone();
        trailing.extend_from_slice(&[0u8; 100]);
        std::fs::write(&a, &trailing).unwrap();
        assert!(read_members(&a, &["a.bin"], 1 << 20).is_err(), "trailing bytes went unnoticed");
        std::fs::write(&a, b"not gzip at all").unwrap();
        let e = read_members(&a, &["a.bin"], 1 << 20).err().expect("read").to_string();
        assert!(e.contains("not a .tar.gz"), "{e}");
    }

    #[test]
    fn archive_files_are_told_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (name, is) in [("a.tar.gz", true), ("b.tgz", true), ("c.gz", false), ("d.bin", false)] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
            assert_eq!(is_archive_file(&dir.path().join(name)), is, "{name}");
        }
        // A folder so named is not one.
        std::fs::create_dir(dir.path().join("e.tar.gz")).unwrap();
        assert!(!is_archive_file(&dir.path().join("e.tar.gz")));
    }
}
