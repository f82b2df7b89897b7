//! Our kernels on a device: each file of `ptx/` compiled by NVRTC for the device's
//! architecture (or read back from the kernel cache, `crate::kernel_cache`) and loaded as a
//! module the first time one of its kernels is used, or all at once ahead of the first step
//! ([`CudaDevice::precompile`], a thread per file).

use super::CudaDevice;
use crate::kernel_cache::{KernelSpec, Output};
use crate::{Error, Result};
use cudarc::driver::{CudaFunction, CudaModule};
use std::sync::Arc;

/// What [`CudaDevice::precompile`] did with the files it was given that were not loaded yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Precompiled {
    /// Files whose module was read from the kernel cache (`kernel_cache.rs`).
    pub from_cache: usize,
    /// Files compiled by NVRTC.
    pub compiled: usize,
    /// Why a compiled file could not be stored in the cache (the first such reason), if one
    /// could not: the run goes on, and the next process compiles again.
    pub cache_error: Option<String>,
}

/// A kernel file's module, and where it came from ([`CudaDevice::load_module`]).
struct LoadedModule {
    module: Arc<CudaModule>,
    /// Read from the kernel cache (else compiled by NVRTC).
    from_cache: bool,
    /// Why the compiled image could not be stored in the cache, if it could not.
    cache_error: Option<String>,
}

impl CudaDevice {
    /// Kernel `name` from the CUDA C `source` of file `file` (e.g. `"elementwise.cu"`),
    /// compiled by NVRTC for this device's architecture (or read from the kernel cache) the
    /// first time the file is used.
    ///
    /// Every launch of one of our kernels looks its function up here just before it, so
    /// while a kernel trace runs ([`CudaDevice::start_kernel_trace`]) this also records an
    /// event on the stream, named after the kernel: where that kernel's work begins.
    pub fn function(&self, file: &str, source: &str, name: &str) -> Result<CudaFunction> {
        self.trace_launch(name)?;
        let module = {
            let mut modules = self.modules.lock().map_err(|_| Error::Invalid("kernel module cache poisoned".into()))?;
            match modules.get(file) {
                Some(m) => m.clone(),
                None => {
                    // (A cache that could not be written only costs the next process a compilation.)
                    let m = self.load_module(file, source)?.module;
                    modules.insert(file.to_string(), m.clone());
                    m
                }
            }
        };
        module.load_function(name).map_err(|e| Error::Cuda { op: "load function", msg: format!("{file}: {name}: {e}") })
    }

