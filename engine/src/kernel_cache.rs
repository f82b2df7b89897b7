//! An on-disk cache of our compiled kernels, so that a process after the first skips NVRTC.
//!
//! Every process that opens a GPU compiles the eleven files of `ptx/` with NVRTC
//! (`CudaDevice::precompile`): 0.24-0.28 s on an H200 machine, 2.25 s one after another on
//! a 2-core VM. The result depends only on the inputs of the compilation, so a process
//! keeps each image it loaded in a folder and the next one reads it back.
//!
//! **The key.** A file's image is named `<kernel file stem>-<key>.ptx` (or `.cubin`), the
//! key being the first 128 bits of a SHA-256 (`ring`, already a dependency through the data
//! crate's downloader) over everything the image depends on: the kernel file's name, its
//! source text, the architecture, the NVRTC version, the kind of output (PTX or machine
//! code), NVRTC's options ([`crate::nvrtc::compile_options`]) and [`FORMAT`]. Each field
//! goes in with its length, so that two different lists of fields never hash the same bytes.
//! A changed kernel, another GPU or another NVRTC release (major.minor, what `nvrtcVersion`
//! reports) simply finds no file: old files are unused, not read (they stay until someone
//! deletes the folder, which is always safe). One case is not told apart: a patch update of
//! NVRTC within one major.minor (13.0.48 to 13.0.88, say) reads the files the previous patch
//! wrote, so a compiler fix reaches our kernels only once the folder is deleted.
//!
//! **The file.** A 48-byte header, then the image: the magic [`MAGIC`], the image's length
//! (u64, little-endian) and its SHA-256. A file whose header does not match its contents (cut
//! short by a full disk or a crash, garbled, or not ours) is a miss, never an error. That
//! matters for machine code more than for comfort: the driver is handed a cubin without its
//! length and reads as far as its ELF headers say, so only an image known to be whole may
//! reach it.
//!
//! **Writes** go to a temporary file in the same folder (named after the process and a
//! counter, so that no two writers share one), then are renamed over the final name: two
//! processes (or threads) storing the same image at once each rename a whole file, and a
//! reader sees the old file, the new one, or none. Nothing is synced to disk: a file lost or
//! cut by a crash is a miss the next process compiles again. A temporary file a killed writer
//! left is removed by a later store once it is an hour old.
//!
//! **Nothing here may fail a run.** Looking up returns `None` on any problem (no folder, no
//! permission, a damaged file); storing returns an error the caller may report and otherwise
//! ignores. An image the driver refuses although it is whole (a driver older than the one
//! that accepted it) is removed by [`KernelCache::load_accepted`], so the caller compiles it
//! again and stores the result in its place.
//!
//! **Where** ([`location`]): `$CIFAR10_ENGINE_CACHE` when set and not empty (the value `off`
//! turns the cache off), else `$XDG_CACHE_HOME/cifar10-engine/kernels` (an absolute path, as
//! the XDG specification requires), else `$HOME/.cache/cifar10-engine/kernels`; no cache when
//! none of these is set. What is cached is only what NVRTC would produce again from the
//! sources embedded in the binary: deleting the folder costs one compilation.
//!
//! The driver keeps a cache of its own (`~/.nv/ComputeCache`, `CUDA_CACHE_PATH`) of what it
//! JIT-compiles from PTX to machine code; this one covers the step before, NVRTC's.

use crate::{Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that names the cache folder, or turns the cache off with [`OFF`].
pub const ENV_VAR: &str = "CIFAR10_ENGINE_CACHE";

/// The value of [`ENV_VAR`] that turns the cache off.
pub const OFF: &str = "off";

/// Part of every key: bump it when the layout of the files or what a key covers changes,
/// so that files written before are not read with another meaning.
pub const FORMAT: u32 = 1;

/// The first bytes of every cache file (the digit is [`FORMAT`]'s).
pub const MAGIC: &[u8; 8] = b"C10KRNL1";

/// Magic, length, SHA-256.
const HEADER_BYTES: usize = 8 + 8 + 32;

/// The kind of image NVRTC produced for a kernel file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// PTX text, which the driver JIT-compiles when it loads the module.
    Ptx,
    /// Machine code (an ELF cubin) for one real architecture.
    Cubin,
}

impl Output {
    /// Both kinds, in the order a lookup tries them: PTX is what a device loads first, and a
    /// cached cubin exists only where the driver refused the PTX.
    pub const ALL: [Output; 2] = [Output::Ptx, Output::Cubin];

