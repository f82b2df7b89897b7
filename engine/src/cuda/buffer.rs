//! [`CudaBuffer`]: elements of one type in device memory, a block of the device's pool
//! (see the caching allocator in [`super`]'s doc), given back to the pool when dropped.

use super::{CudaDevice, driver_err};
use crate::{DType, Error, Float, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr};
use std::fmt;
use std::sync::Arc;

/// Elements of one type in device memory, taken from the device's pool and given back to it
/// on drop. The memory is a block of bytes; [`CudaBuffer::view`] reads it as its element type.
pub struct CudaBuffer {
    /// Always `Some` until `drop` hands the block back. It may be larger than the buffer
    /// (the pool serves a request with a block of up to twice its size).
    pub(super) bytes: Option<CudaSlice<u8>>,
    /// The block's device address (its name in the pool).
    pub(super) addr: u64,
    pub(super) dtype: DType,
    pub(super) len: usize,
    pub(super) dev: Arc<CudaDevice>,
}

/// The size of one element of `dtype` in bytes.
pub fn dtype_size(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        DType::F64 => 8,
        DType::BF16 => 2,
    }
}

impl CudaBuffer {
    fn block(&self) -> &CudaSlice<u8> {
        self.bytes.as_ref().expect("a CudaBuffer holds its block until dropped")
    }