    /// Compile and load every file of `sources` (name, CUDA C source) not loaded yet, each on
    /// a thread of its own, so that [`CudaDevice::function`] later finds them ready. NVRTC
    /// compiles one file on one core: the ten files `ptx/` then had took 1.6 s one after another on
    /// our 2-core VM (2026-11-26), time a run would otherwise spend in its first steps. Files
    /// the kernel cache holds are read from it instead (`CudaDevice::load_module`).
    /// Returns how many files came from the cache and how many were compiled.
    pub fn precompile(&self, sources: &[(&str, &str)]) -> Result<Precompiled> {
        let todo: Vec<(&str, &str)> = {
            let modules = self.modules.lock().map_err(|_| Error::Invalid("kernel module cache poisoned".into()))?;
            sources.iter().filter(|(f, _)| !modules.contains_key(*f)).copied().collect()
        };
        let loaded: Vec<Result<(String, LoadedModule)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = todo
                .iter()
                .map(|&(file, source)| scope.spawn(move || self.load_module(file, source).map(|m| (file.to_string(), m))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::Invalid("a kernel compilation thread panicked".into()))))
                .collect()
        });
        let mut modules = self.modules.lock().map_err(|_| Error::Invalid("kernel module cache poisoned".into()))?;
        let mut done = Precompiled::default();
        for r in loaded {
            let (file, m) = r?;
            if m.from_cache {
                done.from_cache += 1;
            } else {
                done.compiled += 1;
            }
            if done.cache_error.is_none() {
                done.cache_error = m.cache_error;
            }
            modules.entry(file).or_insert(m.module);
        }
        Ok(done)
    }

    /// `file`'s module: from the kernel cache when it holds an image of it that the driver
    /// takes, else compiled ([`CudaDevice::compile_and_load`]) and stored in the cache for the
    /// next process (over the cached image the driver refused, if that was the case). The cache
    /// never fails the load: a file that cannot be read is a miss, and why the compiled image
    /// could not be stored comes back with the module.
    fn load_module(&self, file: &str, source: &str) -> Result<LoadedModule> {
        // The spec needs NVRTC's version: without NVRTC there is no cache, and compiling says why.
        let cache = self.kernel_cache().and_then(|c| Some((c, KernelSpec::for_loaded_nvrtc(file, source, &self.arch).ok()?)));
        if let Some((cache, spec)) = &cache
            && let Some(module) = cache.load_accepted(spec, |output, image| self.load_image(file, output, image))
        {
            return Ok(LoadedModule { module, from_cache: true, cache_error: None });
        }
        let (module, output, image) = self.compile_and_load(file, source)?;
        let cache_error = cache.and_then(|(cache, spec)| cache.store(&spec, output, &image).err()).map(|e| e.to_string());
        Ok(LoadedModule { module, from_cache: false, cache_error })
    }

    /// Load a cached `image` of kind `output`. PTX that is not text without NUL bytes is
    /// refused here (cudarc would panic on it); the cache's checksum makes that all but
    /// impossible, as it makes sure a cubin is whole before the driver reads it.
    fn load_image(&self, file: &str, output: Output, image: Vec<u8>) -> Result<Arc<CudaModule>> {
        let fail = |msg: String| Error::Cuda { op: "load module", msg: format!("{file} (cached {}): {msg}", output.extension()) };
        let image = match output {
            Output::Ptx => match String::from_utf8(image) {
                Ok(text) if !text.contains('\0') => cudarc::nvrtc::Ptx::from_src(text),
                _ => return Err(fail("not PTX text".into())),
            },
            Output::Cubin => cudarc::nvrtc::Ptx::from_binary(image),
        };
        self.ctx.load_module(image).map_err(|e| fail(e.to_string()))
    }

    /// Compile `source` to PTX and load it. If the driver refuses the PTX (an NVRTC newer
    /// than the driver writes a PTX version it cannot read), load machine code for this
    /// architecture instead; if that fails too, the error gives both reasons and both versions.
    /// Returns the module with the image it was loaded from (for the kernel cache).
    fn compile_and_load(&self, file: &str, source: &str) -> Result<(Arc<CudaModule>, Output, Vec<u8>)> {
        let ptx = crate::nvrtc::compile_ptx(file, source, &self.arch)?;
        let ptx_err = match self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx.clone())) {
            Ok(m) => return Ok((m, Output::Ptx, ptx.into_bytes())),
            Err(e) => e,
        };
        let cubin = crate::nvrtc::compile_cubin(file, source, &self.arch).map_err(|e| Error::Cuda {
            op: "load module",
            msg: format!("{file}: the driver refused the PTX ({ptx_err}), and compiling machine code instead failed: {e}"),
        })?;
        match self.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin.clone())) {
            Ok(m) => Ok((m, Output::Cubin, cubin)),
            Err(e) => {
                let nvrtc = crate::nvrtc::version().map(|(a, b)| format!("{a}.{b}")).unwrap_or_else(|_| "?".into());
                let mut driver = 0;
                // SAFETY: cuDriverGetVersion writes one int (the driver is loaded: a context exists).
                let _ = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
                Err(Error::Cuda {
                    op: "load module",
                    msg: format!(
                        "{file}: the driver (CUDA {}.{}) refused the PTX of NVRTC {nvrtc} ({ptx_err}) and its machine code for {} ({e})",
                        driver / 1000,
                        (driver % 1000) / 10,
                        self.arch
                    ),
                })
            }
        }
    }
}
