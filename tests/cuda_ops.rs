//! CUDA paths of the ops against the CPU reference, on random inputs of realistic
//! shapes. Run on a GPU machine: `cargo test --release -- --ignored`.
//!
//! Tolerances: ReLU, add, scale and the SGD update are single IEEE f32 operations per
//! element, written without fused multiply-adds on both sides (`__f*_rn` intrinsics in
//! the kernels; Rust never contracts), so they must match bit for bit. The loss uses
//! `expf`/`logf`, whose CUDA versions are within 2 ulp of the correctly rounded value, and
//! sums in another order: 1e-5 relative.

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

#[test]
#[ignore = "needs a CUDA GPU"]
fn sgd_update_matches_the_cpu_exactly() {
    let dev = gpu();
    let cfg = Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 5e-4, nesterov: true };
    let mut cpu = vec![rand(&[512, 256, 3, 3], 4), rand(&[10], 5)];
    let mut gpu_params: Vec<Tensor> = cpu.iter().map(|p| p.to_device(&dev).unwrap()).collect();
    let (mut sc, mut sg) = (SgdState::default(), SgdState::default());
    for step in 0..3 {
        let grads: Vec<Option<Tensor>> = cpu.iter().enumerate().map(|(i, p)| Some(rand(p.shape(), 10 + step * 2 + i as u64))).collect();
        let dgrads: Vec<Option<Tensor>> = grads.iter().map(|g| Some(g.as_ref().unwrap().to_device(&dev).unwrap())).collect();
        ops::sgd::step(&mut cpu, &grads, &mut sc, &cfg).unwrap();
        ops::sgd::step(&mut gpu_params, &dgrads, &mut sg, &cfg).unwrap();
    }
    for (g, c) in gpu_params.iter().zip(&cpu) {
        close("parameter after 3 SGD steps", g, c, 0.0);
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
