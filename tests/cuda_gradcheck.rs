//! Gradient checks in f64 on the GPU: the CUDA backward rules (cuDNN convolution, batch
//! norm and max-pooling in double precision, cuBLAS DGEMM, our `_f64` kernels) against
//! central finite differences of the CUDA forward, op by op and for the whole ResNet-9
//! topology at width 1/32. cuDNN supports f64 for all three; TF32 never applies to f64.
//!
//! Tolerance: `GradCheck`'s default (relative 1e-5 + absolute 1e-7), as on the CPU (see
//! ops/src/gradcheck.rs): the GPU computes in f64 too, so rounding stays ~1e-10 relative.
//! Run with `cargo test --release -- --ignored` on a GPU machine.

use engine::{DType, Device, Tensor};
use model::resnet::ResNet9;
use ops::batch_norm::{BatchNormConfig, RunningStats};
use ops::gradcheck::{GradCheck, random_params};
use rand::SeedableRng;

fn gpu() -> Device {
    Device::cuda(0).unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"))
}

fn on_gpu() -> GradCheck {
    GradCheck { device: gpu(), ..GradCheck::default() }
}

/// Fresh f64 BN running statistics of `c` channels on `dev`.
fn running_stats_on(dev: &Device, c: usize) -> engine::Result<RunningStats> {
    let mut stats = RunningStats::new(c, DType::F64);
    stats.mean = stats.mean.to_device(dev)?;
    stats.var = stats.var.to_device(dev)?;
    Ok(stats)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_in_f64_on_the_gpu() {
    use ops::conv2d::{Conv2dParams, conv2d};
    let ps = random_params(&[&[2, 3, 6, 6], &[4, 3, 3, 3]], 1);
    for p in [Conv2dParams { stride: 1, padding: 1 }, Conv2dParams { stride: 2, padding: 0 }] {
        let r = on_gpu()
            .run(&ps, |g| {
                let (x, w) = (g.param(0)?, g.param(1)?);
                conv2d(g, x, w, p)
            })
            .unwrap();
        eprintln!("conv2d {p:?}: {} elements, max relative error {:.2e}", r.checked, r.max_rel_err);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn batch_norm_in_f64_on_the_gpu() {
    // The running statistics on the check's own device (one device, one stream).
    let gc = on_gpu();
    let dev = gc.device.clone();
    let ps = random_params(&[&[3, 4, 3, 2], &[4], &[4]], 2);
    let r = gc
        .run(&ps, |g| {
            let mut stats = running_stats_on(&dev, 4)?;
            let (x, ga, be) = (g.param(0)?, g.param(1)?, g.param(2)?);
            ops::batch_norm::batch_norm_train(g, x, ga, be, &mut stats, BatchNormConfig::default())
        })
        .unwrap();
    eprintln!("batch norm: {} elements, max relative error {:.2e}", r.checked, r.max_rel_err);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn max_pool_linear_and_elementwise_in_f64_on_the_gpu() {
    let ps = random_params(&[&[2, 3, 8, 8]], 3);
    on_gpu()
        .run(&ps, |g| {
            let x = g.param(0)?;
            ops::max_pool::max_pool2d(g, x, 2)
        })
        .unwrap();
    let ps = random_params(&[&[5, 7], &[3, 7], &[3]], 4);
    on_gpu()
        .run(&ps, |g| {
            let (x, w, b) = (g.param(0)?, g.param(1)?, g.param(2)?);
            ops::linear::linear(g, x, w, b)
        })
        .unwrap();
    let ps = random_params(&[&[4, 9], &[4, 9]], 5);
    on_gpu()
        .run(&ps, |g| {
            let (a, b) = (g.param(0)?, g.param(1)?);
            let s = ops::add::add(g, a, b)?;
            let r = ops::relu::relu(g, s)?;
            ops::scale::scale(g, r, 0.125)
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cross_entropy_in_f64_on_the_gpu() {
    let ps = random_params(&[&[6, 10]], 6);
    let labels = [3u32, 0, 9, 9, 1, 5];
    for s in [0.0, 0.2] {
        on_gpu()
            .run(&ps, |g| {
                let z = g.param(0)?;
                ops::cross_entropy::softmax_cross_entropy(g, z, &labels, s)
            })
            .unwrap();
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn whole_resnet9_in_f64_on_the_gpu() {
    let dev = gpu();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let net = ResNet9::new(1.0 / 32.0, 0.125, DType::F64, &mut rng).unwrap();
    let mut params = net.params.clone();
    for (p, name) in params.iter_mut().zip(&net.arch.param_names) {
        if name.contains(".bn") {
            *p = Tensor::uniform(p.shape(), DType::F64, 0.5, 1.5, &mut rng);
        }
    }
    let x = Tensor::randn(&[3, 3, 32, 32], DType::F64, 1.0, &mut rng).to_device(&dev).unwrap();
    let mut bn0 = net.bn.clone();
    for s in &mut bn0 {
        s.mean = s.mean.to_device(&dev).unwrap();
        s.var = s.var.to_device(&dev).unwrap();
    }
    let labels = [3u32, 7, 0];
    let report = GradCheck { max_elems_per_param: 24, device: dev.clone(), ..GradCheck::default() }
        .run(&params, |g| {
            let mut bn = bn0.clone();
            let input = g.input(x.clone());
            let logits = net.arch.forward(g, input, true, &mut bn).map_err(|e| engine::Error::Invalid(e.to_string()))?;
            ops::cross_entropy::softmax_cross_entropy(g, logits, &labels, 0.2)
        })
        .unwrap();
    let expected: usize = params.iter().map(|p| p.numel().min(24)).sum();
    assert_eq!(report.checked, expected);
    eprintln!("whole-network gradient check on the GPU: {} elements, max relative error {:.2e}", report.checked, report.max_rel_err);
}

/// The fused batch norm + ReLU kernels in f64 (NCHW), with beta shifted so that both sides
/// of the ReLU are exercised.
#[test]
#[ignore = "needs a CUDA GPU"]
fn batch_norm_relu_in_f64_on_the_gpu() {
    let gc = on_gpu();
    let dev = gc.device.clone();
    let mut ps = random_params(&[&[3, 4, 3, 2], &[4], &[4]], 5);
    ps[2] = Tensor::new(&[4], vec![-0.4f64, 0.3, -0.1, 0.5]).unwrap();
    let r = gc
        .run(&ps, |g| {
            let mut stats = running_stats_on(&dev, 4)?;
            let (x, ga, be) = (g.param(0)?, g.param(1)?, g.param(2)?);
            ops::batch_norm_relu::batch_norm_relu_train(g, x, ga, be, &mut stats, BatchNormConfig::default())
        })
        .unwrap();
    eprintln!("batch norm + ReLU: {} elements, max relative error {:.2e}", r.checked, r.max_rel_err);
}

/// Max-pooling's fast path (f32 or bf16, channels-last, whole 16-byte groups of channels)
/// saves the window positions of its maxima, so its input can be freed right after the
/// forward: `release_unread` frees it, and the gradient reaching the parameter is bit for bit
/// the one of the same tape with the input kept. (`check_reads` works in f64, which never
/// takes the fast path: this is its check for it.)
#[test]
#[ignore = "needs a CUDA GPU"]
fn max_pool_fast_path_frees_its_input_and_keeps_the_gradient() {
    let dev = gpu();
    for dt in [DType::F32, DType::BF16] {
        let x = random_params(&[&[8, 16, 8, 8]], 21).remove(0).to_dtype(DType::F32);
        let x = ops::layout::forward(&ops::cast::forward(&x.to_device(&dev).unwrap(), dt).unwrap(), engine::Layout::Nhwc).unwrap();
        let params = [x];
        let run = |release: bool| {
            let mut g = ops::Graph::new(&params);
            let p = g.param(0).unwrap();
            // An op output (a parameter is never freed; the add, which has bf16 kernels, reads
            // neither input nor output), then the pool.
            let t = ops::add::add(&mut g, p, p).unwrap();
            let y = ops::max_pool::max_pool2d(&mut g, t, 2).unwrap();
            let freed = release && g.release_unread(t);
            let z = ops::layout::to_layout(&mut g, y, engine::Layout::Nchw).unwrap();
            let z = ops::cast::cast(&mut g, z, DType::F32).unwrap();
            let seed = Tensor::full(g.value(z).shape(), DType::F32, 1.0).to_device(&dev).unwrap();
            let grads = g.backward_with(z, seed).unwrap().into_param_grads(1).unwrap();
            let dx = grads.into_iter().next().unwrap().unwrap();
            let dx = ops::cast::forward(&ops::layout::forward(&dx, engine::Layout::Nchw).unwrap(), DType::F32).unwrap();
            (freed, dx.to_f32_vec())
        };
        let (_, kept) = run(false);
        let (freed, released) = run(true);
        assert!(freed, "{dt:?}: the fast path's pool still reads its input");
        assert_eq!(kept, released, "{dt:?}: freeing the pool's input changed the gradient");
        assert!(kept.iter().any(|&v| v != 0.0), "{dt:?}: no gradient reached the input");
    }
}

/// The ops' `reads` claims (which values their backward rules read; the forward frees the
/// others, e.g. a batch norm's output after its ReLU) hold for the CUDA rules too: freeing
/// every value an op claims not to read leaves its gradients unchanged. f64, so the only
/// difference allowed is the order of cuDNN's sums from one call to the next (1e-12 of the
/// largest gradient; a rule that read a freed value fails on the empty host tensor instead).
#[test]
#[ignore = "needs a CUDA GPU"]
fn every_op_reads_what_it_claims_on_the_gpu() {
    use ops::gradcheck::check_reads;
    let dev = gpu();
    let tol = 1e-12;
    let conv = ops::conv2d::Conv2dParams { stride: 1, padding: 1 };
    check_reads(&dev, &[&[8, 16, 8, 8], &[32, 16, 3, 3]], &[false, false, true], tol, |g, v| ops::conv2d::conv2d(g, v[0], v[1], conv)).unwrap();
    let bn: &[&[usize]] = &[&[8, 16, 6, 6], &[16], &[16]];
    check_reads(&dev, bn, &[false, false, true, true], tol, |g, v| {
        ops::batch_norm::batch_norm_train(g, v[0], v[1], v[2], &mut running_stats_on(&dev, 16)?, BatchNormConfig::default())
    })
    .unwrap();
    // Evaluation never runs a backward pass, and on the GPU the eval-mode batch norm has no
    // backward rule (cuDNN's backward takes batch statistics): it must say so, not fail later.
    let e = check_reads(&dev, bn, &[false, false, true, true], tol, |g, v| {
        ops::batch_norm::batch_norm_eval(g, v[0], v[1], v[2], &running_stats_on(&dev, 16)?, BatchNormConfig::default())
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("batch_norm backward in eval mode"), "{e}");
    check_reads(&dev, bn, &[false, false, true, false], tol, |g, v| {
        ops::batch_norm_relu::batch_norm_relu_train(g, v[0], v[1], v[2], &mut running_stats_on(&dev, 16)?, BatchNormConfig::default())
    })
    .unwrap();
    // With the residual input: neither it nor the output is read (the mask comes from x).
    let bn_skip: &[&[usize]] = &[bn[0], bn[1], bn[2], bn[0]];
    check_reads(&dev, bn_skip, &[false, false, true, true, true], tol, |g, v| {
        ops::batch_norm_relu::batch_norm_relu_add_train(g, v[0], v[1], v[2], v[3], &mut running_stats_on(&dev, 16)?, BatchNormConfig::default())
    })
    .unwrap();
    check_reads(&dev, &[&[8, 16, 6, 6]], &[true, false], tol, |g, v| ops::relu::relu(g, v[0])).unwrap();
    // f64 NCHW: the one-value backward searches the windows of x again, so x is read.
    check_reads(&dev, &[&[8, 16, 8, 8]], &[false, true], tol, |g, v| ops::max_pool::max_pool2d(g, v[0], 2)).unwrap();
    check_reads(&dev, &[&[8, 16, 6, 6], &[8, 16, 6, 6]], &[true, true, true], tol, |g, v| ops::add::add(g, v[0], v[1])).unwrap();
    check_reads(&dev, &[&[8, 64], &[10, 64], &[10]], &[false, false, false, true], tol, |g, v| ops::linear::linear(g, v[0], v[1], v[2])).unwrap();
    check_reads(&dev, &[&[8, 16, 2, 2]], &[true, true], tol, |g, v| ops::reshape::flatten(g, v[0])).unwrap();
    check_reads(&dev, &[&[8, 10]], &[true, true], tol, |g, v| ops::scale::scale(g, v[0], 0.125)).unwrap();
    let labels = [3u32, 1, 4, 1, 5, 9, 2, 6];
    check_reads(&dev, &[&[8, 10]], &[false, true], tol, |g, v| ops::cross_entropy::softmax_cross_entropy(g, v[0], &labels, 0.2)).unwrap();
}
