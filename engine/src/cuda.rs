//! The CUDA device: context, its one stream, device memory and our compiled kernels.
//!
//! Libraries are loaded at run time by `cudarc`; [`crate::Device::cuda`] probes them
//! first so a missing one is an error, never a panic. Everything is queued on one
//! stream, so operations run in the order they are issued and the host only waits
//! where it copies results back.

use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A CUDA GPU: its context, the one stream all work is queued on, and the kernel
/// modules compiled for it so far.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    arch: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Modules by source file name, compiled by NVRTC on first use.
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    /// cuBLAS and cuDNN handles, bound to `stream`.
    blas: cudarc::cublas::CudaBlas,
    cudnn: Arc<cudarc::cudnn::Cudnn>,
    /// Device allocations made through [`CudaDevice::alloc_zeros`] / [`CudaDevice::upload`].
    allocations: AtomicU64,
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaDevice({}, {:?}, {})", self.ordinal, self.name, self.arch)
    }
}

/// Turn a cudarc driver error into ours, naming the operation.
pub(crate) fn driver_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda { op, msg: e.to_string() }
}

impl CudaDevice {
    /// Open device `ordinal` (the libraries must already be known to load).
    pub(crate) fn open(ordinal: usize) -> Result<CudaDevice> {
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::CudaUnavailable(format!("could not create a context on device {ordinal}: {e}")))?;
        let name = ctx.name().map_err(driver_err("device name"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err("compute capability"))?;
        let stream = ctx.default_stream();
        let blas = cudarc::cublas::CudaBlas::new(stream.clone())
            .map_err(|e| Error::CudaUnavailable(format!("could not create a cuBLAS handle: {e}")))?;
        let cudnn = cudarc::cudnn::Cudnn::new(stream.clone())
            .map_err(|e| Error::CudaUnavailable(format!("could not create a cuDNN handle: {e}")))?;
        Ok(CudaDevice {
            blas,
            cudnn,
            ordinal,
            name,
            arch: format!("sm_{major}{minor}"),
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            allocations: AtomicU64::new(0),
        })
    }

    /// The device's index as the driver numbers it.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture kernels are compiled for, e.g. "sm_90".
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream all of this device's work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLAS handle (on this device's stream).
    pub fn blas(&self) -> &cudarc::cublas::CudaBlas {
        &self.blas
    }

    /// The cuDNN handle (on this device's stream).
    pub fn cudnn(&self) -> &Arc<cudarc::cudnn::Cudnn> {
        &self.cudnn
    }

    /// Number of device allocations made so far through this device (a training
    /// step in steady state should add none once buffers are reused).
    pub fn allocation_count(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// `n` zeroed f32 on the device. Out of memory is an error with the size.
    pub fn alloc_zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.stream.alloc_zeros::<f32>(n).map_err(|e| Error::Cuda {
            op: "alloc",
            msg: format!("allocating {n} f32 ({} MiB) on {}: {e}", (n * 4) >> 20, self.name),
        })
    }

    /// Copy host values to a new device buffer.
    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, values: &[T]) -> Result<CudaSlice<T>> {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.stream.clone_htod(values).map_err(|e| Error::Cuda {
            op: "upload",
            msg: format!("copying {} bytes to {}: {e}", std::mem::size_of_val(values), self.name),
        })
    }

    /// Copy a device buffer back to the host (waits for the stream's work on it).
    pub fn download<T: cudarc::driver::DeviceRepr>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(buf).map_err(driver_err("download"))
    }

    /// Wait until all work queued on the stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("synchronize"))
    }

    /// Kernel `name` from the CUDA C `source` of file `file` (e.g. `"elementwise.cu"`),
    /// compiled by NVRTC for this device's architecture the first time the file is used.
    pub fn function(&self, file: &str, source: &str, name: &str) -> Result<CudaFunction> {
        let module = {
            let mut modules = self.modules.lock().map_err(|_| Error::Invalid("kernel module cache poisoned".into()))?;
            match modules.get(file) {
                Some(m) => m.clone(),
                None => {
                    let ptx = crate::nvrtc::compile_ptx(file, source, &self.arch)?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                        .map_err(|e| Error::Cuda { op: "load module", msg: format!("{file}: {e}") })?;
                    modules.insert(file.to_string(), m.clone());
                    m
                }
            }
        };
        module.load_function(name).map_err(|e| Error::Cuda { op: "load function", msg: format!("{file}: {name}: {e}") })
    }
}
