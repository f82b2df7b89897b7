//! Devices: the CPU, and CUDA GPUs reached through `cudarc` with libraries loaded at run time.

use crate::{Error, Result};
use std::fmt;
use std::sync::Arc;

/// Where a tensor's elements live and where operations on it run.
#[derive(Clone, Debug)]
pub enum Device {
    /// The host: plain-loop reference implementations (and a GEMM crate for convolutions).
    Cpu,
    /// One CUDA GPU.
    Cuda(Arc<CudaDevice>),
}

pub use crate::cuda::CudaDevice;

/// The shared libraries the CUDA path needs, with the file a user would look for.
/// Each probe only tries to `dlopen` the library: it never panics (the plain
/// `cudarc` entry points panic when a library is missing).
fn missing_cuda_libraries() -> Vec<&'static str> {
    let mut missing = Vec::new();
    // SAFETY: the probes only attempt to load each library by name and report success.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            missing.push("libcuda.so (the NVIDIA driver)");
        }
        if !cudarc::cublas::sys::is_culib_present() {
            missing.push("libcublas.so");
        }
        if !cudarc::cudnn::sys::is_culib_present() {
            missing.push("libcudnn.so");
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            missing.push("libnvrtc.so");
        }
    }
    missing
}

/// The libraries found whose versions this build cannot use (cudarc's bindings are for CUDA
/// 13.0 and cuDNN 9: an older driver lacks some of their entry points, and cudarc panics at the
/// first call of a missing one), each as "libX is version V". The libraries must be loadable.
fn wrong_cuda_versions() -> Vec<String> {
    let mut wrong = Vec::new();
    let mut driver = 0;
    // SAFETY: the driver library is present (checked first) and initialised by device_count;
    // cuDriverGetVersion writes one int.
    if unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) } == cudarc::driver::sys::CUresult::CUDA_SUCCESS && driver < 13000 {
        wrong.push(format!("the NVIDIA driver supports CUDA {}.{}", driver / 1000, (driver % 1000) / 10));
    }
    // SAFETY: cuDNN is present (checked first); cudnnGetVersion only returns a number
    // (major * 10000 + minor * 100 + patch since cuDNN 9).
    let cudnn = unsafe { cudarc::cudnn::sys::cudnnGetVersion() };
    if cudnn / 10000 != 9 {
        wrong.push(format!("libcudnn is version {cudnn} (cuDNN 9 is needed)"));
    }
    match crate::nvrtc::version() {
        Ok((major, minor)) if major != 13 => wrong.push(format!("libnvrtc is version {major}.{minor}")),
        _ => {}
    }
    wrong
}

impl Device {
    /// The CUDA GPU with this ordinal.
    ///
    /// Never panics: when a CUDA library cannot be loaded the error names it and
    /// says how to point `LD_LIBRARY_PATH` at it; when the driver loads but has no
    /// such device the error says that.
    ///
    /// The time each step took is kept on the device ([`CudaDevice::open_phases`]).
    pub fn cuda(ordinal: usize) -> Result<Device> {
        let start = std::time::Instant::now();
        let missing = missing_cuda_libraries();
        let probes = start.elapsed().as_secs_f64();
        if !missing.is_empty() {
            return Err(Error::CudaUnavailable(format!(
                "could not load {}. Install the NVIDIA driver and the CUDA 13 libraries (cuBLAS, cuDNN 9, NVRTC), \
                 or add the folders that hold them to LD_LIBRARY_PATH \
                 (e.g. export LD_LIBRARY_PATH=/path/to/nvidia/cudnn/lib:$LD_LIBRARY_PATH)",
                missing.join(", ")
            )));
        }
        let count = cudarc::driver::CudaContext::device_count()
            .map_err(|e| Error::CudaUnavailable(format!("the CUDA driver could not count devices: {e}")))?;
        let wrong = wrong_cuda_versions();
        if !wrong.is_empty() {
            return Err(Error::CudaUnavailable(format!(
                "{}. This build needs a driver for CUDA 13.0 or newer (the 580 series), cuDNN 9 and NVRTC 13 \
                 (e.g. from PyTorch's CUDA 13 wheels: nvidia-cudnn-cu13, nvidia-cuda-nvrtc); \
                 point LD_LIBRARY_PATH at their folders",
                wrong.join("; ")
            )));
        }
        if ordinal >= count as usize {
            return Err(Error::CudaUnavailable(format!(
                "CUDA device {ordinal} requested but the driver reports {count} device(s)"
            )));
        }
        // Loading the driver for good and cuInit (in device_count), and the version checks
        // (which load cuDNN's and NVRTC's libraries for good: the probes unload what they load).
        let driver = start.elapsed().as_secs_f64() - probes;
        Ok(Device::Cuda(Arc::new(CudaDevice::open(ordinal, vec![("library probes", probes), ("driver start", driver)])?)))
    }

    /// The first CUDA GPU if one is usable, else the CPU, with the reason the GPU was not taken.
    pub fn best_available() -> (Device, Option<Error>) {
        match Device::cuda(0) {
            Ok(d) => (d, None),
            Err(e) => (Device::Cpu, Some(e)),
        }
    }

    /// Whether this is a CUDA device.
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Wait for all queued work (nothing to wait for on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(d) => d.synchronize(),
        }
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            // The same opened device, not just the same ordinal: two `Device::cuda(0)` have
            // two streams, and nothing orders one's work after the other's.
            (Device::Cuda(a), Device::Cuda(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(d) => write!(f, "cuda:{} ({})", d.ordinal(), d.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without CUDA (CI) this must be an error naming a library, not a panic.
    /// On a machine with a GPU it must succeed.
    #[test]
    fn cuda_without_libraries_is_a_clear_error() {
        let missing = missing_cuda_libraries();
        match Device::cuda(0) {
            Ok(d) => assert!(missing.is_empty(), "device {d} opened although {missing:?} are missing"),
            Err(e) => {
                let msg = e.to_string();
                if !missing.is_empty() {
                    assert!(msg.contains(missing[0]), "message does not name {}: {msg}", missing[0]);
                    assert!(msg.contains("LD_LIBRARY_PATH"), "message does not say how to fix it: {msg}");
                }
            }
        }
    }
}
