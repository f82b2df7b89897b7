//! CUDA paths of the ops against the CPU reference, on random inputs of realistic
//! shapes. Run on a GPU machine: `cargo test --release -- --ignored`.
//!
//! Tolerances: ReLU, add, scale, the SGD update and the moving average's update are IEEE f32
//! operations per element, written without fused multiply-adds on both sides (`__f*_rn` intrinsics in
//! the kernels; Rust never contracts), so they must match bit for bit. The loss uses
//! `expf`/`logf`, whose CUDA versions are within 2 ulp of the correctly rounded value, and
//! sums in another order: 1e-5 relative. cuDNN's convolutions, batch norm and cuBLAS sum
//! in other orders (and with other algorithms: Winograd, FFT) than the CPU reference; their
//! tolerances are stated at each test. Max-pooling selects values: exact.

use engine::{DType, Device, Tensor};
use ops::Graph;
use ops::sgd::{Sgd, SgdState};
use rand::SeedableRng;

fn gpu() -> Device {
    Device::cuda(0).unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"))
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, 1.0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
}

fn close(what: &str, gpu: &Tensor, cpu: &Tensor, rtol: f64) {
    assert!(gpu.device().is_cuda(), "{what}: the result is not on the GPU");
    let scale = cpu.to_f64_vec().iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let err = gpu.max_abs_diff(cpu).unwrap();
    assert!(err <= rtol * scale, "{what}: max abs difference {err:e}, largest value {scale:e}");
}

/// `got` against `want`, each brought to NCHW f64 on the host (any device, layout and type):
/// the largest absolute difference must be within `rtol` of `want`'s largest value. Returns the
/// difference relative to that value.
fn close_nchw(what: &str, got: &Tensor, want: &Tensor, rtol: f64) -> f64 {
    let host = |t: &Tensor| ops::layout::forward(t, engine::Layout::Nchw).unwrap().to_device(&Device::Cpu).unwrap().to_dtype(DType::F64);
    let (got, want) = (host(got), host(want));
    let scale = want.to_f64_vec().iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let err = got.max_abs_diff(&want).unwrap();
    assert!(err <= rtol * scale, "{what}: max abs difference {err:e}, largest value {scale:e}");
    err / scale
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn elementwise_ops_match_the_cpu_exactly() {
    let dev = gpu();
    let (a, b) = (rand(&[64, 128, 16, 16], 1), rand(&[64, 128, 16, 16], 2));
    let (da, db) = (a.to_device(&dev).unwrap(), b.to_device(&dev).unwrap());
    close("relu", &ops::relu::forward(&da).unwrap(), &ops::relu::forward(&a).unwrap(), 0.0);
    // Backward from the forward output y, with b as the incoming gradient.
    let y = ops::relu::forward(&a).unwrap();
    let dy_gpu = y.to_device(&dev).unwrap();
    close("relu backward", &ops::relu::backward(&dy_gpu, &db).unwrap(), &ops::relu::backward(&y, &b).unwrap(), 0.0);
    close("add", &ops::add::forward(&da, &db).unwrap(), &ops::add::forward(&a, &b).unwrap(), 0.0);
    close("scale", &ops::scale::forward(&da, 0.125).unwrap(), &ops::scale::forward(&a, 0.125).unwrap(), 0.0);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn softmax_cross_entropy_matches_the_cpu() {
    let dev = gpu();
    let z = rand(&[512, 10], 3);
    let labels: Vec<u32> = (0..512).map(|i| (i * 7 % 10) as u32).collect();
    for s in [0.0, 0.2] {
        let run = |z: Tensor| {
            let params = vec![z];
            let mut g = Graph::new(&params);
            let v = g.param(0).unwrap();
            let loss = ops::cross_entropy::softmax_cross_entropy(&mut g, v, &labels, s).unwrap();
            let grads = g.backward(loss).unwrap().into_param_grads(1).unwrap();
            (g.value(loss).clone(), grads[0].clone().unwrap())
        };
        let (lc, gc) = run(z.clone());
        let (lg, gg) = run(z.to_device(&dev).unwrap());
        close("loss", &lg, &lc, 1e-5);
        close("dlogits", &gg, &gc, 1e-5);
    }
}

/// The one-launch SGD update against the CPU's, bit for bit (both round each operation in f32,
/// in the same order), for the recipe's settings and the others the CLI can ask for: plain
/// momentum (`--no-nesterov`), dampening, no momentum, no weight decay.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sgd_update_matches_the_cpu_exactly() {
    let dev = gpu();
    let configs = [
        Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 5e-4, nesterov: true },
        Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 5e-4, nesterov: false },
        Sgd { lr: 0.2, momentum: 0.8, dampening: 0.3, weight_decay: 1e-2, nesterov: false },
        Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, weight_decay: 5e-4, nesterov: false },
        Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: true },
    ];
    for (k, cfg) in configs.into_iter().enumerate() {
        // The network's largest tensor, a small one, and enough others (34 in all) that the
        // update needs two launches of the 32-tensor kernel. (Empty tensors, which own no block
        // of a launch, are covered by the kernel emulation and `ops::sgd`'s unit test.)
        let seed = 100 * k as u64;
        let mut cpu = vec![rand(&[512, 256, 3, 3], seed + 4), rand(&[10], seed + 5)];
        cpu.extend((0..32).map(|i| rand(&[1 + 37 * i], seed + 50 + i as u64)));
        let mut gpu_params: Vec<Tensor> = cpu.iter().map(|p| p.to_device(&dev).unwrap()).collect();
        let (mut sc, mut sg) = (SgdState::default(), SgdState::default());
        for step in 0..3 {
            let grads: Vec<Option<Tensor>> = cpu.iter().enumerate().map(|(i, p)| Some(rand(p.shape(), seed + 10 + step * 2 + i as u64))).collect();
            let dgrads: Vec<Option<Tensor>> = grads.iter().map(|g| Some(g.as_ref().unwrap().to_device(&dev).unwrap())).collect();
            ops::sgd::step(&mut cpu, &grads, &mut sc, &cfg).unwrap();
            ops::sgd::step(&mut gpu_params, &dgrads, &mut sg, &cfg).unwrap();
        }
        for (g, c) in gpu_params.iter().zip(&cpu) {
            close(&format!("parameter after 3 SGD steps, {cfg:?}"), g, c, 0.0);
        }
    }
}

/// The moving average's update (`ops::ema`), three rounded f32 operations per element on both
/// sides, must match bit for bit; in f64 too (the kernel's `_f64` twin). Five updates with new
/// weights each time, at the network's largest tensor's shape.
#[test]
#[ignore = "needs a CUDA GPU"]
fn ema_update_matches_the_cpu_exactly() {
    let dev = gpu();
    for dtype in [DType::F32, DType::F64] {
        let mut cpu = rand(&[512, 256, 3, 3], 60).to_dtype(dtype);
        let mut gpu_avg = cpu.to_device(&dev).unwrap();
        for k in 0..5 {
            let x = rand(&[512, 256, 3, 3], 61 + k).to_dtype(dtype);
            ops::ema::update(&mut cpu, &x, 0.99f64.powi(5)).unwrap();
            ops::ema::update(&mut gpu_avg, &x.to_device(&dev).unwrap(), 0.99f64.powi(5)).unwrap();
        }
        assert!(gpu_avg.device().is_cuda(), "the average left the GPU");
        let (g, c) = (gpu_avg.to_device(&Device::Cpu).unwrap(), cpu);
        assert_eq!(g.to_f64_vec(), c.to_f64_vec(), "{dtype:?}: the GPU's average differs from the CPU's");
    }
}

