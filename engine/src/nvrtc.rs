//! Run-time compilation of the CUDA C kernels in `ptx/*.cu` to PTX text with NVRTC.
//!
//! NVRTC is a plain shared library (`libnvrtc.so.13`) that needs no GPU and no
//! driver, so kernels can be compiled (and their compilation tested) on any
//! machine that has it; CI installs it from PyPI (`nvidia-cuda-nvrtc==13.0.*`).
//! The library is loaded at run time by `cudarc`, whose NVRTC entry points
//! panic when it is missing: every function here first probes for it and
//! returns [`Error::CudaUnavailable`] instead.
//!
//! The PTX must come from an NVRTC no newer than the CUDA version of the driver
//! that loads it (a 580-series driver is CUDA 13.0; the PTX of NVRTC 13.2 is refused
//! with `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`). When the driver refuses the PTX, the
//! device loads machine code instead ([`compile_cubin`]): a CUDA 13.x cubin runs on
//! any CUDA 13 driver.

use crate::{Error, Result};

/// Whether `libnvrtc` can be loaded (from the loader's default paths or `LD_LIBRARY_PATH`).
///
/// Never panics; it only tries to `dlopen` the library under the names `cudarc` uses.
pub fn is_available() -> bool {
    // SAFETY: the probe only attempts to load the library by name and reports success.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The error for a missing NVRTC, saying what to install and how to point the loader at it.
fn unavailable() -> Error {
    Error::CudaUnavailable(
        "could not load libnvrtc.so (NVRTC, the CUDA runtime compiler). Install the CUDA 13 toolkit's NVRTC, \
         or `pip install 'nvidia-cuda-nvrtc==13.0.*'`, and add the folder holding libnvrtc.so.13 to LD_LIBRARY_PATH \
         (for the PyPI package: export LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib:$LD_LIBRARY_PATH)"
            .to_string(),
    )
}

/// The version of the loaded NVRTC library as `(major, minor)`, e.g. `(13, 0)`.
///
/// Errors with [`Error::CudaUnavailable`] when the library cannot be loaded.
pub fn version() -> Result<(i32, i32)> {
    if !is_available() {
        return Err(unavailable());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); nvrtcVersion writes two ints.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    status.result().map_err(|e| Error::Cuda { op: "nvrtc", msg: format!("nvrtcVersion failed: {e}") })?;
    Ok((major, minor))
}

/// The options every compilation of ours passes to NVRTC for the architecture `arch`: only
/// `--gpu-architecture=<arch>` (see [`compile_ptx`] for why nothing else). One function, so
/// that what the kernel cache keys its files by (`kernel_cache`) is what the compiler was given.
pub fn compile_options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}")]
}

/// Compiles one CUDA C source file to PTX text for the GPU architecture `arch`.
///
/// - `name`: the file's name (e.g. `"augment.cu"`); NVRTC uses it in its messages.
/// - `source`: the CUDA C source. Kernels meant to be loaded by name must be
///   `extern "C" __global__` so that their PTX `.entry` names are not mangled.
/// - `arch`: passed as `--gpu-architecture=<arch>`: a virtual architecture such
///   as `"compute_90"` or a real one such as `"sm_90"`. Either way the result
///   is PTX text, which the driver JIT-compiles when the module is loaded.
///
/// No other options are passed: NVRTC's defaults are IEEE-exact division and
/// square root and no flush-to-zero, which the kernels' bit-exactness claims
/// rely on. Fused multiply-add contraction is on by default; kernels that must
/// match a CPU reference bit for bit use the `__f*_rn` intrinsics, which are
/// never contracted.
///
/// Errors:
/// - [`Error::CudaUnavailable`] when `libnvrtc` cannot be loaded (the message
///   names `libnvrtc.so` and `LD_LIBRARY_PATH`);
/// - [`Error::Cuda`] with `op: "nvrtc"` when compilation fails; the message
///   holds NVRTC's status, the options and the full compile log (with file
///   name and line of each error).
pub fn compile_ptx(name: &str, source: &str, arch: &str) -> Result<String> {
    let fail = |msg: String| Error::Cuda { op: "nvrtc", msg };
    // cudarc's CString conversions panic on interior NUL bytes: refuse them here.
    if source.contains('\0') || name.contains('\0') || arch.contains('\0') {
        return Err(fail(format!("{name}: the source, name or architecture contains a NUL byte")));
    }
    if !is_available() {
        return Err(unavailable());
    }
    let opts = cudarc::nvrtc::CompileOptions {
        name: Some(name.to_string()),
        options: compile_options(arch),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, options, log } => fail(format!(
            "compiling {name} for {arch} failed ({nvrtc}; options {options:?}){}:\n{}",
            if format!("{nvrtc:?}").contains("BUILTIN") {
                " (libnvrtc-builtins.so.13.* must be beside libnvrtc.so.13 or on LD_LIBRARY_PATH)"
            } else {
                ""
            },
            log.to_string_lossy().trim_end()
        )),
        other => fail(format!("compiling {name} for {arch} failed: {other}")),
    })?;
    let bytes =
        ptx.as_bytes().ok_or_else(|| fail(format!("compiling {name} for {arch}: NVRTC returned no PTX image")))?;
    // The image is NUL-terminated C text; PTX is ASCII.
    let text = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
    Ok(String::from_utf8_lossy(text).into_owned())
}