    /// The cache file's extension, and the kind's name in the key.
    pub fn extension(self) -> &'static str {
        match self {
            Output::Ptx => "ptx",
            Output::Cubin => "cubin",
        }
    }
}

/// Everything a compiled image of one kernel file depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSpec<'a> {
    /// The kernel file's name, e.g. `"augment.cu"`.
    pub file: &'a str,
    /// Its CUDA C source.
    pub source: &'a str,
    /// The architecture compiled for, e.g. `"sm_90"`.
    pub arch: &'a str,
    /// NVRTC's version, `(major, minor)`.
    pub nvrtc: (i32, i32),
    /// The options NVRTC is given ([`crate::nvrtc::compile_options`]).
    pub options: Vec<String>,
}

impl<'a> KernelSpec<'a> {
    /// The spec of `file` compiled by the NVRTC loaded in this process, with our options.
    ///
    /// Errors with [`Error::CudaUnavailable`] when NVRTC cannot be loaded (its version is
    /// part of the key).
    pub fn for_loaded_nvrtc(file: &'a str, source: &'a str, arch: &'a str) -> Result<KernelSpec<'a>> {
        Ok(KernelSpec { file, source, arch, nvrtc: crate::nvrtc::version()?, options: crate::nvrtc::compile_options(arch) })
    }

    /// The key of this spec's `output`: 32 lowercase hex digits (128 bits of a SHA-256 over
    /// every field, each preceded by its length).
    pub fn key(&self, output: Output) -> String {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(&FORMAT.to_le_bytes());
        field(self.file.as_bytes());
        field(self.source.as_bytes());
        field(self.arch.as_bytes());
        field(&self.nvrtc.0.to_le_bytes());
        field(&self.nvrtc.1.to_le_bytes());
        field(output.extension().as_bytes());
        field(&(self.options.len() as u64).to_le_bytes());
        for o in &self.options {
            field(o.as_bytes());
        }
        h.finish().as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The cache file's name: `<stem>-<key>.<extension>`, e.g. `augment-3f…9a.ptx`. The stem
    /// is the kernel file's name without `.cu`, with anything but ASCII letters, digits, `_`
    /// and `-` replaced by `_` (the name stays one plain file name whatever `file` holds; the
    /// key tells files apart).
    pub fn file_name(&self, output: Output) -> String {
        let stem = self.file.strip_suffix(".cu").unwrap_or(self.file);
        let stem: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        format!("{stem}-{}.{}", self.key(output), output.extension())
    }
}

/// Whether `name` is one of [`KernelCache::store`]'s temporary files,
/// `.<stem>-<key>.<extension>.<pid>-<n>.tmp` with a key of 32 hex digits: only those are ever
/// removed, whatever else the folder holds (`CIFAR10_ENGINE_CACHE` may name a shared folder).
fn is_temporary_name(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else { return false };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((file, writer)) = inner.rsplit_once('.') else { return false };
    let Some((pid, n)) = writer.split_once('-') else { return false };
    let Some((stem_key, extension)) = file.rsplit_once('.') else { return false };
    let Some((stem, key)) = stem_key.rsplit_once('-') else { return false };
    digits(pid)
        && digits(n)
        && Output::ALL.iter().any(|o| o.extension() == extension)
        && !stem.is_empty()
        && key.len() == 32
        && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `image` with the header that lets [`decode`] tell a whole file from a damaged one.
pub fn encode(image: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + image.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(image.len() as u64).to_le_bytes());
    out.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, image).as_ref());
    out.extend_from_slice(image);
    out
}

/// The image inside a cache file's bytes, or `None` when they are not a whole file that
/// [`encode`] wrote: another magic, a length other than what follows the header (cut short,
/// or grown), or contents whose SHA-256 differs from the header's.
pub fn decode(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let image = &bytes[HEADER_BYTES..];
    if len != image.len() as u64 {
        return None;
    }
    (ring::digest::digest(&ring::digest::SHA256, image).as_ref() == &bytes[16..HEADER_BYTES]).then_some(image)
}

/// The cache folder the environment names, by the rules in the module's documentation, with
/// `var` reading a variable (`std::env::var_os` in a process; a table in the tests). `None`:
/// the cache is off, or there is no home to put it in.
pub fn location(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = set(ENV_VAR) {
        return (dir != OFF).then(|| PathBuf::from(dir));
    }
    let tail = Path::new("cifar10-engine").join("kernels");
    if let Some(xdg) = set("XDG_CACHE_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Some(xdg.join(tail));
    }
    set("HOME").map(|home| PathBuf::from(home).join(".cache").join(tail))
}