/// The update reading convolution weights' gradients as their bf16 channels-last compute
/// copies' (the training step's fast path) against the same update given those gradients
/// turned into the weights' f32 NCHW order first (`weight_copy::grads_to_master`): the same
/// bits, for the network's weight shapes (3 input channels included) beside f32 gradients.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sgd_reads_the_copies_gradients_as_the_converted_ones() {
    use engine::Layout;
    let dev = gpu();
    let cfg = Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 5e-4, nesterov: true };
    let shapes: [&[usize]; 5] = [&[64, 3, 3, 3], &[128, 64, 3, 3], &[64], &[512, 512, 3, 3], &[10]];
    let init: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| rand(s, 1500 + i as u64).to_device(&dev).unwrap()).collect();
    let (mut direct, mut converted) = (init.iter().map(|t| t.try_clone().unwrap()).collect::<Vec<_>>(), init);
    let (mut sd, mut sc) = (SgdState::default(), SgdState::default());
    for step in 0..3u64 {
        let mut as_copies = Vec::new();
        let mut as_master = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            let g = rand(s, 1550 + 10 * step + i as u64).to_device(&dev).unwrap();
            if s.len() == 4 {
                let copy_grad = ops::cast::forward(&ops::layout::forward(&g, Layout::Nhwc).unwrap(), DType::BF16).unwrap();
                as_master.push(Some(ops::weight_copy::grads_to_master(&[&copy_grad]).unwrap().remove(0)));
                as_copies.push(Some(copy_grad));
            } else {
                as_master.push(Some(g.try_clone().unwrap()));
                as_copies.push(Some(g));
            }
        }
        ops::sgd::step(&mut direct, &as_copies, &mut sd, &cfg).unwrap();
        ops::sgd::step(&mut converted, &as_master, &mut sc, &cfg).unwrap();
    }
    for (i, (a, b)) in direct.iter().zip(&converted).enumerate() {
        assert_eq!(a.to_f32_vec(), b.to_f32_vec(), "parameter {i} {:?}", shapes[i]);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn linear_forward_and_backward_match_the_cpu() {
    let dev = gpu();
    let (x, w, b, dy) = (rand(&[512, 512], 20), rand(&[10, 512], 21), rand(&[10], 22), rand(&[512, 10], 23));
    let g = |t: &Tensor| t.to_device(&dev).unwrap();
    // 512-term f32 dot products in another order (cuBLAS tiles): 1e-5 relative to the largest value.
    close("linear forward", &ops::linear::forward(&g(&x), &g(&w), &g(&b)).unwrap(), &ops::linear::forward(&x, &w, &b).unwrap(), 1e-5);
    let (dxg, dwg, dbg) = ops::linear::backward(&g(&x), &g(&w), &g(&b), &g(&dy)).unwrap();
    let (dx, dw, db) = ops::linear::backward(&x, &w, &b, &dy).unwrap();
    close("linear dx", &dxg, &dx, 1e-5);
    close("linear dw", &dwg, &dw, 1e-5);
    close("linear db", &dbg, &db, 1e-5);
}

/// The device behind a `Device::Cuda`.
fn cuda_dev(dev: &Device) -> std::sync::Arc<engine::cuda::CudaDevice> {
    match dev {
        Device::Cuda(d) => d.clone(),
        Device::Cpu => unreachable!(),
    }
}

/// Convolution forward, backward-data and backward-filter against the CPU at the ResNet's
/// shapes (prep layer, a 3x3 layer, the 512-channel layer), with TF32 off and on.
///
/// Tolerances, relative to the largest value: FMA math 2e-4 (f32 sums of up to 4608 terms
/// in another order, and Winograd/FFT algorithms whose transforms add a few ulp per term);
/// TF32 5e-3 (inputs rounded to 10-bit mantissas, relative error about 2^-10 per product).
#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_forward_and_backward_match_the_cpu() {
    use ops::conv2d::Conv2dParams;
    let dev = gpu();
    let d = cuda_dev(&dev);
    let p = Conv2dParams { stride: 1, padding: 1 };
    for (i, (xs, ws)) in [([16, 3, 32, 32], [64, 3, 3, 3]), ([16, 64, 32, 32], [128, 64, 3, 3]), ([8, 256, 8, 8], [512, 256, 3, 3])].iter().enumerate() {
        // The CPU reference once per shape (it is the slow part), then the GPU both ways.
        let seed = 100 + 10 * i as u64;
        let (x, w) = (rand(xs, seed), rand(ws, seed + 1));
        let y = ops::conv2d::forward(&x, &w, p).unwrap();
        let dy = rand(y.shape(), seed + 2);
        let (dx, dw) = ops::conv2d::backward(&x, &w, &dy, p, true).unwrap();
        let dx = dx.unwrap();
        let g = |t: &Tensor| t.to_device(&dev).unwrap();
        for (tf32, rtol) in [(false, 2e-4), (true, 5e-3)] {
            d.set_allow_tf32(tf32);
            let what = format!("conv {xs:?} * {ws:?}, tf32 {tf32}");
            close(&format!("{what}: y"), &ops::conv2d::forward(&g(&x), &g(&w), p).unwrap(), &y, rtol);
            let (dxg, dwg) = ops::conv2d::backward(&g(&x), &g(&w), &g(&dy), p, true).unwrap();
            close(&format!("{what}: dx"), &dxg.unwrap(), &dx, rtol);
            close(&format!("{what}: dw"), &dwg, &dw, rtol);
        }
    }
    d.set_allow_tf32(true);
    // Algorithms are chosen once per shape: running a planned shape again adds no plan.
    let plans = d.conv_plan_count();
    let (x, w) = (rand(&[16, 64, 32, 32], 110).to_device(&dev).unwrap(), rand(&[128, 64, 3, 3], 111).to_device(&dev).unwrap());
    ops::conv2d::forward(&x, &w, p).unwrap();
    assert_eq!(d.conv_plan_count(), plans, "a second call with the same shape re-planned");
}

/// Convolutions planned by our timed search (`--cudnn-search timed`: cuDNN's first heuristic
/// candidates, timed by us) compute what the CPU does, in f32 (FMA math: TF32 off) and bf16
/// channels-last, at shapes no other test plans (so they are searched here). Tolerances: f32 as in `conv2d_forward_and_backward_match_the_cpu`; bf16 inputs
/// are rounded to 8 bits before both sides see them, the outputs are bf16 (2^-8 relative)
/// after f32 sums: 1e-2.
#[test]
#[ignore = "needs a CUDA GPU"]
fn timed_search_plans_convolutions_that_match_the_cpu() {
    use engine::Layout;
    use ops::conv2d::Conv2dParams;
    let dev = gpu();
    let d = cuda_dev(&dev);
    let p = Conv2dParams { stride: 1, padding: 1 };
    let before = d.conv_search();
    d.set_conv_search(engine::cuda::ConvSearch::Timed);
    for (dt, layout, rtol, xs, ws) in [
        (DType::F32, Layout::Nchw, 2e-4, [6usize, 24, 12, 12], [40usize, 24, 3, 3]),
        (DType::BF16, Layout::Nhwc, 1e-2, [6, 32, 12, 12], [48, 32, 3, 3]),
    ] {
        d.set_allow_tf32(false);
        let what = format!("timed search: conv {xs:?} * {ws:?} {dt:?} {layout:?}");
        // The values each side sees: rounded to dt.
        let (x, w) = (rand(&xs, 700).to_dtype(dt).to_dtype(DType::F32), rand(&ws, 701).to_dtype(dt).to_dtype(DType::F32));
        let y = ops::conv2d::forward(&x, &w, p).unwrap();
        let dy = rand(y.shape(), 702).to_dtype(dt).to_dtype(DType::F32);
        let (dx, dw) = ops::conv2d::backward(&x, &w, &dy, p, true).unwrap();
        let g = |t: &Tensor| ops::layout::forward(&ops::cast::forward(&t.to_device(&dev).unwrap(), dt).unwrap(), layout).unwrap();
        let back = |t: &Tensor| ops::cast::forward(&ops::layout::forward(t, Layout::Nchw).unwrap(), DType::F32).unwrap();
        let plans = d.conv_plan_count();
        close(&format!("{what}: y"), &back(&ops::conv2d::forward(&g(&x), &g(&w), p).unwrap()), &y, rtol);
        // (Two if cuDNN refused the layout and the NCHW route planned its own shape.)
        assert!(d.conv_plan_count() > plans, "{what}: searched here");
        let (dxg, dwg) = ops::conv2d::backward(&g(&x), &g(&w), &g(&dy), p, true).unwrap();
        close(&format!("{what}: dx"), &back(&dxg.unwrap()), dx.as_ref().unwrap(), rtol);
        close(&format!("{what}: dw"), &back(&dwg), &dw, rtol);
    }
    d.set_conv_search(before);
    d.set_allow_tf32(true);
    for line in d.conv_plan_lines() {
        eprintln!("convolution plan: {line}");
    }
}

/// With the default rule (cuDNN's heuristic ranking), a convolution that differs from a planned
/// one only in its batch size (an epoch's last batch: 336 of 50,000 images) takes that plan's
/// algorithms with its own workspace sizes (`ops::conv2d_plan::reuse_at_this_batch`), and
/// computes what the CPU does: bf16 channels-last, the network's 64 -> 64 channels, batch 16
/// then 5. Tolerance as in `timed_search_plans_convolutions_that_match_the_cpu`: 1e-2.
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_plan_reused_at_another_batch_matches_the_cpu() {
    use engine::Layout;
    use ops::conv2d::Conv2dParams;
    let dev = gpu();
    let d = cuda_dev(&dev);
    assert_eq!(d.conv_search(), engine::cuda::ConvSearch::Heuristic);
    let p = Conv2dParams { stride: 1, padding: 1 };
    let (dt, layout) = (DType::BF16, Layout::Nhwc);
    let w = rand(&[64, 64, 3, 3], 740).to_dtype(dt).to_dtype(DType::F32);
    for (n, seed) in [(16usize, 741u64), (5, 743)] {
        let what = format!("batch {n}");
        let x = rand(&[n, 64, 16, 16], seed).to_dtype(dt).to_dtype(DType::F32);
        let y = ops::conv2d::forward(&x, &w, p).unwrap();
        let dy = rand(y.shape(), seed + 1).to_dtype(dt).to_dtype(DType::F32);
        let (dx, dw) = ops::conv2d::backward(&x, &w, &dy, p, true).unwrap();
        let g = |t: &Tensor| ops::layout::forward(&ops::cast::forward(&t.to_device(&dev).unwrap(), dt).unwrap(), layout).unwrap();
        let back = |t: &Tensor| ops::cast::forward(&ops::layout::forward(t, Layout::Nchw).unwrap(), DType::F32).unwrap();
        close(&format!("{what}: y"), &back(&ops::conv2d::forward(&g(&x), &g(&w), p).unwrap()), &y, 1e-2);
        let (dxg, dwg) = ops::conv2d::backward(&g(&x), &g(&w), &g(&dy), p, true).unwrap();
        close(&format!("{what}: dx"), &back(&dxg.unwrap()), dx.as_ref().unwrap(), 1e-2);
        close(&format!("{what}: dw"), &back(&dwg), &dw, 1e-2);
    }
    let lines = d.conv_plan_lines();
    for line in &lines {
        eprintln!("convolution plan: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("x [5, 64, 16, 16]") && l.contains("(searched at batch 16)")),
        "the batch-5 shape did not reuse the batch-16 plan: {lines:?}"
    );
}

/// Convolutions through cuDNN's backend (graph) API (`--cudnn-graph`) compute what the CPU
/// does, in f32 (FMA math: TF32 off, so tensor-core engines are refused), f64 and bf16
/// channels-last (the network's fast path), at shapes no other test plans, and every
/// direction ran on a graph plan, not the legacy fallback (a refusal fails the test with
/// cuDNN's reasons); with cuDNN's ranking first (the default) and with the timed search
/// (`--cudnn-search timed`: the fastest of its first candidates), whose plans say what they
/// were chosen from, and which a shape at another batch size reuses instead of a search. Tolerances as in `timed_search_plans_convolutions_that_match_the_cpu`;
/// f64 1e-9.
#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_api_convolutions_match_the_cpu() {
    use engine::Layout;
    use engine::cuda::ConvSearch;
    use ops::conv2d::Conv2dParams;
    let p = Conv2dParams { stride: 1, padding: 1 };
    for search in [ConvSearch::Heuristic, ConvSearch::Timed] {
        // A device of its own for each search (`Device::cuda` opens a new one per call), so
        // that every shape is planned anew.
        let dev = gpu();
        let d = cuda_dev(&dev);
        d.set_conv_graph(true);
        d.set_conv_search(search);
        // Every convolution here through cuDNN, the 3-channel one too (not our direct kernels).
        d.set_first_conv(engine::cuda::FirstConv::Cudnn);
        for (dt, layout, rtol, xs, ws) in [
            (DType::F32, Layout::Nchw, 2e-4, [5usize, 20, 11, 11], [36usize, 20, 3, 3]),
            (DType::F64, Layout::Nchw, 1e-9, [3, 8, 9, 9], [12, 8, 3, 3]),
            (DType::BF16, Layout::Nhwc, 1e-2, [6, 40, 12, 12], [56, 40, 3, 3]),
            // The same at another batch size (an epoch's last batch): timed, it takes the
            // engines timed at batch 6.
            (DType::BF16, Layout::Nhwc, 1e-2, [4, 40, 12, 12], [56, 40, 3, 3]),
            // The first convolution's shape: 3 input channels, channels-last.
            (DType::BF16, Layout::Nhwc, 1e-2, [7, 3, 16, 16], [64, 3, 3, 3]),
        ] {
            d.set_allow_tf32(false);
            let what = format!("graph API, {search:?}: conv {xs:?} * {ws:?} {dt:?} {layout:?}");
            let (x, w) = (rand(&xs, 710).to_dtype(dt).to_dtype(DType::F32), rand(&ws, 711).to_dtype(dt).to_dtype(DType::F32));
            let (x, w) = if dt == DType::F64 { (x.to_dtype(DType::F64), w.to_dtype(DType::F64)) } else { (x, w) };
            let y = ops::conv2d::forward(&x, &w, p).unwrap();
            let dy = rand(y.shape(), 712).to_dtype(dt).to_dtype(y.dtype());
            let (dx, dw) = ops::conv2d::backward(&x, &w, &dy, p, true).unwrap();
            let g = |t: &Tensor| ops::layout::forward(&ops::cast::forward(&t.to_device(&dev).unwrap(), dt).unwrap(), layout).unwrap();
            let back = |t: &Tensor| ops::cast::forward(&ops::layout::forward(t, Layout::Nchw).unwrap(), y.dtype()).unwrap();
            let before = d.graph_plan_lines().len();
            close(&format!("{what}: y"), &back(&ops::conv2d::forward(&g(&x), &g(&w), p).unwrap()), &y, rtol);
            let (dxg, dwg) = ops::conv2d::backward(&g(&x), &g(&w), &g(&dy), p, true).unwrap();
            close(&format!("{what}: dx"), &back(&dxg.unwrap()), dx.as_ref().unwrap(), rtol);
            close(&format!("{what}: dw"), &back(&dwg), &dw, rtol);
            assert_eq!(d.graph_plan_lines().len(), before + 3, "{what}: three graph plans; refusals: {:?}", d.graph_refusals());
        }
        let lines = d.graph_plan_lines();
        for line in &lines {
            eprintln!("convolution plan (graph API, {search:?}): {line}");
        }
        let searched = lines.iter().filter(|l| l.contains("the fastest of")).count();
        let reused = lines.iter().filter(|l| l.contains("the engine timed at batch 6")).count();
        if search == ConvSearch::Timed {
            // Every plan timed or reused; batch 4 reuses batch 6's engines, each direction
            // unless cuDNN does not offer that engine, usable, at batch 4 (then it has a timed
            // search of its own: by design, not a fault, and named here).
            assert_eq!(searched + reused, lines.len(), "{search:?}: plans neither timed nor reused: {lines:?}");
            assert!(reused >= 1, "{search:?}: no plan at batch 4 reused batch 6's engine: {lines:?}");
            for l in lines.iter().filter(|l| l.contains("[4, 40, 12, 12]") && l.contains("the fastest of")) {
                eprintln!("at batch 4, searched instead of reused: {l}");
            }
        } else {
            assert_eq!((searched, reused), (0, 0), "{search:?}: no plan chosen by timing: {lines:?}");
        }
    }
}