/// Compiles one CUDA C source file to machine code (a cubin) for the real architecture
/// `arch` (e.g. `"sm_90"`), with the same options as [`compile_ptx`]. Used when the driver
/// refuses the PTX of a newer NVRTC; the errors are those of [`compile_ptx`].
pub fn compile_cubin(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::CString;
    let fail = |msg: String| Error::Cuda { op: "nvrtc", msg };
    if !arch.starts_with("sm_") {
        return Err(fail(format!("machine code needs a real architecture (sm_XY), not {arch}")));
    }
    let (Ok(src), Ok(cname)) = (CString::new(source), CString::new(name)) else {
        return Err(fail(format!("{name}: the source or name contains a NUL byte")));
    };
    if !is_available() {
        return Err(unavailable());
    }
    let prog = result::create_program(&src, Some(&cname)).map_err(|e| fail(format!("{name}: {e}")))?;
    let options = compile_options(arch);
    // SAFETY: `prog` was created above and is destroyed once, at the end; `src` and `cname`
    // outlive it; the CUBIN buffer has the size NVRTC reports.
    let out = unsafe {
        match result::compile_program(prog, &options) {
            Err(e) => {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                Err(fail(format!("compiling {name} for {arch} failed ({e}):\n{}", String::from_utf8_lossy(&log).trim_end())))
            }
            Ok(()) => {
                let mut size = 0usize;
                match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Err(e) => Err(fail(format!("{name}: no machine code for {arch} ({e})"))),
                    Ok(()) => {
                        let mut bin = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast()).result().map(|()| bin).map_err(|e| fail(format!("{name}: {e}")))
                    }
                }
            }
        }
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source with a NUL byte is an error, not a panic inside cudarc (works with or without NVRTC).
    #[test]
    fn nul_byte_is_an_error() {
        let err = compile_ptx("nul.cu", "extern \"C\" __global__ void k() {}\0", "compute_90").unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    /// Without NVRTC the error names the library and the fix; with it, the version is a plausible one.
    #[test]
    fn missing_library_is_a_clear_error() {
        match version() {
            Ok((major, _)) => assert!(is_available() && major >= 11, "unexpected NVRTC version {major}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("libnvrtc.so") && msg.contains("LD_LIBRARY_PATH"), "{msg}");
            }
        }
    }

    /// With NVRTC, a kernel compiles to an ELF cubin for sm_90 (the fallback when a driver
    /// refuses newer PTX); a virtual architecture is refused. Without NVRTC: the clear error.
    #[test]
    fn cubin_for_a_real_architecture() {
        let src = "extern \"C\" __global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }";
        match compile_cubin("k.cu", src, "sm_90") {
            Ok(bin) => assert!(bin.len() > 64 && bin.starts_with(b"\x7fELF"), "{} bytes, not ELF", bin.len()),
            Err(e) => assert!(!is_available() && e.to_string().contains("libnvrtc.so"), "{e}"),
        }
        assert!(compile_cubin("k.cu", src, "compute_90").is_err());
    }
}
