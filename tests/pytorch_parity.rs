//! Parity with PyTorch on one training step (the llm.c way): `bench/make_parity_fixture.py`
//! ran the same network (`bench/resnet9.py`, width 1/16, output scale 0.125) in float64 on
//! a random batch and saved its weights, inputs, logits, loss (label smoothing 0.1), every
//! parameter gradient, the BN running statistics and the parameters after one SGD step
//! (Nesterov, weight decay) in `tests/fixtures/resnet9_w16_step.safetensors`. Our CPU engine
//! runs the same step in f64 from the same weights and must agree.
//!
//! Tolerance: both sides compute in f64 with different summation orders (im2col GEMM vs
//! cuDNN/MKL-DNN loops), so results agree to ~1e-13 relative; 1e-9 relative to the largest
//! value of each tensor leaves ample room, while any difference of semantics (biased vs
//! unbiased variance, the smoothing formula, weight decay placement, Nesterov) shows up at
//! 1e-3 or more.

use engine::{DType, Tensor};
use model::resnet::ResNet9;
use ops::Graph;
use ops::sgd::{Sgd, SgdState};
use rand::SeedableRng;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

fn fixture() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resnet9_w16_step.safetensors");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn get(st: &SafeTensors<'_>, name: &str) -> Tensor {
    let v = st.tensor(name).unwrap_or_else(|_| panic!("fixture has no {name}"));
    assert_eq!(v.dtype(), Dtype::F64, "{name}");
    let values: Vec<f64> = v.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
    let shape: Vec<usize> = if v.shape().is_empty() { vec![1] } else { v.shape().to_vec() };
    Tensor::new(&shape, values).unwrap()
}

fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.shape(), theirs.shape(), "{what}: shape");
    let scale = theirs.to_f64_vec().iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    let err = ours.max_abs_diff(theirs).unwrap();
    assert!(err <= 1e-9 * scale, "{what}: max abs difference {err:e} (largest value {scale:e})");
}

#[test]
fn one_training_step_matches_pytorch_in_f64() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut net = ResNet9::new(1.0 / 16.0, 0.125, DType::F64, &mut rng).unwrap();
    for (i, name) in net.arch.param_names.clone().iter().enumerate() {
        net.params[i] = get(&st, &format!("init.{name}"));
    }
    let x = get(&st, "input");
    let labels: Vec<u32> = st.tensor("labels").unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();

    let (grads, logits, loss) = {
        let mut g = Graph::new(&net.params);
        let input = g.input(x);
        let logits = net.arch.forward(&mut g, input, true, &mut net.bn).unwrap();
        let loss = ops::cross_entropy::softmax_cross_entropy(&mut g, logits, &labels, 0.1).unwrap();
        let grads = g.backward(loss).unwrap().into_param_grads(net.params.len()).unwrap();
        (grads, g.value(logits).clone(), g.value(loss).clone())
    };
    assert_close("logits", &logits, &get(&st, "logits"));
    assert_close("loss", &loss, &get(&st, "loss"));
    for (i, name) in net.arch.param_names.iter().enumerate() {
        assert_close(&format!("grad of {name}"), grads[i].as_ref().unwrap(), &get(&st, &format!("grad.{name}")));
    }
    for (i, s) in net.bn.iter().enumerate() {
        let prefix = net.arch.bn_name(i);
        assert_close(&format!("{prefix}.running_mean"), &s.mean, &get(&st, &format!("after_forward.{prefix}.running_mean")));
        assert_close(&format!("{prefix}.running_var"), &s.var, &get(&st, &format!("after_forward.{prefix}.running_var")));
    }
    let cfg = Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 5e-4, nesterov: true };
    ops::sgd::step(&mut net.params, &grads, &mut SgdState::default(), &cfg).unwrap();
    for (i, name) in net.arch.param_names.iter().enumerate() {
        assert_close(&format!("{name} after the SGD step"), &net.params[i], &get(&st, &format!("after_step.{name}")));
    }
}