/// Convolution backward-data added into a gradient so far (`ops::conv2d::DataGrad::Into`,
/// the join of a residual block's gradients) against a new dx then a separate add, on the
/// GPU: cuDNN adds with β = 1 (the legacy API's argument, or a graph plan of its own,
/// `BackwardDataAdd`), which rounds the sum once where the separate add rounds dx and then
/// the sum: f32 within 1e-6 of the largest value, bf16 within 2^-7 (one bf16 rounding more
/// or less, 2^-8 relative, of values up to the largest). dW is the same either way.
#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_backward_adds_into_the_gradient_so_far() {
    use engine::Layout;
    use ops::conv2d::{Conv2dParams, DataGrad};
    let dev = gpu();
    let d = cuda_dev(&dev);
    let p = Conv2dParams { stride: 1, padding: 1 };
    for graph in [false, true] {
        d.set_conv_graph(graph);
        for (dt, layout, rtol, xs, ws) in [
            (DType::F32, Layout::Nchw, 1e-6, [8usize, 32, 12, 12], [48usize, 32, 3, 3]),
            (DType::BF16, Layout::Nhwc, 1.0 / 128.0, [16, 128, 16, 16], [128, 128, 3, 3]),
            (DType::BF16, Layout::Nhwc, 1.0 / 128.0, [16, 512, 4, 4], [512, 512, 3, 3]),
        ] {
            let what = format!("graph API {graph}: conv {xs:?} * {ws:?} {dt:?} {layout:?}");
            let g = |t: &Tensor| ops::layout::forward(&ops::cast::forward(&t.to_device(&dev).unwrap(), dt).unwrap(), layout).unwrap();
            let (x, w) = (g(&rand(&xs, 730)), g(&rand(&ws, 731)));
            let dy = g(&rand(&[xs[0], ws[0], xs[2], xs[3]], 732));
            let so_far = g(&rand(&xs, 733));
            // Graph plans with β = 1 made so far: this shape must add one of its own (the
            // device's list spans every shape).
            let adds_before = d.graph_plan_lines().iter().filter(|l| l.contains("BackwardDataAdd")).count();
            let (dx, dw) = ops::conv2d::backward(&x, &w, &dy, p, true).unwrap();
            let mut separate = so_far.try_clone().unwrap();
            separate.add_assign(dx.as_ref().unwrap()).unwrap();
            let (added, dw2) = ops::conv2d::backward_adding(&x, &w, &dy, p, DataGrad::Into(so_far)).unwrap();
            let added = added.unwrap();
            assert_eq!((added.shape(), added.dtype(), added.layout()), (separate.shape(), dt, layout), "{what}");
            let f32v = |t: &Tensor| ops::cast::forward(&ops::layout::forward(t, Layout::Nchw).unwrap(), DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
            let (a, s) = (f32v(&added), f32v(&separate));
            let scale = s.to_f64_vec().iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = a.max_abs_diff(&s).unwrap();
            eprintln!("{what}: max abs difference {err:.3e}, relative {:.3e}", err / scale);
            assert!(err <= rtol * scale, "{what}: max abs difference {err:e}, largest value {scale:e}");
            assert_eq!(f32v(&dw).to_f32_vec(), f32v(&dw2).to_f32_vec(), "{what}: dW");
            // The legacy API added with its β (a refusal would fall back to a separate add:
            // correct, but not what this path is for); so did a graph plan of its own.
            assert_eq!(d.add_into_refusal(), None, "{what}: cuDNN refused beta = 1");
            if graph {
                let adds = d.graph_plan_lines().iter().filter(|l| l.contains("BackwardDataAdd")).count();
                assert!(adds > adds_before, "{what}: no graph plan with beta = 1 for this shape; refusals: {:?}", d.graph_refusals());
            }
        }
    }
    for line in d.graph_plan_lines().iter().filter(|l| l.contains("BackwardDataAdd")) {
        eprintln!("convolution plan (graph API): {line}");
    }
    d.set_conv_graph(false);
}

/// Batch norm in training mode (output, saved statistics through the backward, running
/// statistics), in eval mode, and backward, against the CPU reference.
///
/// Tolerance 1e-4 relative to the largest value: the CPU sums the statistics in f64, cuDNN
/// in f32 over M = N·H·W = 512 or 32,768 values in another order; the normalised output and
/// the gradients inherit a few ulp of that error times |x̂| ≤ ~5.
#[test]
#[ignore = "needs a CUDA GPU"]
fn batch_norm_matches_the_cpu() {
    use ops::batch_norm::{BatchNormConfig, RunningStats};
    let dev = gpu();
    let cfg = BatchNormConfig::default();
    for (i, shape) in [[32usize, 64, 32, 32], [32, 512, 4, 4]].iter().enumerate() {
        let seed = 200 + 10 * i as u64;
        let c = shape[1];
        // A non-zero mean and non-unit scale, as real activations have.
        let x = Tensor::new(shape, rand(shape, seed).to_f32_vec().iter().map(|v| 3.0 * v + 0.5).collect::<Vec<f32>>()).unwrap();
        let gamma = Tensor::uniform(&[c], DType::F32, 0.5, 1.5, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1));
        let beta = rand(&[c], seed + 2);
        let dy = rand(shape, seed + 3);
        let run = |on: &Device| {
            let params = vec![x.to_device(on).unwrap(), gamma.to_device(on).unwrap(), beta.to_device(on).unwrap()];
            let mut stats = RunningStats::new(c, DType::F32);
            stats.mean = stats.mean.to_device(on).unwrap();
            stats.var = stats.var.to_device(on).unwrap();
            let mut g = Graph::new(&params);
            let (xv, gv, bv) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap());
            let y = ops::batch_norm::batch_norm_train(&mut g, xv, gv, bv, &mut stats, cfg).unwrap();
            // Backward seeded with dy at y.
            let yval = g.value(y).clone();
            let grads = g.backward_with(y, dy.to_device(on).unwrap()).unwrap().into_param_grads(3).unwrap();
            let eval = {
                let mut g2 = Graph::new(&params);
                let (xv, gv, bv) = (g2.param(0).unwrap(), g2.param(1).unwrap(), g2.param(2).unwrap());
                let y = ops::batch_norm::batch_norm_eval(&mut g2, xv, gv, bv, &stats, cfg).unwrap();
                g2.value(y).clone()
            };
            (yval, grads, stats, eval)
        };
        let (yc, gc, sc, ec) = run(&Device::Cpu);
        let (yg, gg, sg, eg) = run(&dev);
        let what = format!("batch norm {shape:?}");
        close(&format!("{what}: y"), &yg, &yc, 1e-4);
        for (k, name) in ["dx", "dgamma", "dbeta"].iter().enumerate() {
            close(&format!("{what}: {name}"), gg[k].as_ref().unwrap(), gc[k].as_ref().unwrap(), 1e-4);
        }
        close(&format!("{what}: running mean"), &sg.mean, &sc.mean, 1e-4);
        close(&format!("{what}: running var (unbiased)"), &sg.var, &sc.var, 1e-4);
        assert_eq!(sg.num_batches_tracked, 1);
        close(&format!("{what}: eval-mode y"), &eg, &ec, 1e-4);
    }
}

