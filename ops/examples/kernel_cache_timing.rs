//! How long our kernel files take to compile with NVRTC, and to read back from the kernel
//! cache (`engine/src/kernel_cache.rs`), without a GPU.
//!
//!     LD_LIBRARY_PATH=<folder of libnvrtc.so.13> cargo run --release -p ops --example kernel_cache_timing [DIR] [ARCH]
//!
//! For every file of `ops::kernels::SOURCES`, twice over an emptied cache folder DIR (default
//! /tmp/kernel-cache-timing; ARCH default sm_90): first a miss (NVRTC compiles the PTX, the
//! cache stores it), then a hit (the cache reads it back and checks its SHA-256). Both passes
//! go one file after another, then one thread per file as `CudaDevice::precompile` does. What
//! a device does after either (the driver loading the PTX) is not timed: there is no GPU here.

use engine::kernel_cache::{KernelCache, KernelSpec, Output};
use std::time::Instant;

/// `file`'s PTX from the cache, or compiled and stored; whether it came from the cache, and
/// its size in bytes. An image the cache cannot keep is an error here: this measures the cache.
fn load_or_compile(cache: &KernelCache, file: &str, source: &str, arch: &str) -> engine::Result<(bool, usize)> {
    let spec = KernelSpec::for_loaded_nvrtc(file, source, arch)?;
    // No driver to refuse the image: every whole one is taken.
    if let Some(len) = cache.load_accepted(&spec, |_, image| Ok(image.len())) {
        return Ok((true, len));
    }
    let ptx = engine::nvrtc::compile_ptx(file, source, arch)?;
    cache.store(&spec, Output::Ptx, ptx.as_bytes())?;
    Ok((false, ptx.len()))
}

/// One pass over every kernel file, one after another or one thread each: its seconds, how
/// many files came from the cache, and their bytes.
fn pass(cache: &KernelCache, arch: &str, threads: bool) -> engine::Result<(f64, usize, usize)> {
    let t = Instant::now();
    let results: Vec<engine::Result<(bool, usize)>> = if threads {
        std::thread::scope(|scope| {
            let handles: Vec<_> = ops::kernels::SOURCES.iter().map(|&(f, s)| scope.spawn(move || load_or_compile(cache, f, s, arch))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(engine::Error::Invalid("a thread panicked".into())))).collect()
        })
    } else {
        ops::kernels::SOURCES.iter().map(|&(f, s)| load_or_compile(cache, f, s, arch)).collect()
    };
    let seconds = t.elapsed().as_secs_f64();
    let (mut hits, mut bytes) = (0, 0);
    for r in results {
        let (hit, len) = r?;
        hits += usize::from(hit);
        bytes += len;
    }
    Ok((seconds, hits, bytes))
}

fn main() -> engine::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/kernel-cache-timing".into()));
    let arch = args.next().unwrap_or_else(|| "sm_90".into());
    let (major, minor) = engine::nvrtc::version()?;
    let n = ops::kernels::SOURCES.len();
    println!("{n} kernel files, {arch}, NVRTC {major}.{minor}, cache in {}", dir.display());
    let cache = KernelCache::new(&dir);
    for threads in [false, true] {
        let how = if threads { "one thread each" } else { "one after another" };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| engine::Error::Invalid(format!("emptying {}: {e}", dir.display())))?;
        }
        let (miss, hits, bytes) = pass(&cache, &arch, threads)?;
        println!("{how}: compiled and stored ({hits} of {n} from the cache, {} KiB of PTX) in {miss:.3} s", bytes / 1024);
        let (hit, hits, _) = pass(&cache, &arch, threads)?;
        println!("{how}: read back ({hits} of {n} from the cache) in {hit:.4} s");
    }
    Ok(())
}