/// Temporary files of this process so far: with the process id, a name no other writer uses.
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// How old a temporary file must be before a store removes it as a killed writer's.
pub const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);

/// A folder of compiled kernel images; see the module's documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCache {
    dir: PathBuf,
}

impl KernelCache {
    /// A cache in `dir` (created when the first image is stored).
    pub fn new(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache { dir: dir.into() }
    }

    /// The cache the environment names ([`location`]), or `None` when it is off.
    pub fn from_env() -> Option<KernelCache> {
        location(|name| std::env::var_os(name)).map(KernelCache::new)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `spec`'s `output` is kept.
    pub fn path(&self, spec: &KernelSpec<'_>, output: Output) -> PathBuf {
        self.dir.join(spec.file_name(output))
    }

    /// The cached image of `spec`'s `output`, or `None`: no such file, a file that cannot be
    /// read, or a damaged one ([`decode`]).
    pub fn load(&self, spec: &KernelSpec<'_>, output: Output) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.path(spec, output)).ok()?;
        decode(&bytes).map(<[u8]>::to_vec)
    }

    /// Keep `image` as `spec`'s `output`: written to a temporary file in the folder (created
    /// if need be), then renamed over the final name, so that no reader ever sees part of it.
    /// Errors name the file; the caller goes on without the cache.
    pub fn store(&self, spec: &KernelSpec<'_>, output: Output, image: &[u8]) -> Result<()> {
        let fail = |what: &str, path: &Path, e: std::io::Error| Error::Invalid(format!("kernel cache: {what} {}: {e}", path.display()));
        std::fs::create_dir_all(&self.dir).map_err(|e| fail("creating", &self.dir, e))?;
        let path = self.path(spec, output);
        let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{}.{}-{n}.tmp", spec.file_name(output), std::process::id()));
        let written = std::fs::write(&tmp, encode(image))
            .map_err(|e| fail("writing", &tmp, e))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| fail("renaming a temporary file to", &path, e)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            self.remove_stale_temporaries();
        }
        written
    }