/// Max-pooling forward (cuDNN's in NCHW, ours in NHWC where the channels allow) and backward
/// (`ptx/max_pool.cu`, and cuDNN's): selection and routing of values, exact, in f32 and bf16,
/// NCHW and NHWC, on the network's shapes and on one whose last rows and columns fill no
/// window. In NHWC the first three shapes take the vectorised kernels (the forward
/// `max_pool_forward_nhwc_vec*`, which also saves the window position of each maximum, and the
/// backward from those, `max_pool_backward_nhwc_idx*`), and `[3, 12, 8, 8]` takes them in f32
/// only (12 channels are 3 f32 groups of 4, and no whole bf16 group of 8; cuDNN's forward
/// there); the one-value backward from x runs on every shape.
/// Everything runs again with the 16-byte kernels forbidden (`--no-vector-kernels`). The CPU reference runs in f32 on the same values
/// (bf16 inputs widened exactly); bf16's 8 bits make ties common, and both sides give a tie
/// to the first maximum.
#[test]
#[ignore = "needs a CUDA GPU"]
fn max_pool_matches_the_cpu_exactly() {
    use engine::Layout;
    let dev = gpu();
    let d = cuda_dev(&dev);
    // With our 16-byte kernels (where they apply) and without (--no-vector-kernels).
    for vector in [true, false] {
        d.set_vector_kernels(vector);
        for (shape, k) in [([32usize, 128, 16, 16], 2), ([16, 512, 4, 4], 4), ([4, 8, 9, 11], 2), ([3, 12, 8, 8], 2)] {
            for dt in [DType::F32, DType::BF16] {
                // Values representable in dt, so that the f32 reference sees what the GPU sees.
                let x = rand(&shape, 300 + k as u64).to_dtype(dt).to_dtype(DType::F32);
                let (y, argmax) = ops::max_pool::forward(&x, k).unwrap();
                let dy = rand(y.shape(), 310 + k as u64).to_dtype(dt).to_dtype(DType::F32);
                let dx = ops::max_pool::backward(x.shape(), &argmax, &dy).unwrap();
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    let on_gpu = |t: &Tensor| ops::layout::forward(&ops::cast::forward(&t.to_device(&dev).unwrap(), dt).unwrap(), layout).unwrap();
                    let back = |t: &Tensor| ops::cast::forward(&ops::layout::forward(t, Layout::Nchw).unwrap(), DType::F32).unwrap();
                    let what = format!("max pool {shape:?} k={k} {dt:?} {layout:?} vector kernels {vector}");
                    let xg = on_gpu(&x);
                    let (yg, indices) = ops::max_pool::forward_cuda_indexed(&xg, k).unwrap();
                    assert_eq!((yg.dtype(), yg.layout()), (dt, layout), "{what}: y's type and layout");
                    close(&format!("{what}: y"), &back(&yg), &y, 0.0);
                    let lanes = if dt == DType::BF16 { 8 } else { 4 };
                    let fast = vector && layout == Layout::Nhwc && shape[1] % lanes == 0;
                    assert_eq!(indices.is_some(), fast, "{what}: window positions saved by the forward");
                    // The one-value backward from x, on every shape; the fast path's from the
                    // forward's window positions where it saved them.
                    let dxg = ops::max_pool::backward_cuda(&xg, &on_gpu(&dy), k).unwrap();
                    assert_eq!((dxg.dtype(), dxg.layout()), (dt, layout), "{what}: dx's type and layout");
                    close(&format!("{what}: dx"), &back(&dxg), &dx, 0.0);
                    if let Some(i) = &indices {
                        let dxi = ops::max_pool::backward_cuda_indices(i, &on_gpu(&dy)).unwrap();
                        assert_eq!((dxi.shape(), dxi.dtype(), dxi.layout()), (xg.shape(), dt, layout), "{what}: dx from indices");
                        close(&format!("{what}: dx from the saved window positions"), &back(&dxi), &dx, 0.0);
                        // dy in another layout (and, for bf16, type) than the forward's y is refused, not misread.
                        assert!(ops::max_pool::backward_cuda_indices(i, &dy.to_device(&dev).unwrap()).is_err(), "{what}");
                    }
                    // cuDNN's backward (not used in training) where its answer is defined like ours: f32
                    // (random normal values have no ties; which of tied bf16 values cuDNN picks is not
                    // documented) and windows covering x.
                    if dt == DType::F32 && shape[2] % k == 0 && shape[3] % k == 0 {
                        let dx_cudnn = ops::max_pool::backward_cudnn(&xg, &yg, &on_gpu(&dy), k).unwrap();
                        close(&format!("{what}: dx (cuDNN)"), &back(&dx_cudnn), &dx, 0.0);
                    }
                }
            }
        }
    }
    d.set_vector_kernels(true);
}

/// The augmentation and normalisation kernels against the CPU reference given the same
/// parameters: bit-identical (the kernel rounds every step like the CPU, see ptx/augment.cu),
/// on random records including every crop corner, both flips and cutouts at the borders.
#[test]
#[ignore = "needs a CUDA GPU"]
fn augmentation_kernel_matches_the_cpu_exactly() {
    use data::augment::{AugParams, augment_into, normalize_into};
    use rand::Rng;
    let dev = gpu();
    let d = cuda_dev(&dev);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(400);
    let records = 300usize;
    let mut bytes = vec![0u8; records * 3073];
    rng.fill(&mut bytes[..]);
    for r in 0..records {
        bytes[r * 3073] = (r % 10) as u8;
    }
    let n = 256usize;
    let idx: Vec<u32> = (0..n).map(|_| rng.random_range(0..records as u32)).collect();
    let mut params: Vec<AugParams> = (0..n).map(|_| AugParams::sample(&mut rng)).collect();
    // Make sure the extremes are there.
    for (i, p) in params.iter_mut().take(81).enumerate() {
        p.crop_x = (i % 9) as i32;
        p.crop_y = (i / 9) as i32;
        p.flip = (i % 2) as i32;
        p.cutout_x = [0, 31, 3, 28][i % 4];
        p.cutout_y = [31, 0, 28, 3][i % 4];
    }
    let (mean, std) = ([0.49f32, 0.48, 0.45], [0.25f32, 0.24, 0.26]);
    let mut want = vec![0f32; n * 3072];
    let mut want_eval = vec![0f32; n * 3072];
    for (i, (&r, p)) in idx.iter().zip(&params).enumerate() {
        let img = &bytes[r as usize * 3073 + 1..(r as usize + 1) * 3073];
        augment_into(img, p, mean, std, &mut want[i * 3072..(i + 1) * 3072]);
        normalize_into(img, mean, std, &mut want_eval[i * 3072..(i + 1) * 3072]);
    }
    let data_g = d.upload(&bytes).unwrap();
    let idx_g = d.upload(&idx).unwrap();
    let flat: Vec<i32> = bytemuck::cast_slice(&params).to_vec();
    let params_g = d.upload(&flat).unwrap();
    let mut labels_g = d.upload(&vec![99u32; n]).unwrap();
    let norm = ops::augment::Norm { mean, std };
    // SAFETY (every call below): idx holds records of `bytes`, params come from
    // AugParams::sample (crop corners 0..=8, flips 0 or 1).
    let x = unsafe { ops::augment::augment_batch(&d, &data_g, &idx_g.slice(..), &params_g.slice(..), &mut labels_g.slice_mut(..), norm) }.unwrap();
    assert_eq!(x.shape(), &[n, 3, 32, 32]);
    let got = x.to_f32_vec();
    let first_bad = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
    assert!(first_bad.is_none(), "augment differs at element {first_bad:?}: {} vs {}", got[first_bad.unwrap()], want[first_bad.unwrap()]);
    let want_labels: Vec<u32> = idx.iter().map(|&r| r % 10).collect();
    assert_eq!(d.download(&labels_g).unwrap(), want_labels);
    let xe = unsafe { ops::augment::normalize_batch(&d, &data_g, &idx_g.slice(..), &mut labels_g.slice_mut(..), norm, false) }.unwrap();
    assert_eq!(xe.to_f32_vec(), want_eval, "normalize_batch differs from the CPU");
    // Flipped (flip test-time augmentation): each row of 32 pixels reversed.
    let xf = unsafe { ops::augment::normalize_batch(&d, &data_g, &idx_g.slice(..), &mut labels_g.slice_mut(..), norm, true) }.unwrap();
    let mut want_flip = want_eval.clone();
    want_flip.chunks_exact_mut(32).for_each(<[f32]>::reverse);
    assert_eq!(xf.to_f32_vec(), want_flip, "flipped normalize_batch differs from the CPU");
    // A batch of 8 images from an offset: views into the epoch's arrays, as training uses them.
    let x8 = unsafe { ops::augment::augment_batch(&d, &data_g, &idx_g.slice(16..24), &params_g.slice(80..120), &mut labels_g.slice_mut(0..8), norm) }.unwrap();
    assert_eq!(x8.to_f32_vec(), want[16 * 3072..24 * 3072].to_vec());
}

/// The device-side meter records each batch's loss and correct count like the host
/// computes them (argmax with the first maximum on ties; ties are made on purpose).
#[test]
#[ignore = "needs a CUDA GPU"]
fn device_meter_matches_the_host_count() {
    let dev = gpu();
    let d = cuda_dev(&dev);
    let mut meter = ops::metrics::DeviceMeter::new(&d, 3).unwrap();
    let mut want = Vec::new();
    for b in 0..3 {
        let mut z = rand(&[500, 10], 500 + b as u64).to_f32_vec();
        for r in 0..50 {
            z[r * 10 + 3] = z[r * 10 + 7].max(z[r * 10 + 3]);
            z[r * 10 + 7] = z[r * 10 + 3];
        }
        let logits = Tensor::new(&[500, 10], z).unwrap();
        let labels: Vec<u32> = (0..500).map(|i| ((i * 7 + b) % 10) as u32).collect();
        let (c, _) = model::batches::count_correct(&logits, &labels);
        want.push(c as u32);
        let dl = ops::cross_entropy::DeviceLabels::new(std::sync::Arc::new(d.upload(&labels).unwrap()), 0, 500).unwrap();
        let loss = Tensor::new(&[1], vec![0.5f32 + b as f32]).unwrap().to_device(&dev).unwrap();
        meter.record(b, &loss, &logits.to_device(&dev).unwrap(), &dl).unwrap();
    }
    d.synchronize().unwrap();
    // After the work finished, a poll (which never waits) sees all three batches, then nothing new.
    let (pl, pc) = meter.poll().unwrap().expect("three finished batches");
    assert_eq!(pl, vec![0.5, 1.5, 2.5]);
    assert_eq!(pc, want);
    assert!(meter.poll().unwrap().is_none(), "nothing new since the last poll");
    let (losses, correct) = meter.read(3).unwrap();
    assert_eq!(losses, vec![0.5, 1.5, 2.5]);
    assert_eq!(correct, want);
    assert!(meter.record(3, &Tensor::new(&[1], vec![0f32]).unwrap(), &rand(&[1, 10], 1), &ops::cross_entropy::DeviceLabels::new(std::sync::Arc::new(d.upload(&[0u32]).unwrap()), 0, 1).unwrap()).is_err());
}

