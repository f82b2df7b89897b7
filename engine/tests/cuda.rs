//! Device memory on a real GPU. Run with `cargo test --release -- --ignored` on a machine
//! with CUDA (libcuda, libcublas, libcudnn and libnvrtc on LD_LIBRARY_PATH).

use engine::{DType, Device, Tensor};
use rand::SeedableRng;

fn gpu() -> Device {
    Device::cuda(0).unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn upload_and_download_round_trip_exactly() {
    let dev = gpu();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let t = Tensor::randn(&[3, 5, 7], DType::F32, 1.0, &mut rng);
    let d = t.to_device(&dev).unwrap();
    assert_eq!(d.device(), dev);
    assert_eq!(d.shape(), t.shape());
    let back = d.to_device(&Device::Cpu).unwrap();
    assert_eq!(back.to_f32_vec(), t.to_f32_vec());
    // Host-only accessors refuse device tensors with an error, not a panic.
    assert!(d.as_slice::<f32>().is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn accumulate_on_the_device_equals_the_host() {
    let dev = gpu();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let a = Tensor::randn(&[1000, 37], DType::F32, 1.0, &mut rng);
    let b = Tensor::randn(&[1000, 37], DType::F32, 1.0, &mut rng);
    let mut host = a.clone();
    host.add_assign(&b).unwrap();
    let mut da = a.to_device(&dev).unwrap();
    da.add_assign(&b.to_device(&dev).unwrap()).unwrap();
    // One f32 addition per element on both sides: bit-identical.
    assert_eq!(da.to_f32_vec(), host.to_f32_vec());
    // Mixing devices is an error.
    assert!(da.add_assign(&b).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_pool_reuses_freed_blocks_and_the_architecture_is_known() {
    let Device::Cuda(d) = gpu() else { unreachable!() };
    let before = d.driver_allocations();
    let buf = d.alloc_zeros(1 << 20).unwrap();
    assert_eq!(d.driver_allocations(), before + 1);
    assert_eq!(buf.to_host_f32().unwrap(), vec![0.0f32; 1 << 20], "alloc_zeros clears a block");
    drop(buf);
    assert_eq!(d.pool_free_bytes(), 4 << 20, "a dropped buffer goes back to the pool");
    // The same size again: served from the pool, and cleared again even though it was used.
    let mut again = d.upload_elems(&vec![7.0f32; 1 << 20]).unwrap();
    assert_eq!(d.driver_allocations(), before + 1, "a freed block of the same size is reused");
    drop(std::mem::replace(&mut again, d.alloc_zeros(1 << 20).unwrap()));
    assert_eq!(d.driver_allocations(), before + 2, "two live blocks need two allocations");
    drop(again);
    // The pool hands out the last block given back: make that one dirty, then ask for zeros.
    drop(d.upload_elems(&vec![7.0f32; 1 << 20]).unwrap());
    let z = d.alloc_zeros(1 << 20).unwrap();
    assert_eq!(d.driver_allocations(), before + 2, "the dirty block was reused");
    assert!(z.to_host_f32().unwrap().iter().all(|&v| v == 0.0), "a reused block is cleared by alloc_zeros");
    // A different size is a new block.
    let _other = d.alloc(1000).unwrap();
    assert_eq!(d.driver_allocations(), before + 3);
    d.release_cached();
    assert_eq!(d.pool_free_bytes(), 0);
    assert!(d.arch().starts_with("sm_"), "{}", d.arch());
    eprintln!("{} ({}), {}", d.name(), d.arch(), Device::Cuda(d.clone()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn f64_tensors_keep_their_type_on_the_device() {
    let dev = gpu();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let a = Tensor::randn(&[17, 3], DType::F64, 1.0, &mut rng);
    let b = Tensor::randn(&[17, 3], DType::F64, 1.0, &mut rng);
    let mut d = a.to_device(&dev).unwrap();
    assert_eq!(d.dtype(), DType::F64);
    assert_eq!(d.to_device(&Device::Cpu).unwrap().to_f64_vec(), a.to_f64_vec(), "f64 round trip is exact");
    d.add_assign(&b.to_device(&dev).unwrap()).unwrap();
    let mut host = a.clone();
    host.add_assign(&b).unwrap();
    assert_eq!(d.to_f64_vec(), host.to_f64_vec());
    // Mixing element types on the device is an error, as on the host.
    assert!(d.add_assign(&b.to_dtype(DType::F32).to_device(&dev).unwrap()).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ones_are_ones_in_every_type_and_cost_no_upload_once_cached() {
    let Device::Cuda(d) = gpu() else { unreachable!() };
    assert_eq!(d.ones(700, DType::F32).unwrap().to_host_f32().unwrap(), vec![1.0f32; 700]);
    assert_eq!(d.ones(3, DType::F64).unwrap().to_host_f64().unwrap(), vec![1.0f64; 3]);
    assert_eq!(d.ones(9, DType::BF16).unwrap().to_host_f32().unwrap(), vec![1.0f32; 9]);
    let before = d.driver_allocations();
    let _a = d.ones(512, DType::F32).unwrap();
    drop(_a);
    let _b = d.ones(512, DType::F32).unwrap();
    assert!(d.driver_allocations() <= before + 1, "a cached block serves smaller requests");
}

/// The fallback for a driver that refuses our PTX (an NVRTC newer than the driver): NVRTC's
/// machine code for the device's architecture loads and runs. Also: a graph captured from a
/// kernel launch replays it, owning the pool blocks used during the capture.
#[test]
#[ignore = "needs a CUDA GPU"]
fn machine_code_loads_and_a_captured_launch_replays() {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let Device::Cuda(d) = gpu() else { unreachable!() };
    let src = "extern \"C\" __global__ void twice(float* x, unsigned int n) { unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] = 2.0f * x[i]; }";
    let bin = engine::nvrtc::compile_cubin("twice.cu", src, d.arch()).unwrap();
    let module = d.context().load_module(cudarc::nvrtc::Ptx::from_binary(bin)).unwrap();
    let f = module.load_function("twice").unwrap();
    let values: Vec<f32> = (0..1000).map(|i| i as f32 - 300.5).collect();
    let mut buf = d.upload_elems(&values).unwrap();
    let n = 1000u32;
    let launch = |buf: &mut engine::cuda::CudaBuffer| {
        let mut v = buf.view_mut::<f32>().unwrap();
        let mut l = d.stream().launch_builder(&f);
        l.arg(&mut v).arg(&n);
        // SAFETY: twice(float* x [n], n).
        unsafe { l.launch(LaunchConfig::for_num_elems(n)) }.unwrap();
    };
    launch(&mut buf);
    let want: Vec<f32> = values.iter().map(|v| 2.0 * v).collect();
    assert_eq!(buf.to_host_f32().unwrap(), want);
    // Capture one launch on a block taken (and given back) during the capture, then replay twice.
    drop(d.alloc(4096).unwrap());
    let free_before = d.pool_free_bytes();
    d.begin_capture().unwrap();
    let scratch = d.alloc(4096).unwrap();
    drop(scratch);
    launch(&mut buf);
    let graph = d.end_capture().unwrap();
    assert_eq!(buf.to_host_f32().unwrap(), want, "a capture runs nothing");
    assert_eq!(graph.reserved_bytes(), 4096 * 4, "the graph reserves the block used during its capture");
    assert_eq!(d.pool_free_bytes(), free_before - 4096 * 4, "... which the pool no longer counts as free");
    graph.launch().unwrap();
    // Between replays the reserved block is lent to other work; a replay is refused while it is held.
    let fit = d.best_fit();
    let borrowed = d.upload_elems(&vec![5.0f32; 3000]).unwrap();
    drop(fit);
    assert_eq!(graph.blocks_lent().unwrap(), 1, "a request of 3000 f32 is served by the reserved 4096 (best fit)");
    assert!(graph.launch().is_err(), "a replay would overwrite the borrowed block");
    assert_eq!(borrowed.to_host_f32().unwrap(), vec![5.0f32; 3000], "the refused replay ran nothing");
    drop(borrowed);
    graph.launch().unwrap();
    let want4: Vec<f32> = values.iter().map(|v| 8.0 * v).collect();
    assert_eq!(buf.to_host_f32().unwrap(), want4);
    drop(graph);
    assert_eq!(d.pool_free_bytes(), free_before, "a dropped graph's blocks are ordinary free blocks again");
    // A buffer made before a capture, used by the captured work and dropped during the capture
    // belongs to the graph too: every replay uses its address.
    let mut early = d.upload_elems(&values).unwrap();
    d.begin_capture().unwrap();
    launch(&mut early);
    drop(early);
    let graph = d.end_capture().unwrap();
    assert_eq!(graph.reserved_bytes(), 4000, "the block given back during the capture is reserved");
    drop(graph);
    // New memory during a capture is refused, and the capture then fails cleanly.
    d.begin_capture().unwrap();
    assert!(d.alloc(12345).is_err());
    assert!(d.end_capture().is_err());
    assert!(!d.is_capturing());
    d.synchronize().unwrap();
}

/// The kernel cache (`engine::kernel_cache`) inside a device: a first device compiles a file
/// and keeps it; a second reads it back without NVRTC, and its kernel computes what it should;
/// an image the cache holds whole (its checksum matches) but the driver refuses is removed,
/// the file compiled again and kept in its place, which the next device reads.
#[test]
#[ignore = "needs a CUDA GPU"]
fn kernels_are_kept_in_the_cache_read_back_and_a_refused_image_replaced() {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    use engine::kernel_cache::{KernelCache, KernelSpec, Output};
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::new(dir.path());
    let (file, src) = ("thrice.cu", "extern \"C\" __global__ void thrice(float* x, unsigned int n) { unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] = 3.0f * x[i]; }");
    let open = || {
        let Device::Cuda(d) = gpu() else { unreachable!() };
        d.set_kernel_cache(Some(cache.clone()));
        d
    };
    let counts = |d: &engine::cuda::CudaDevice| {
        let p = d.precompile(&[(file, src)]).unwrap();
        (p.from_cache, p.compiled, p.cache_error)
    };
    let first = open();
    assert_eq!(counts(&first), (0, 1, None), "an empty cache: compiled, and kept");
    let second = open();
    assert_eq!(counts(&second), (1, 0, None), "read back, not compiled");
    let values: Vec<f32> = (0..777).map(|i| i as f32 * 0.25 - 50.0).collect();
    let mut buf = second.upload_elems(&values).unwrap();
    let f = second.function(file, src, "thrice").unwrap();
    let n = values.len() as u32;
    let mut v = buf.view_mut::<f32>().unwrap();
    let mut l = second.stream().launch_builder(&f);
    l.arg(&mut v).arg(&n);
    // SAFETY: thrice(float* x [n], n).
    unsafe { l.launch(LaunchConfig::for_num_elems(n)) }.unwrap();
    assert_eq!(buf.to_host_f32().unwrap(), values.iter().map(|v| 3.0 * v).collect::<Vec<f32>>());
    // Whole by the cache's checksum, but no image at all: the driver refuses it. (PTX, unless
    // this driver refused NVRTC's PTX and the device kept machine code instead.)
    let spec = KernelSpec::for_loaded_nvrtc(file, src, second.arch()).unwrap();
    let output = if cache.load(&spec, Output::Ptx).is_some() { Output::Ptx } else { Output::Cubin };
    let kept = cache.load(&spec, output).expect("the compiled image is in the cache");
    cache.store(&spec, output, b"this is no image").unwrap();
    let third = open();
    assert_eq!(counts(&third), (0, 1, None), "the refused image gives way to a compilation");
    assert_eq!(cache.load(&spec, output).as_deref(), Some(kept.as_slice()), "the compiled image took its place");
    assert_eq!(counts(&open()), (1, 0, None));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_download_holds_the_values_of_when_it_was_queued() {
    use engine::download::{Download, StagingPool};
    let dev = gpu();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    // Odd lengths (parts start on 16-byte boundaries in the staging buffer), a large one (16 MiB:
    // a copy that takes long enough for a wrong order to show), a host tensor and a bf16 device
    // tensor (both copied at once), in one download.
    let shapes: [&[usize]; 4] = [&[3, 5, 7], &[4096, 1024], &[1], &[64, 3, 3, 3]];
    let host: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(s, DType::F32, 1.0, &mut rng)).collect();
    let mut on_gpu: Vec<Tensor> = host.iter().map(|t| t.to_device(&dev).unwrap()).collect();
    let cpu_tensor = Tensor::randn(&[9], DType::F32, 1.0, &mut rng);
    let bf16 = Tensor::randn(&[33], DType::F32, 1.0, &mut rng).to_dtype(DType::BF16).to_device(&dev).unwrap();
    // Made before the downloads: an upload may wait for the stream.
    let ones: Vec<Tensor> = shapes.iter().map(|s| Tensor::full(s, DType::F32, 1.0).to_device(&dev).unwrap()).collect();
    let pool = StagingPool::new();
    for round in 0..3 {
        let before: Vec<Vec<f32>> = on_gpu.iter().map(|t| t.to_f32_vec()).collect();
        let mut all: Vec<&Tensor> = on_gpu.iter().collect();
        all.push(&cpu_tensor);
        all.push(&bf16);
        let download = Download::start(&all, &pool).unwrap();
        let parts = all.len();
        drop(all);
        assert!(pool.is_empty(), "round {round}: the download holds the staging buffer");
        // Queued after the copies on the same stream: must not show in the download.
        for (t, o) in on_gpu.iter_mut().zip(&ones) {
            t.add_assign(o).unwrap();
        }
        let bytes = download.finish().unwrap();
        assert_eq!(bytes.len(), parts);
        for (i, b) in before.iter().enumerate() {
            assert_eq!(bytemuck::cast_slice::<u8, f32>(&bytes[i]), b.as_slice(), "round {round}, tensor {i}: not the values when queued");
        }
        assert_eq!(bytemuck::cast_slice::<u8, f32>(&bytes[4]), cpu_tensor.to_f32_vec().as_slice());
        assert_eq!(bytemuck::cast_slice::<u8, f32>(&bytes[5]), bf16.to_f32_vec().as_slice());
        // The additions did happen, after the copies.
        assert_ne!(on_gpu[0].to_f32_vec(), before[0]);
        assert_eq!(pool.len(), 1, "round {round}: the staging buffer went back to the pool (and was reused)");
    }
    // A download dropped unfinished waits for its copies and gives its buffer back.
    drop(Download::start(&on_gpu.iter().collect::<Vec<_>>(), &pool).unwrap());
    assert_eq!(pool.len(), 1);
}