    /// The elements as `T` (an error if the buffer holds another type).
    pub fn view<T: Float + DeviceRepr>(&self) -> Result<CudaView<'_, T>> {
        self.expect::<T>()?;
        // SAFETY: the block holds `len` elements of `T` (its dtype), allocated with the
        // driver's alignment (256 bytes).
        unsafe { self.block().transmute::<T>(self.len) }.ok_or_else(|| Error::Invalid("CudaBuffer: block smaller than its length".into()))
    }

    /// The elements as `T`, mutably (an error if the buffer holds another type).
    pub fn view_mut<T: Float + DeviceRepr>(&mut self) -> Result<CudaViewMut<'_, T>> {
        self.expect::<T>()?;
        let len = self.len;
        let block = self.bytes.as_mut().expect("a CudaBuffer holds its block until dropped");
        // SAFETY: as in `view`.
        unsafe { block.transmute_mut::<T>(len) }.ok_or_else(|| Error::Invalid("CudaBuffer: block smaller than its length".into()))
    }

    /// The raw device address, for library calls (cuDNN) whose descriptors carry the
    /// element type. Valid while `self` lives.
    pub fn ptr(&self) -> *const std::ffi::c_void {
        crate::cudnn::ptr(self.block(), &self.dev.stream)
    }

    /// The raw device address, for library calls that write the buffer.
    pub fn ptr_mut(&mut self) -> *mut std::ffi::c_void {
        let stream = self.dev.stream.clone();
        crate::cudnn::ptr_mut(self.bytes.as_mut().expect("a CudaBuffer holds its block until dropped"), &stream)
    }

    fn expect<T: Float>(&self) -> Result<()> {
        if self.dtype != T::DTYPE {
            return Err(Error::DType { op: "CudaBuffer::view", a: self.dtype, b: T::DTYPE });
        }
        Ok(())
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device that holds the memory.
    pub fn dev(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements copied to the host, widened to f64.
    pub fn to_host_f64(&self) -> Result<Vec<f64>> {
        Ok(match self.dtype {
            DType::F32 => self.dev.download_view(&self.view::<f32>()?)?.into_iter().map(f64::from).collect(),
            DType::F64 => self.dev.download_view(&self.view::<f64>()?)?,
            DType::BF16 => self.to_host_bf16_bits()?.into_iter().map(|h| crate::tensor::bf16_to_f32(h) as f64).collect(),
        })
    }

    /// The elements copied to the host as f32 (f64 rounded).
    pub fn to_host_f32(&self) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            DType::F32 => self.dev.download_view(&self.view::<f32>()?)?,
            DType::F64 => self.dev.download_view(&self.view::<f64>()?)?.into_iter().map(|v| v as f32).collect(),
            DType::BF16 => self.to_host_bf16_bits()?.into_iter().map(crate::tensor::bf16_to_f32).collect(),
        })
    }

    /// The elements as raw bit patterns of their size (`U` = u16, u32 or u64 for bf16, f32
    /// or f64), for kernels that only move data. An error if the sizes differ.
    pub fn view_bits<U: DeviceRepr>(&self) -> Result<CudaView<'_, U>> {
        self.expect_size::<U>()?;
        // SAFETY: the block holds `len` elements of U's size; any bit pattern is a valid integer.
        unsafe { self.block().transmute::<U>(self.len) }.ok_or_else(|| Error::Invalid("CudaBuffer: block smaller than its length".into()))
    }

    /// As [`CudaBuffer::view_bits`], mutably.
    pub fn view_bits_mut<U: DeviceRepr>(&mut self) -> Result<CudaViewMut<'_, U>> {
        self.expect_size::<U>()?;
        let len = self.len;
        let block = self.bytes.as_mut().expect("a CudaBuffer holds its block until dropped");
        // SAFETY: as in `view_bits`.
        unsafe { block.transmute_mut::<U>(len) }.ok_or_else(|| Error::Invalid("CudaBuffer: block smaller than its length".into()))
    }

    fn expect_size<U>(&self) -> Result<()> {
        if std::mem::size_of::<U>() != dtype_size(self.dtype) {
            return Err(Error::Invalid(format!("CudaBuffer of {:?} viewed as {}-byte values", self.dtype, std::mem::size_of::<U>())));
        }
        Ok(())
    }

    /// The bf16 bit patterns copied to the host.
    pub fn to_host_bf16_bits(&self) -> Result<Vec<u16>> {
        self.dev.download_view(&self.view_bf16()?)
    }

    /// The elements of a bf16 buffer as their 16-bit patterns (kernels take `unsigned short*`).
    pub fn view_bf16(&self) -> Result<CudaView<'_, u16>> {
        if self.dtype != DType::BF16 {
            return Err(Error::DType { op: "CudaBuffer::view_bf16", a: self.dtype, b: DType::BF16 });
        }
        // SAFETY: the block holds `len` bf16 values, 2 bytes each.
        unsafe { self.block().transmute::<u16>(self.len) }.ok_or_else(|| Error::Invalid("CudaBuffer: block smaller than its length".into()))
    }

    /// The elements of a bf16 buffer as their 16-bit patterns, mutably.
    pub fn view_bf16_mut(&mut self) -> Result<CudaViewMut<'_, u16>> {
        if self.dtype != DType::BF16 {
            return Err(Error::DType { op: "CudaBuffer::view_bf16_mut", a: self.dtype, b: DType::BF16 });
        }
        let len = self.len;
        let block = self.bytes.as_mut().expect("a CudaBuffer holds its block until dropped");
        // SAFETY: as in `view_bf16`.
        unsafe { block.transmute_mut::<u16>(len) }.ok_or_else(|| Error::Invalid("CudaBuffer: block smaller than its length".into()))
    }

    /// The buffer's size in bytes (its block may be larger).
    pub fn size_bytes(&self) -> usize {
        self.len * dtype_size(self.dtype)
    }

    /// A copy on the same device (from the pool, filled by a device-to-device copy).
    pub fn try_clone(&self) -> Result<CudaBuffer> {
        let bytes = self.size_bytes();
        let mut out = self.dev.alloc_dtype(self.len, self.dtype)?;
        if bytes > 0 {
            let dst = out.bytes.as_mut().expect("just allocated");
            // Both blocks may be larger than the buffer: copy the buffer's bytes only.
            self.dev.stream.memcpy_dtod(&self.block().slice(0..bytes), &mut dst.slice_mut(0..bytes)).map_err(driver_err("copy on device"))?;
        }
        Ok(out)
    }
}

impl fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaBuffer({} {:?} on cuda:{})", self.len, self.dtype, self.dev.ordinal)
    }
}

impl Clone for CudaBuffer {
    /// A device-to-device copy. Panics only if the driver fails (out of memory or a
    /// lost context); code that can recover uses [`CudaBuffer::try_clone`].
    fn clone(&self) -> Self {
        self.try_clone().unwrap_or_else(|e| panic!("copying a CUDA buffer: {e}"))
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        if let Some(bytes) = self.bytes.take() {
            self.dev.recycle(self.addr, bytes);
        }
    }
}