/// The bf16 kernels against the host: f32 -> bf16 rounds to nearest even like the `half`
/// crate (ties, NaN, infinities, subnormals included), widening is exact, and ReLU / add /
/// accumulate in bf16 equal "widen, one f32 operation, round" on the host: exact (add and
/// accumulate run their 8-per-thread kernels on these fresh, aligned buffers).
#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_kernels_match_the_host_exactly() {
    let dev = gpu();
    let mut vals = rand(&[4096], 600).to_f32_vec();
    // Exact ties between bf16 neighbours, specials and tiny values.
    vals.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1e-40, -1e-39, 3.0e38, f32::MAX]);
    let x = Tensor::new(&[vals.len()], vals.clone()).unwrap();
    let xb = ops::cast::forward(&x.to_device(&dev).unwrap(), DType::BF16).unwrap();
    assert_eq!(xb.dtype(), DType::BF16);
    let host_bits: Vec<u16> = vals.iter().map(|&v| engine::tensor::bf16_bits(v as f64)).collect();
    let dev_bits = match xb.to_device(&Device::Cpu).unwrap().storage() {
        engine::tensor::Storage::BF16(b) => b.clone(),
        other => panic!("expected bf16 on the host, got {other:?}"),
    };
    assert_eq!(dev_bits, host_bits, "f32 -> bf16 rounding");
    let nan = ops::cast::forward(&Tensor::new(&[1], vec![f32::NAN]).unwrap().to_device(&dev).unwrap(), DType::BF16).unwrap();
    assert!(nan.to_f32_vec()[0].is_nan(), "NaN stays NaN");
    let widened = ops::cast::forward(&xb, DType::F32).unwrap().to_f32_vec();
    let want: Vec<f32> = host_bits.iter().map(|&h| engine::tensor::bf16_to_f32(h)).collect();
    assert_eq!(widened, want, "bf16 -> f32 is exact");
    // ReLU, add and accumulate in bf16, with the 8-per-thread add and accumulate (these fresh
    // buffers are aligned) and without them (--no-vector-kernels).
    let d = cuda_dev(&dev);
    for vector in [true, false] {
        d.set_vector_kernels(vector);
        let a = ops::cast::forward(&rand(&[64, 32, 8, 8], 601).to_device(&dev).unwrap(), DType::BF16).unwrap();
        let b = ops::cast::forward(&rand(&[64, 32, 8, 8], 602).to_device(&dev).unwrap(), DType::BF16).unwrap();
        let (ah, bh) = (a.to_f32_vec(), b.to_f32_vec());
        let round = |v: f32| engine::tensor::bf16_to_f32(engine::tensor::bf16_bits(v as f64));
        let relu: Vec<f32> = ah.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect();
        let y = ops::relu::forward(&a).unwrap();
        assert_eq!(y.to_f32_vec(), relu);
        // Its backward from y, with b as the incoming gradient: dx = y > 0 ? dy : 0, exact.
        let dx: Vec<f32> = relu.iter().zip(&bh).map(|(&y, &g)| if y > 0.0 { g } else { 0.0 }).collect();
        let got = ops::relu::backward(&y, &b).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        assert_eq!(got.to_f32_vec(), dx, "relu backward in bf16");
        let sum: Vec<f32> = ah.iter().zip(&bh).map(|(&x, &y)| round(x + y)).collect();
        assert_eq!(ops::add::forward(&a, &b).unwrap().to_f32_vec(), sum);
        let mut acc = a.clone();
        acc.add_assign(&b).unwrap();
        assert_eq!(acc.to_f32_vec(), sum);
        // A length that is no multiple of 8: the 8-per-thread kernels' last 5 elements one by one.
        let (a, b) = (ops::cast::forward(&rand(&[4101], 603).to_device(&dev).unwrap(), DType::BF16).unwrap(), ops::cast::forward(&rand(&[4101], 604).to_device(&dev).unwrap(), DType::BF16).unwrap());
        let sum: Vec<f32> = a.to_f32_vec().iter().zip(b.to_f32_vec()).map(|(&x, y)| round(x + y)).collect();
        assert_eq!(ops::add::forward(&a, &b).unwrap().to_f32_vec(), sum, "add, 4101 elements");
        let mut acc = a.clone();
        acc.add_assign(&b).unwrap();
        assert_eq!(acc.to_f32_vec(), sum, "accumulate, 4101 elements");
    }
    d.set_vector_kernels(true);
}

/// The layout kernels move every element to its NHWC (or back to NCHW) place exactly, in
/// all three element sizes; and cuDNN's convolution, batch norm and pooling give the same
/// results on channels-last tensors as on NCHW ones (compared after converting back; the
/// tolerance of each op's NCHW test, since algorithms differ between layouts). cuDNN's batch
/// norm also backward, and in bf16 in both layouts (`--bf16` without the fused op) against f32
/// NCHW on the same bf16-rounded inputs: its y and dx are bf16 (one rounding, 2^-8 of a
/// value, with f32 arithmetic behind), dγ, dβ and the running statistics f32 sums of the same
/// values: 1e-2 for all (a wrong rule is off by far more).
#[test]
#[ignore = "needs a CUDA GPU"]
fn channels_last_conversions_and_ops_match_nchw() {
    use engine::Layout;
    use ops::layout::forward as to_layout;
    let dev = gpu();
    cuda_dev(&dev).set_allow_tf32(false);
    let x = rand(&[8, 24, 6, 5], 700);
    for dt in [DType::F32, DType::F64, DType::BF16] {
        let xd = x.to_dtype(dt);
        let want = to_layout(&xd, Layout::Nhwc).unwrap();
        let got = to_layout(&xd.to_device(&dev).unwrap(), Layout::Nhwc).unwrap();
        assert_eq!(got.layout(), Layout::Nhwc);
        assert_eq!(got.to_f64_vec(), want.to_f64_vec(), "NCHW -> NHWC in {dt:?}");
        let back = to_layout(&got, Layout::Nchw).unwrap();
        assert_eq!(back.to_f64_vec(), xd.to_f64_vec(), "NHWC -> NCHW in {dt:?}");
    }
    let g = |t: &Tensor| t.to_device(&dev).unwrap();
    let nhwc = |t: &Tensor| to_layout(&g(t), Layout::Nhwc).unwrap();
    let nchw = |t: &Tensor| to_layout(t, Layout::Nchw).unwrap();
    // Convolution.
    let p = ops::conv2d::Conv2dParams { stride: 1, padding: 1 };
    let (xc, w) = (rand(&[16, 64, 16, 16], 701), rand(&[128, 64, 3, 3], 702));
    let y = ops::conv2d::forward(&g(&xc), &g(&w), p).unwrap();
    let y_cl = ops::conv2d::forward(&nhwc(&xc), &nhwc(&w), p).unwrap();
    assert_eq!(y_cl.layout(), Layout::Nhwc);
    close("conv NHWC y", &nchw(&y_cl), &y.to_device(&Device::Cpu).unwrap(), 2e-4);
    let dy = rand(y.shape(), 703);
    let (dx, dw) = ops::conv2d::backward(&g(&xc), &g(&w), &g(&dy), p, true).unwrap();
    let (dx_cl, dw_cl) = ops::conv2d::backward(&nhwc(&xc), &nhwc(&w), &nhwc(&dy), p, true).unwrap();
    close("conv NHWC dx", &nchw(&dx_cl.unwrap()), &dx.unwrap().to_device(&Device::Cpu).unwrap(), 2e-4);
    close("conv NHWC dw", &nchw(&dw_cl), &dw.to_device(&Device::Cpu).unwrap(), 2e-4);
    // Max-pooling (exact) and batch norm in training mode.
    let (yp, _) = ops::max_pool::forward(&xc, 2).unwrap();
    close("max pool NHWC", &nchw(&ops::max_pool::forward_cuda(&nhwc(&xc), 2).unwrap()), &yp, 0.0);
    use ops::batch_norm::{BatchNormConfig, RunningStats};
    let (gamma, beta) = (rand(&[64], 704), rand(&[64], 705));
    let dyb = rand(&[16, 64, 16, 16], 706);
    // y, (dx, dγ, dβ) for dy, and the running statistics, of one training-mode batch norm.
    let bn = |x: Tensor, dy: Tensor| {
        let params = vec![x, g(&gamma), g(&beta)];
        let mut stats = RunningStats::new(64, DType::F32);
        stats.mean = g(&stats.mean);
        stats.var = g(&stats.var);
        let mut graph = Graph::new(&params);
        let (xv, gv, bv) = (graph.param(0).unwrap(), graph.param(1).unwrap(), graph.param(2).unwrap());
        let y = ops::batch_norm::batch_norm_train(&mut graph, xv, gv, bv, &mut stats, BatchNormConfig::default()).unwrap();
        let out = graph.value(y).clone();
        let grads: Vec<Tensor> = graph.backward_with(y, dy).unwrap().into_param_grads(3).unwrap().into_iter().map(Option::unwrap).collect();
        (out, grads, stats)
    };
    let host = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    let f32_nchw = |t: &Tensor| ops::cast::forward(&nchw(t), DType::F32).unwrap();
    let compare = |what: &str, (y, grads, stats): &(Tensor, Vec<Tensor>, RunningStats), want: &(Tensor, Vec<Tensor>, RunningStats), rtol: f64| {
        close(&format!("{what} y"), &f32_nchw(y), &host(&want.0), rtol);
        close(&format!("{what} dx"), &f32_nchw(&grads[0]), &host(&want.1[0]), rtol);
        close(&format!("{what} dgamma"), &grads[1], &host(&want.1[1]), rtol);
        close(&format!("{what} dbeta"), &grads[2], &host(&want.1[2]), rtol);
        close(&format!("{what} running mean"), &stats.mean, &host(&want.2.mean), rtol);
        close(&format!("{what} running var"), &stats.var, &host(&want.2.var), rtol);
    };
    let reference = bn(g(&xc), g(&dyb));
    compare("batch norm NHWC", &bn(nhwc(&xc), nhwc(&dyb)), &reference, 1e-4);
    // bf16 channels-last against f32 NCHW, both on the same bf16-rounded inputs.
    let round = |t: &Tensor| t.to_dtype(DType::BF16).to_dtype(DType::F32);
    let bf16_nhwc = |t: &Tensor| ops::cast::forward(&nhwc(&round(t)), DType::BF16).unwrap();
    let bf16_nchw = |t: &Tensor| ops::cast::forward(&g(&round(t)), DType::BF16).unwrap();
    let reference = bn(g(&round(&xc)), g(&round(&dyb)));
    compare("batch norm bf16 NHWC", &bn(bf16_nhwc(&xc), bf16_nhwc(&dyb)), &reference, 1e-2);
    compare("batch norm bf16 NCHW", &bn(bf16_nchw(&xc), bf16_nchw(&dyb)), &reference, 1e-2);
    cuda_dev(&dev).set_allow_tf32(true);
}

