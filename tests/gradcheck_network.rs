//! Gradient check of the whole ResNet-9 topology at reduced width, through the tape:
//! every conv, BN in training mode (batch statistics), ReLU, both max-pools, both
//! residual adds, the linear layer and the cross-entropy loss, in f64.
//!
//! Tolerance: the default of `GradCheck` (relative 1e-5 + absolute 1e-7). Central
//! differences with ε = 1e-6 in f64 have truncation error ~ε²·f''' ≈ 1e-12 and
//! rounding error ~1e-16·|L|/ε ≈ 1e-10, far below; a wrong backward rule anywhere
//! in the chain gives relative errors of order 1. ReLU and max-pool kinks are the
//! only way an honest gradient could fail: with random inputs the chance that a
//! perturbation of 1e-6 crosses one is about 1e-3 over the whole network, and
//! the seeds below are fixed, so the test is deterministic.

use engine::{DType, Tensor};
use model::resnet::ResNet9;
use ops::gradcheck::GradCheck;
use rand::SeedableRng;

fn check(width: f64, out_scale: f64, smoothing: f64, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let net = ResNet9::new(width, out_scale, DType::F64, &mut rng).unwrap();
    // BN scale/shift away from their 1/0 initial values, so their gradients are generic.
    let mut params = net.params.clone();
    for (p, name) in params.iter_mut().zip(&net.arch.param_names) {
        if name.contains(".bn") {
            *p = Tensor::uniform(p.shape(), DType::F64, 0.5, 1.5, &mut rng);
        }
    }
    let x = Tensor::randn(&[3, 3, 32, 32], DType::F64, 1.0, &mut rng);
    let labels = [3u32, 7, 0];
    let report = GradCheck { max_elems_per_param: 24, ..GradCheck::default() }
        .run(&params, |g| {
            let mut bn = net.bn.clone();
            let input = g.input(x.clone());
            let logits = net.arch.forward(g, input, true, &mut bn).map_err(|e| engine::Error::Invalid(e.to_string()))?;
            ops::cross_entropy::softmax_cross_entropy(g, logits, &labels, smoothing)
        })
        .unwrap();
    // Every parameter tensor took part: min(numel, 24) elements of each were compared.
    let expected: usize = params.iter().map(|p| p.numel().min(24)).sum();
    assert_eq!(report.checked, expected);
    eprintln!("whole-network gradient check: {} elements, max relative error {:.2e}", report.checked, report.max_rel_err);
}

#[test]
fn whole_resnet9_at_width_1_over_32_matches_finite_differences() {
    check(1.0 / 32.0, 1.0, 0.0, 11);
}

#[test]
fn whole_resnet9_with_output_scale_and_label_smoothing() {
    check(1.0 / 64.0, 0.125, 0.2, 12);
}