    /// Delete the temporary files (`.<name>.<pid>-<n>.tmp`) of writers killed before their
    /// rename, once they are [`STALE_TEMPORARY`] old: a live writer renames its file within
    /// moments of creating it. Best effort, like everything here.
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            if !is_temporary_name(&name.to_string_lossy()) {
                continue;
            }
            let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= STALE_TEMPORARY);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Delete `spec`'s `output` (it is not needed for anything to work, so a failure is ignored).
    pub fn remove(&self, spec: &KernelSpec<'_>, output: Output) {
        let _ = std::fs::remove_file(self.path(spec, output));
    }

    /// The first cached image of `spec`, PTX then cubin ([`Output::ALL`]), that `accept` (the
    /// driver's load, in a device) takes, with what `accept` made of it. An image `accept`
    /// refuses is removed, so that the one the caller then compiles takes its place; `None`
    /// when no image is cached or none was taken.
    pub fn load_accepted<M>(&self, spec: &KernelSpec<'_>, mut accept: impl FnMut(Output, Vec<u8>) -> Result<M>) -> Option<M> {
        for output in Output::ALL {
            let Some(image) = self.load(spec, output) else { continue };
            match accept(output, image) {
                Ok(m) => return Some(m),
                Err(_) => self.remove(spec, output),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KernelSpec<'static> {
        KernelSpec {
            file: "augment.cu",
            source: "extern \"C\" __global__ void k(float* x) { x[0] = 1.0f; }",
            arch: "sm_90",
            nvrtc: (13, 0),
            options: vec!["--gpu-architecture=sm_90".into()],
        }
    }

    /// The same inputs give the same key (and a 128-bit hex one); each input changed alone
    /// gives another, and so does moving bytes from one field to the next.
    #[test]
    fn every_input_is_part_of_the_key() {
        let base = spec();
        let key = base.key(Output::Ptx);
        assert_eq!(key, spec().key(Output::Ptx));
        assert!(key.len() == 32 && key.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{key}");
        let variants = [
            KernelSpec { file: "augment2.cu", ..base.clone() },
            KernelSpec { source: "extern \"C\" __global__ void k(float* x) { x[0] = 2.0f; }", ..base.clone() },
            KernelSpec { arch: "sm_80", ..base.clone() },
            KernelSpec { nvrtc: (13, 1), ..base.clone() },
            KernelSpec { nvrtc: (12, 0), ..base.clone() },
            KernelSpec { options: vec![], ..base.clone() },
            KernelSpec { options: vec!["--gpu-architecture=sm_90".into(), "-lineinfo".into()], ..base.clone() },
            // The same bytes split differently between two fields.
            KernelSpec { file: "augment.c", source: "uextern \"C\" __global__ void k(float* x) { x[0] = 1.0f; }", ..base.clone() },
        ];
        for v in &variants {
            assert_ne!(v.key(Output::Ptx), key, "{v:?}");
        }
        assert_ne!(base.key(Output::Cubin), key);
        let mut all: Vec<String> = variants.iter().map(|v| v.key(Output::Ptx)).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), variants.len(), "two variants share a key");
    }

    /// The file name is the stem, the key and the extension, and always one plain name.
    #[test]
    fn file_names_are_stem_key_extension() {
        let s = spec();
        assert_eq!(s.file_name(Output::Ptx), format!("augment-{}.ptx", s.key(Output::Ptx)));
        assert_eq!(s.file_name(Output::Cubin), format!("augment-{}.cubin", s.key(Output::Cubin)));
        let odd = KernelSpec { file: "../a b/c.cu", ..spec() };
        let name = odd.file_name(Output::Ptx);
        assert!(name.starts_with("___a_b_c-") && !name.contains('/'), "{name}");
    }

    /// A whole file decodes to its image; cut short at any point, grown, with any byte of the
    /// header or the image changed, or empty, it is a miss.
    #[test]
    fn damaged_files_do_not_decode() {
        let image: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = encode(&image);
        assert_eq!(file.len(), HEADER_BYTES + image.len());
        assert_eq!(decode(&file), Some(&image[..]));
        assert_eq!(decode(&encode(&[])), Some(&[][..]), "an empty image is still a whole file");
        for cut in 0..file.len() {
            assert_eq!(decode(&file[..cut]), None, "cut to {cut} bytes");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        for at in (0..file.len()).step_by(7) {
            let mut bad = file.clone();
            bad[at] ^= 0x20;
            assert_eq!(decode(&bad), None, "byte {at} changed");
        }
    }

    /// Stored, then loaded: the same bytes, under the spec's name, and nothing else left in the
    /// folder; the other output kind and another spec are misses.
    #[test]
    fn store_then_load_returns_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(tmp.path().join("a/b"));
        let s = spec();
        assert_eq!(cache.load(&s, Output::Ptx), None);
        cache.store(&s, Output::Ptx, b".version 9.0\n.target sm_90\n").unwrap();
        assert_eq!(cache.load(&s, Output::Ptx).as_deref(), Some(&b".version 9.0\n.target sm_90\n"[..]));
        assert_eq!(cache.load(&s, Output::Cubin), None);
        assert_eq!(cache.load(&KernelSpec { arch: "sm_80", ..spec() }, Output::Ptx), None);
        let names: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [OsString::from(s.file_name(Output::Ptx))]);
        // A second store replaces the first.
        cache.store(&s, Output::Ptx, b"other").unwrap();
        assert_eq!(cache.load(&s, Output::Ptx).as_deref(), Some(&b"other"[..]));
    }

    /// A file cut short on disk is a miss, not an error.
    #[test]
    fn a_truncated_file_on_disk_is_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(tmp.path());
        let s = spec();
        cache.store(&s, Output::Cubin, &[0x7f, b'E', b'L', b'F', 1, 2, 3, 4]).unwrap();
        let path = cache.path(&s, Output::Cubin);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 1).unwrap();
        assert_eq!(cache.load(&s, Output::Cubin), None);
    }

    /// A folder that cannot be created (its parent is a file: refused even to root): storing
    /// is an error naming it, loading a miss.
    #[test]
    fn an_unwritable_folder_is_an_error_to_store_and_a_miss_to_load() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let cache = KernelCache::new(file.join("kernels"));
        let e = cache.store(&spec(), Output::Ptx, b"image").unwrap_err().to_string();
        assert!(e.contains("not-a-folder") && e.starts_with("kernel cache: creating"), "{e}");
        assert_eq!(cache.load(&spec(), Output::Ptx), None);
    }

    /// Two threads storing different images under one name, over and over, never leave a file
    /// that is not one of the two whole images, nor a temporary file.
    #[test]
    fn concurrent_stores_leave_a_whole_file() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(tmp.path());
        let s = spec();
        let images: [Vec<u8>; 2] = [vec![1u8; 200_000], vec![2u8; 150_000]];
        std::thread::scope(|scope| {
            for image in &images {
                let (cache, s, images) = (&cache, &s, &images);
                scope.spawn(move || {
                    for _ in 0..20 {
                        cache.store(s, Output::Ptx, image).unwrap();
                        let seen = cache.load(s, Output::Ptx).expect("a reader found no whole file");
                        assert!(seen == images[0] || seen == images[1]);
                    }
                });
            }
        });
        let last = cache.load(&s, Output::Ptx).unwrap();
        assert!(last == images[0] || last == images[1]);
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 1, "a temporary file was left");
    }

    /// A store removes the temporary files a killed writer left once they are an hour old,
    /// and leaves younger ones (a writer may be about to rename its file) and other files.
    #[test]
    fn stores_remove_stale_temporary_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(tmp.path());
        let key = "0123456789abcdef0123456789abcdef";
        let old = tmp.path().join(format!(".augment-{key}.ptx.4242-7.tmp"));
        let young = tmp.path().join(format!(".augment-{key}.cubin.4243-8.tmp"));
        // Old files that are not ours, some nearly named like ours (the cache folder may be
        // shared: CIFAR10_ENGINE_CACHE=$HOME).
        let others: Vec<_> = ["notes.tmp", ".notes.tmp", ".augment-0123.ptx.4242-7.tmp", &format!(".augment-{key}.txt.1-2.tmp"), &format!(".augment-{key}.ptx.x-2.tmp")]
            .iter()
            .map(|n| tmp.path().join(n))
            .collect();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for p in others.iter().chain([&old, &young]) {
            std::fs::write(p, b"partial").unwrap();
            if p != &young {
                std::fs::File::options().write(true).open(p).unwrap().set_modified(two_hours_ago).unwrap();
            }
        }
        cache.store(&spec(), Output::Ptx, b"image").unwrap();
        assert!(!old.exists(), "a stale temporary file was kept");
        assert!(young.exists(), "a young temporary file was removed");
        for p in &others {
            assert!(p.exists(), "{} is not the cache's, and was removed", p.display());
        }
        assert_eq!(cache.load(&spec(), Output::Ptx).as_deref(), Some(&b"image"[..]));
    }

    /// `load_accepted` gives the first image `accept` takes, PTX before cubin; an image it
    /// refuses is deleted (the caller compiles and stores another); nothing cached: `None`.
    #[test]
    fn refused_images_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(tmp.path());
        let s = spec();
        assert_eq!(cache.load_accepted(&s, |_, _| Ok(())), None);
        cache.store(&s, Output::Ptx, b"ptx").unwrap();
        cache.store(&s, Output::Cubin, b"cubin").unwrap();
        assert_eq!(cache.load_accepted(&s, |o, image| Ok((o, image))), Some((Output::Ptx, b"ptx".to_vec())));
        // A driver that refuses the PTX: the cubin is taken, the PTX file is gone.
        let got = cache.load_accepted(&s, |o, image| if o == Output::Ptx { Err(Error::Invalid("refused".into())) } else { Ok(image) });
        assert_eq!(got.as_deref(), Some(&b"cubin"[..]));
        assert!(!cache.path(&s, Output::Ptx).exists());
        // Refusing everything leaves nothing behind.
        assert_eq!(cache.load_accepted(&s, |_, _| Err::<(), _>(Error::Invalid("refused".into()))), None);
        assert!(!cache.path(&s, Output::Cubin).exists());
    }

    /// The folder: the variable (`off` turns the cache off, empty counts as unset), else an
    /// absolute `XDG_CACHE_HOME`, else `HOME/.cache`, else none.
    #[test]
    fn the_folder_follows_the_environment() {
        let at = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            location(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| OsString::from(v)))
        };
        let all = [(ENV_VAR, "/c"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(at(&all), Some(PathBuf::from("/c")));
        assert_eq!(at(&[(ENV_VAR, "rel/dir")]), Some(PathBuf::from("rel/dir")));
        assert_eq!(at(&[(ENV_VAR, OFF), ("HOME", "/h")]), None);
        assert_eq!(at(&[(ENV_VAR, ""), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]), Some(PathBuf::from("/x/cifar10-engine/kernels")));
        assert_eq!(at(&[("XDG_CACHE_HOME", "x"), ("HOME", "/h")]), Some(PathBuf::from("/h/.cache/cifar10-engine/kernels")));
        assert_eq!(at(&[("XDG_CACHE_HOME", ""), ("HOME", "/h")]), Some(PathBuf::from("/h/.cache/cifar10-engine/kernels")));
        assert_eq!(at(&[("HOME", "")]), None);
        assert_eq!(at(&[]), None);
    }
}