/// The prep layer's convolution (3 input channels) in channels-last bf16 and f32 against
/// the same convolution in NCHW, whichever way cuDNN serves it: with its own NHWC kernel,
/// or, if it refuses the shape, through our NCHW route. That route itself is compared with
/// cuDNN's NHWC kernels on a shape cuDNN runs (64 -> 128 channels). Tolerances, relative
/// to the largest value: f32 2e-4 (as `channels_last_conversions_and_ops_match_nchw`, TF32
/// off); both sides' bf16 outputs are f32 sums in different orders rounded to 8 significant
/// bits, so they may differ by one bf16 step, 2^-7 = 7.8e-3 of the value: 1e-2.
/// (cuDNN runs the 3-channel bf16 forward here: the device is set to `FirstConv::Cudnn`, since
/// by default our kernels take it, which `first_conv_direct_kernels_match_the_cpu_and_cudnn`
/// tests.)
#[test]
#[ignore = "needs a CUDA GPU"]
fn channels_last_prep_conv_matches_nchw_in_bf16_and_f32() {
    use engine::Layout;
    use ops::layout::forward as to_layout;
    let dev = gpu();
    let cd = cuda_dev(&dev);
    cd.set_allow_tf32(false);
    cd.set_first_conv(engine::cuda::FirstConv::Cudnn);
    let p = ops::conv2d::Conv2dParams { stride: 1, padding: 1 };
    // GPU tensors, in NCHW f64 on the host, compared relative to the reference's largest value.
    let close = |what: &str, got: &Tensor, want: &Tensor, rtol: f64| {
        close_nchw(what, got, want, rtol);
    };
    for (dt, tol) in [(DType::BF16, 1e-2), (DType::F32, 2e-4)] {
        let on = |t: &Tensor, layout: Layout| to_layout(&t.to_dtype(dt).to_device(&dev).unwrap(), layout).unwrap();
        for (xs, ws, seed) in [([32, 3, 32, 32], [64, 3, 3, 3], 900), ([16, 64, 16, 16], [128, 64, 3, 3], 910)] {
            let (x, w) = (rand(&xs, seed), rand(&ws, seed + 1));
            let dy = rand(&[xs[0], ws[0], xs[2], xs[3]], seed + 2);
            let y = ops::conv2d::forward(&on(&x, Layout::Nchw), &on(&w, Layout::Nchw), p).unwrap();
            let (dx, dw) = ops::conv2d::backward(&on(&x, Layout::Nchw), &on(&w, Layout::Nchw), &on(&dy, Layout::Nchw), p, true).unwrap();
            let (xc, wc, dyc) = (on(&x, Layout::Nhwc), on(&w, Layout::Nhwc), on(&dy, Layout::Nhwc));
            let y_cl = ops::conv2d::forward(&xc, &wc, p).unwrap();
            let (dx_cl, dw_cl) = ops::conv2d::backward(&xc, &wc, &dyc, p, true).unwrap();
            assert_eq!((y_cl.layout(), dw_cl.layout()), (Layout::Nhwc, Layout::Nhwc));
            assert_eq!(y_cl.dtype(), dt);
            let what = format!("{dt:?} x {xs:?}");
            close(&format!("{what}: NHWC y"), &y_cl, &y, tol);
            close(&format!("{what}: NHWC dx"), &dx_cl.unwrap(), dx.as_ref().unwrap(), tol);
            close(&format!("{what}: NHWC dw"), &dw_cl, &dw, tol);
            let (y_r, dx_r, dw_r) = ops::conv2d::via_nchw_for_tests(&xc, &wc, &dyc, p).unwrap();
            assert_eq!(y_r.layout(), Layout::Nhwc);
            close(&format!("{what}: NCHW route y"), &y_r, &y, tol);
            close(&format!("{what}: NCHW route dx"), &dx_r.unwrap(), dx.as_ref().unwrap(), tol);
            close(&format!("{what}: NCHW route dw"), &dw_r, &dw, tol);
        }
    }
    // Which shapes cuDNN refused (and so ran through the NCHW route), for the record.
    let refused = cd.conv_refusals();
    eprintln!("cuDNN refused {} convolution shape(s){}", refused.len(), if refused.is_empty() { String::new() } else { format!(":\n  {}", refused.join("\n  ")) });
    cd.set_allow_tf32(true);
    cd.set_first_conv(engine::cuda::FirstConv::DEFAULT);
}

/// The 3-channel first convolution on our direct kernels (`ops::conv2d_c3`: bf16
/// channels-last, 3×3, stride 1, padding 1; the input's gradient skipped, as the network's
/// first convolution does) against the CPU reference in f64 on the same bf16 inputs, and
/// against cuDNN (`set_first_conv(FirstConv::Cudnn)`), and cuDNN's graph API for it alone
/// (`FirstConv::CudnnGraph`, its plans chosen by timing) against the CPU, at the network's 64
/// output channels and at 16 (width 0.25). Tolerance, relative to the largest value: each
/// side's outputs are f32 sums rounded to bf16 once, so they may be one bf16 step (2^-7 =
/// 7.8e-3 of a value) apart: 1e-2.
/// Our kernels sum in a fixed order: two runs give the same bits.
#[test]
#[ignore = "needs a CUDA GPU"]
fn first_conv_direct_kernels_match_the_cpu_and_cudnn() {
    use engine::Layout;
    use engine::cuda::FirstConv;
    use ops::conv2d::{Conv2dParams, DataGrad};
    use ops::layout::forward as to_layout;
    let dev = gpu();
    let cd = cuda_dev(&dev);
    let p = Conv2dParams { stride: 1, padding: 1 };
    let close = |what: &str, got: &Tensor, want: &Tensor| {
        let rel = close_nchw(what, got, want, 1e-2);
        eprintln!("{what}: largest difference {rel:e} of the largest value");
    };
    for (xs, o, seed) in [([64usize, 3, 32, 32], 64usize, 1500u64), ([7, 3, 9, 13], 16, 1510)] {
        let bf = |t: Tensor| t.to_dtype(DType::BF16);
        let (x, w, dy) = (bf(rand(&xs, seed)), bf(rand(&[o, 3, 3, 3], seed + 1)), bf(rand(&[xs[0], o, xs[2], xs[3]], seed + 2)));
        // The CPU reference on the same (bf16) values, in f64.
        let f64_of = |t: &Tensor| t.to_dtype(DType::F64);
        let y_cpu = ops::conv2d::forward(&f64_of(&x), &f64_of(&w), p).unwrap();
        let (_, dw_cpu) = ops::conv2d::backward(&f64_of(&x), &f64_of(&w), &f64_of(&dy), p, false).unwrap();
        let on = |t: &Tensor| to_layout(&t.to_device(&dev).unwrap(), Layout::Nhwc).unwrap();
        let (xg, wg, dyg) = (on(&x), on(&w), on(&dy));
        // Each run's launches, by the kernel trace (our kernels' names, "cuDNN ..." for cuDNN's
        // calls): a test of our kernels must not pass on cuDNN's results.
        let launched = std::cell::RefCell::new(Vec::<String>::new());
        let run = |at: FirstConv| {
            cd.set_first_conv(at);
            cd.start_kernel_trace().unwrap();
            let y = ops::conv2d::forward(&xg, &wg, p).unwrap();
            let (dx, dw) = ops::conv2d::backward_adding(&xg, &wg, &dyg, p, DataGrad::Skip).unwrap();
            *launched.borrow_mut() = cd.take_kernel_trace().unwrap().into_iter().map(|(name, _)| name).collect();
            cd.stop_kernel_trace();
            assert!(dx.is_none());
            assert_eq!((y.dtype(), y.layout(), dw.dtype(), dw.layout()), (DType::BF16, Layout::Nhwc, DType::BF16, Layout::Nhwc));
            (y, dw)
        };
        let ran = |name: &str| launched.borrow().iter().any(|l| l == name);
        let ran_cudnn = || launched.borrow().iter().any(|l| l.starts_with("cuDNN"));
        let (y, dw) = run(FirstConv::Direct);
        let what = format!("x {xs:?}, {o} outputs");
        assert!(
            ran("conv3x3_c3_forward_bf16") && ran("conv3x3_c3_wgrad_partial_bf16") && !ran_cudnn(),
            "{what}: our kernels did not run both passes: {:?}",
            launched.borrow()
        );
        close(&format!("{what}: our y against the CPU"), &y, &y_cpu);
        close(&format!("{what}: our dw against the CPU"), &dw, &dw_cpu);
        let (y2, dw2) = run(FirstConv::Direct);
        let bits = |t: &Tensor| t.cuda_buffer().unwrap().to_host_bf16_bits().unwrap();
        assert!(bits(&y2) == bits(&y) && bits(&dw2) == bits(&dw), "{what}: two runs of our kernels differ");
        let (y_cudnn, dw_cudnn) = run(FirstConv::Cudnn);
        assert!(ran_cudnn() && !ran("conv3x3_c3_forward_bf16"), "{what}: cuDNN was asked for: {:?}", launched.borrow());
        close(&format!("{what}: our y against cuDNN's"), &y, &y_cudnn);
        close(&format!("{what}: our dw against cuDNN's"), &dw, &dw_cudnn);
        // `--first-conv cudnn-graph`: the graph API for this convolution alone (the device's
        // --cudnn-graph is off), one plan per pass.
        assert!(!cd.conv_graph());
        let plans = cd.graph_plan_lines().len();
        let (y_graph, dw_graph) = run(FirstConv::CudnnGraph);
        let lines = cd.graph_plan_lines();
        assert_eq!(lines.len(), plans + 2, "{what}: graph plans; refusals: {:?}", cd.graph_refusals());
        // Chosen by timing its candidates, even with the device's search at the heuristics.
        assert_eq!(cd.conv_search(), engine::cuda::ConvSearch::Heuristic);
        assert_eq!(lines.iter().filter(|l| l.contains("the fastest of")).count(), lines.len(), "{what}: {lines:?}");
        close(&format!("{what}: cuDNN graph API's y against the CPU"), &y_graph, &y_cpu);
        close(&format!("{what}: cuDNN graph API's dw against the CPU"), &dw_graph, &dw_cpu);
    }
    cd.set_first_conv(FirstConv::DEFAULT);
}

