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
//! that loads it (a 580-series driver is CUDA 13.0; newer PTX is refused with
//! `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`). Compile on the machine that runs the
//! kernels, with its NVRTC.

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
        options: vec![format!("--gpu-architecture={arch}")],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, options, log } => fail(format!(
            "compiling {name} for {arch} failed ({nvrtc}; options {options:?}):\n{}",
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
}