/// The fused batch norm + ReLU (our kernels) against the CPU reference (batch norm, then
/// ReLU), in NCHW and NHWC, with f32 and bf16 data, at shapes whose channels are reduced
/// in one and in several splits. The network's shapes take the vectorised elementwise
/// passes (`bnr_apply_vec*`) and, in NHWC, the vectorised reductions (`bnr_stats_nhwc_vec*`,
/// `bnr_bwd_sums_nhwc_vec*`); `[6, 12, 7, 5]` takes the scalar passes in NCHW (H·W = 35) and,
/// for bf16, in NHWC (12 channels are no multiple of 8; f32's width 4 divides them), and the
/// one-value NHWC reductions for both (3 f32 loads a row are not a power of two). Both
/// layouts run again with the 16-byte kernels forbidden (`--no-vector-kernels`).
///
/// The backward's reference takes the ReLU mask from the GPU's output: where z is within
/// rounding of 0 the two sides may disagree on the sign, which would move one element of
/// dx by a whole dy (and dγ, dβ by as much); with the same mask only the sums' order and
/// the element type differ. Tolerances, relative to the largest value: f32 1e-4 for y,
/// the running statistics and dx (as cuDNN's batch norm), 1e-4 for dγ and dβ (sums of up
/// to 20,480 terms in f32 in another order; the training's shape, 524,288 terms, runs in bf16
/// only); bf16 data: the CPU gets the same bf16 inputs
/// widened to f32, so y and dx differ by their bf16 rounding (2^-8 relative, 4e-3 of the
/// largest value) plus f32 summation: 1e-2; dγ and dβ are f32 sums: 1e-3. Evaluation mode
/// (`batch_norm_relu_eval`, with the running statistics the training step left) is checked
/// against batch norm's eval mode and ReLU with y's tolerance.
#[test]
#[ignore = "needs a CUDA GPU"]
fn batch_norm_relu_matches_the_cpu() {
    use engine::Layout;
    use ops::batch_norm::{BatchNormConfig, RunningStats};
    let dev = gpu();
    let d = cuda_dev(&dev);
    let cfg = BatchNormConfig::default();
    let host = |t: &Tensor| -> Tensor {
        let t = if t.shape().len() == 4 { ops::layout::forward(t, Layout::Nchw).unwrap() } else { t.clone() };
        let t = if t.dtype() == DType::F32 { t } else { ops::cast::forward(&t, DType::F32).unwrap() };
        t.to_device(&Device::Cpu).unwrap()
    };
    let check = |what: &str, got: &Tensor, want: &Tensor, rtol: f64| {
        let scale = want.to_f64_vec().iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
        let err = got.max_abs_diff(want).unwrap();
        eprintln!("{what}: max abs difference {err:.3e}, relative {:.3e}", err / scale);
        assert!(err <= rtol * scale, "{what}: max abs difference {err:e}, largest value {scale:e}");
    };
    // The last shape is the training's (layer1 at batch 512: M = 524,288 values per channel,
    // many more splits of the reductions than the others), on the training's path only.
    for (i, shape) in [[20usize, 64, 32, 32], [64, 128, 16, 16], [32, 512, 4, 4], [6, 12, 7, 5], [512, 64, 32, 32]].iter().enumerate() {
        let training_scale = shape[0] == 512;
        let c = shape[1];
        let seed = 900 + 10 * i as u64;
        let x32 = Tensor::new(shape, rand(shape, seed).to_f32_vec().iter().map(|v| 2.0 * v + 0.3).collect::<Vec<f32>>()).unwrap();
        let gamma = Tensor::uniform(&[c], DType::F32, 0.5, 1.5, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1));
        let beta = Tensor::uniform(&[c], DType::F32, -0.5, 0.5, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed + 2));
        let dy32 = rand(shape, seed + 3);
        for dt in [DType::F32, DType::BF16] {
            if training_scale && dt != DType::BF16 {
                continue;
            }
            // The inputs as the GPU sees them (bf16-rounded for bf16), widened back to f32 for the CPU.
            let (x, dy) = (x32.to_dtype(dt).to_dtype(DType::F32), dy32.to_dtype(dt).to_dtype(DType::F32));
            let (rt, rt_sums) = if dt == DType::F32 { (1e-4, 1e-4) } else { (1e-2, 1e-3) };
            // NHWC with our 16-byte kernels (where they apply) and without (--no-vector-kernels).
            for (layout, vector) in [(Layout::Nchw, true), (Layout::Nhwc, true), (Layout::Nchw, false), (Layout::Nhwc, false)] {
                if training_scale && (layout, vector) != (Layout::Nhwc, true) {
                    continue;
                }
                d.set_vector_kernels(vector);
                let what = format!("batch norm + ReLU {shape:?} {dt:?} {layout:?} vector kernels {vector}");
                let on_gpu = |t: &Tensor| {
                    let t = ops::cast::forward(&t.to_device(&dev).unwrap(), dt).unwrap();
                    ops::layout::forward(&t, layout).unwrap()
                };
                // GPU: the fused op, forward and backward.
                let params = vec![on_gpu(&x), gamma.to_device(&dev).unwrap(), beta.to_device(&dev).unwrap()];
                let mut stats = RunningStats::new(c, DType::F32);
                stats.mean = stats.mean.to_device(&dev).unwrap();
                stats.var = stats.var.to_device(&dev).unwrap();
                let mut g = Graph::new(&params);
                let (xv, gv, bv) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap());
                let y = ops::batch_norm_relu::batch_norm_relu_train(&mut g, xv, gv, bv, &mut stats, cfg).unwrap();
                let y_gpu = host(g.value(y));
                let grads = g.backward_with(y, on_gpu(&dy)).unwrap().into_param_grads(3).unwrap();
                // CPU: batch norm, ReLU; backward through batch norm from dy masked by the GPU's y.
                let cpu_params = vec![x.clone(), gamma.clone(), beta.clone()];
                let mut cpu_stats = RunningStats::new(c, DType::F32);
                let mut gc = Graph::new(&cpu_params);
                let (xv, gv, bv) = (gc.param(0).unwrap(), gc.param(1).unwrap(), gc.param(2).unwrap());
                let z = ops::batch_norm::batch_norm_train(&mut gc, xv, gv, bv, &mut cpu_stats, cfg).unwrap();
                let y_cpu = ops::relu::forward(gc.value(z)).unwrap();
                let mask: Vec<f32> = y_gpu.to_f32_vec().iter().zip(dy.to_f32_vec()).map(|(&yv, d)| if yv > 0.0 { d } else { 0.0 }).collect();
                let dz = Tensor::new(shape, mask).unwrap();
                let want = gc.backward_with(z, dz).unwrap().into_param_grads(3).unwrap();
                check(&format!("{what}: y"), &y_gpu, &y_cpu, rt);
                check(&format!("{what}: dx"), &host(grads[0].as_ref().unwrap()), want[0].as_ref().unwrap(), rt);
                check(&format!("{what}: dgamma"), &host(grads[1].as_ref().unwrap()), want[1].as_ref().unwrap(), rt_sums);
                check(&format!("{what}: dbeta"), &host(grads[2].as_ref().unwrap()), want[2].as_ref().unwrap(), rt_sums);
                check(&format!("{what}: running mean"), &host(&stats.mean), &cpu_stats.mean, 1e-4);
                check(&format!("{what}: running var"), &host(&stats.var), &cpu_stats.var, 1e-4);
                assert_eq!(stats.num_batches_tracked, 1);
                // Evaluation with the updated running statistics: the fused op (one pass) against
                // batch norm's eval mode, then ReLU, on the CPU; and it refuses a backward.
                let mut ge = Graph::new(&params);
                let (xv, gv, bv) = (ge.param(0).unwrap(), ge.param(1).unwrap(), ge.param(2).unwrap());
                let ye = ops::batch_norm_relu::batch_norm_relu_eval(&mut ge, xv, gv, bv, &stats, cfg).unwrap();
                let mut gce = Graph::new(&cpu_params);
                let (xv, gv, bv) = (gce.param(0).unwrap(), gce.param(1).unwrap(), gce.param(2).unwrap());
                let ze = ops::batch_norm::batch_norm_eval(&mut gce, xv, gv, bv, &cpu_stats, cfg).unwrap();
                check(&format!("{what}: eval-mode y"), &host(ge.value(ye)), &ops::relu::forward(gce.value(ze)).unwrap(), rt);
                assert!(ge.backward_with(ye, on_gpu(&dy)).is_err(), "{what}: eval-mode backward must be refused");
            }
        }
    }
    d.set_vector_kernels(true);
}

/// Batch norm + ReLU's channels-last 16-byte passes give the same bits whatever their grid
/// (`CudaDevice::set_bnr_max_blocks`): one wave (the default), 1024 blocks, 7 blocks (many
/// groups per thread), and one thread per group (0); bf16 and f32, forward and backward (y,
/// dx, dγ, dβ and the running statistics), the network's channel counts.
#[test]
#[ignore = "needs a CUDA GPU"]
fn batch_norm_relu_grids_give_the_same_bits() {
    use engine::Layout;
    use ops::batch_norm::{BatchNormConfig, RunningStats};
    let dev = gpu();
    let d = cuda_dev(&dev);
    let cfg = BatchNormConfig::default();
    for (i, shape) in [[64usize, 64, 32, 32], [64, 128, 16, 16], [64, 512, 4, 4]].iter().enumerate() {
        let c = shape[1];
        for dt in [DType::BF16, DType::F32] {
            let on_gpu = |t: &Tensor| ops::layout::forward(&ops::cast::forward(&t.to_device(&dev).unwrap(), dt).unwrap(), Layout::Nhwc).unwrap();
            // γ and β random per channel: a pass that mixed up channels would show.
            let per_channel = |lo: f64, hi: f64, seed: u64| Tensor::uniform(&[c], DType::F32, lo, hi, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)).to_device(&dev).unwrap();
            let params = vec![on_gpu(&rand(shape, 1400 + i as u64)), per_channel(0.5, 1.5, 1420 + i as u64), per_channel(-0.5, 0.5, 1430 + i as u64)];
            let dy = on_gpu(&rand(shape, 1450 + i as u64));
            let run = |cap: u32| {
                d.set_bnr_max_blocks(cap);
                let mut stats = RunningStats::new(c, DType::F32);
                stats.mean = stats.mean.to_device(&dev).unwrap();
                stats.var = stats.var.to_device(&dev).unwrap();
                let mut g = Graph::new(&params);
                let (xv, gv, bv) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap());
                let y = ops::batch_norm_relu::batch_norm_relu_train(&mut g, xv, gv, bv, &mut stats, cfg).unwrap();
                let out = g.value(y).to_f32_vec();
                let grads = g.backward_with(y, dy.try_clone().unwrap()).unwrap().into_param_grads(3).unwrap();
                // y, dx, dγ, dβ and the running statistics: the cap changes only the grids of the
                // two elementwise passes (`bnr_apply`, `bnr_bwd_apply`), so the reductions, which
                // read the same bits, give the same bits too.
                let v = |t: &Option<Tensor>| t.as_ref().unwrap().to_f32_vec();
                vec![out, v(&grads[0]), v(&grads[1]), v(&grads[2]), stats.mean.to_f32_vec(), stats.var.to_f32_vec()]
            };
            let wave = run(engine::cuda::BNR_ONE_WAVE);
            // (Equal bits could be equally wrong: the values themselves are compared with the
            // CPU in `batch_norm_relu_matches_the_cpu`; here they must at least be numbers.)
            assert!(wave.iter().flatten().all(|v| v.is_finite()), "{shape:?} {dt:?}: a value is not finite");
            for cap in [1024, 7, 0] {
                assert!(run(cap) == wave, "{shape:?} {dt:?}: --bnr-max-blocks {cap} differs from one wave");
            }
        }
    }
    d.set_bnr_max_blocks(engine::cuda::BNR_ONE_WAVE);
}

/// Batch norm + ReLU with the residual join fused in (`batch_norm_relu_add_train` and
/// `_eval`, the end of each residual block on the fast path) against the same op without
/// it followed by the separate residual add, both on the GPU: the output bit for bit (the
/// fused pass rounds the sum as the add does), the gradients of x, γ and β bit for bit (the
/// same backward kernels), and the residual's gradient equal to dy; f32 and bf16, both
/// layouts, with and without our 16-byte kernels.
#[test]
#[ignore = "needs a CUDA GPU"]
fn batch_norm_relu_with_the_residual_add_fused_equals_it_separate() {
    use engine::Layout;
    use ops::batch_norm::{BatchNormConfig, RunningStats};
    let dev = gpu();
    let d = cuda_dev(&dev);
    let cfg = BatchNormConfig::default();
    // Activations and their gradients in NCHW order; γ, β, their gradients and the running
    // statistics are 1-D and have no layout to convert.
    let bits = |t: &Tensor| -> Vec<u64> {
        let t = if t.shape().len() == 4 { ops::layout::forward(t, Layout::Nchw).unwrap() } else { t.clone() };
        match t.dtype() {
            DType::BF16 => t.cuda_buffer().unwrap().to_host_bf16_bits().unwrap().into_iter().map(u64::from).collect(),
            _ => t.to_f32_vec().into_iter().map(|v| u64::from(v.to_bits())).collect(),
        }
    };
    for (i, shape) in [[16usize, 128, 16, 16], [32, 512, 4, 4], [6, 12, 7, 5]].iter().enumerate() {
        let c = shape[1];
        let seed = 1300 + 10 * i as u64;
        let x32 = Tensor::new(shape, rand(shape, seed).to_f32_vec().iter().map(|v| 2.0 * v + 0.3).collect::<Vec<f32>>()).unwrap();
        let gamma = Tensor::uniform(&[c], DType::F32, 0.5, 1.5, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1));
        let beta = Tensor::uniform(&[c], DType::F32, -0.5, 0.5, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed + 2));
        let (skip32, dy32) = (rand(shape, seed + 3), rand(shape, seed + 4));
        for dt in [DType::F32, DType::BF16] {
            for (layout, vector) in [(Layout::Nchw, true), (Layout::Nhwc, true), (Layout::Nhwc, false)] {
                d.set_vector_kernels(vector);
                let what = format!("{shape:?} {dt:?} {layout:?} vector kernels {vector}");
                let on_gpu = |t: &Tensor| {
                    let t = ops::cast::forward(&t.to_device(&dev).unwrap(), dt).unwrap();
                    ops::layout::forward(&t, layout).unwrap()
                };
                let params = vec![on_gpu(&x32), gamma.to_device(&dev).unwrap(), beta.to_device(&dev).unwrap(), on_gpu(&skip32)];
                let run = |fused: bool, train: bool| {
                    let mut stats = RunningStats::new(c, DType::F32);
                    stats.mean = stats.mean.to_device(&dev).unwrap();
                    stats.var = stats.var.to_device(&dev).unwrap();
                    let mut g = Graph::new(&params);
                    let (xv, gv, bv, sv) = (g.param(0).unwrap(), g.param(1).unwrap(), g.param(2).unwrap(), g.param(3).unwrap());
                    use ops::batch_norm_relu as bnr;
                    let y = match (fused, train) {
                        (true, true) => bnr::batch_norm_relu_add_train(&mut g, xv, gv, bv, sv, &mut stats, cfg).unwrap(),
                        (true, false) => bnr::batch_norm_relu_add_eval(&mut g, xv, gv, bv, sv, &stats, cfg).unwrap(),
                        (false, true) => {
                            let r = bnr::batch_norm_relu_train(&mut g, xv, gv, bv, &mut stats, cfg).unwrap();
                            ops::add::add(&mut g, sv, r).unwrap()
                        }
                        (false, false) => {
                            let r = bnr::batch_norm_relu_eval(&mut g, xv, gv, bv, &stats, cfg).unwrap();
                            ops::add::add(&mut g, sv, r).unwrap()
                        }
                    };
                    let out = bits(g.value(y));
                    if !train {
                        return (out, Vec::new(), Vec::new());
                    }
                    let grads = g.backward_with(y, on_gpu(&dy32)).unwrap().into_param_grads(4).unwrap();
                    let grads: Vec<Vec<u64>> = grads.iter().map(|t| bits(t.as_ref().unwrap())).collect();
                    (out, grads, bits(&stats.mean))
                };
                let (fused, separate) = (run(true, true), run(false, true));
                assert_eq!(fused.0, separate.0, "{what}: output");
                for (k, name) in ["x", "gamma", "beta", "residual"].iter().enumerate() {
                    assert_eq!(fused.1[k], separate.1[k], "{what}: gradient of {name}");
                }
                assert_eq!(fused.1[3], bits(&on_gpu(&dy32)), "{what}: the residual's gradient is dy");
                assert_eq!(fused.2, separate.2, "{what}: running mean");
                assert_eq!(run(true, false).0, run(false, false).0, "{what}: evaluation output");
            }
        }
    }
    d.set_vector_kernels(true);
}

/// The convolution weights' compute copies in one launch (`ops::weight_copy`, the training
/// step's fast path) against a layout conversion then a cast per weight, the ops the network
/// otherwise records: bit for bit both ways (bf16 channels-last copies from f32 NCHW weights,
/// f32 NCHW gradients from bf16 channels-last ones), on the network's 8 weight shapes at full
/// width and in one call, as the training step makes them (the tiled copy: one block per
/// output channel), then with a ninth weight of 1024 input channels, wider than the tiled
/// copy's shared row, so that the whole call takes the one-thread-per-element copy.
#[test]
#[ignore = "needs a CUDA GPU"]
fn weight_copies_equal_a_layout_conversion_then_a_cast() {
    let net: Vec<[usize; 4]> = vec![[64, 3, 3, 3], [128, 64, 3, 3], [128, 128, 3, 3], [128, 128, 3, 3], [256, 128, 3, 3], [512, 256, 3, 3], [512, 512, 3, 3], [512, 512, 3, 3]];
    let mut wide = net.clone();
    wide.push([16, 1024, 3, 3]);
    weight_copies_equal(&net);
    weight_copies_equal(&wide);
}

fn weight_copies_equal(shapes: &[[usize; 4]]) {
    use engine::Layout;
    let dev = gpu();
    let ws: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| rand(s, 900 + i as u64).to_device(&dev).unwrap()).collect();
    let copies = ops::weight_copy::to_compute(&ws.iter().collect::<Vec<_>>(), DType::BF16, Layout::Nhwc).unwrap();
    let grads: Vec<Tensor> = copies.iter().enumerate().map(|(i, c)| ops::cast::forward(&ops::layout::forward(&rand(c.shape(), 950 + i as u64).to_device(&dev).unwrap(), Layout::Nhwc).unwrap(), DType::BF16).unwrap()).collect();
    let master = ops::weight_copy::grads_to_master(&grads.iter().collect::<Vec<_>>()).unwrap();
    for (i, w) in ws.iter().enumerate() {
        let want = ops::cast::forward(&ops::layout::forward(w, Layout::Nhwc).unwrap(), DType::BF16).unwrap();
        assert_eq!((copies[i].shape(), copies[i].dtype(), copies[i].layout()), (want.shape(), DType::BF16, Layout::Nhwc), "copy {i}");
        assert_eq!(copies[i].cuda_buffer().unwrap().to_host_bf16_bits().unwrap(), want.cuda_buffer().unwrap().to_host_bf16_bits().unwrap(), "copy {i} {:?}", shapes[i]);
        let want = ops::cast::forward(&ops::layout::forward(&grads[i], Layout::Nchw).unwrap(), DType::F32).unwrap();
        assert_eq!((master[i].shape(), master[i].dtype(), master[i].layout()), (want.shape(), DType::F32, Layout::Nchw), "gradient {i}");
        assert_eq!(master[i].to_f32_vec(), want.to_f32_vec(), "gradient {i} {:?}", shapes[i]);
    }
}
