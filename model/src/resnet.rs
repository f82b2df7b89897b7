//! The CIFAR-10 "custom ResNet" (ResNet-9) of the assignment.
//!
//! ```text
//! input x                                  [N,    3, 32, 32]
//! prep   : conv3x3(3→64)  BN ReLU          [N,   64, 32, 32]
//! layer1 : conv3x3(64→128) MaxPool2 BN ReLU [N,  128, 16, 16]
//! res1   : (conv3x3 BN ReLU) x 2, added to layer1's output
//! layer2 : conv3x3(128→256) MaxPool2 BN ReLU[N,  256,  8,  8]
//! layer3 : conv3x3(256→512) MaxPool2 BN ReLU[N,  512,  4,  4]
//! res2   : (conv3x3 BN ReLU) x 2, added to layer3's output
//! pool   : MaxPool4                         [N,  512,  1,  1]
//! fc     : flatten, Linear(512→10), × out_scale   [N, 10]
//! ```
//! Softmax is folded into the loss. Convolutions have no bias (BN follows).
//! At width 1 the network has 6,573,130 parameters.
//!
//! Parameter and buffer names follow the PyTorch `state_dict` of the module
//! written in `bench/resnet9.py` (`prep.conv.weight`, `prep.bn.running_mean`,
//! `res1.conv1.weight`, `fc.bias`, ...), so checkpoints load into PyTorch unchanged.

use crate::Result;
use engine::{DType, Error, Layout, Tensor, Var};
use ops::Graph;
use ops::batch_norm::{self, BatchNormConfig, RunningStats};
use ops::conv2d::{self, Conv2dParams};
use rand::Rng;

/// One conv3x3 → BN unit: where its parameters and statistics sit.
#[derive(Clone, Debug)]
struct ConvBn {
    /// Name prefix of the conv (`"res1.conv1"`) and of the BN (`"res1.bn1"`).
    conv_name: String,
    bn_name: String,
    conv_w: usize,
    bn_gamma: usize,
    bn_beta: usize,
    bn_stats: usize,
    /// Whether a MaxPool2 sits between the conv and the BN.
    pool: bool,
}

/// The network's structure: channel counts, and where every tensor lives.
#[derive(Clone, Debug)]
pub struct Arch {
    /// Channel counts of prep, layer1, layer2, layer3.
    pub channels: [usize; 4],
    /// Multiplier applied to the logits (1.0 = plain linear layer).
    pub out_scale: f64,
    /// Element type of the activations in the convolutional trunk: the parameters' own
    /// (f32, the default) or bf16 (mixed precision: bf16 copies of the conv weights and
    /// bf16 activations, f32 BN parameters and statistics, f32 again from the final pool on).
    pub compute: Option<DType>,
    /// Memory order of the trunk's activations and conv weights on the GPU: NCHW (the
    /// default) or NHWC ("channels last", what cuDNN's tensor-core kernels read). The
    /// parameters stay NCHW (PyTorch's layout); converted copies are made in the forward.
    pub layout: Layout,
    /// Batch norm and the ReLU after it as one op (`ops::batch_norm_relu`), in training and in
    /// evaluation.
    pub fuse_bn_relu: bool,
    /// With `fuse_bn_relu`: each residual block's add is part of its last batch norm + ReLU
    /// (`ops::batch_norm_relu::batch_norm_relu_add_train`); without, a separate op.
    pub fuse_residual: bool,
    units: Vec<ConvBn>,
    fc_w: usize,
    fc_b: usize,
    /// `state_dict` name of every parameter, in parameter order.
    pub param_names: Vec<String>,
    /// Shape of every parameter.
    pub param_shapes: Vec<Vec<usize>>,
    /// `state_dict` name prefix of every BN layer (buffers are `<prefix>.running_mean`, ...).
    pub bn_names: Vec<String>,
}

/// Indices of the conv-BN units in `Arch::units`.
const PREP: usize = 0;
const LAYER1: usize = 1;
const RES1: [usize; 2] = [2, 3];
const LAYER2: usize = 4;
const LAYER3: usize = 5;
const RES2: [usize; 2] = [6, 7];
const NUM_CLASSES: usize = 10;

/// Channel counts of prep, layer 1, layer 2 and layer 3 in the real network (width 1).
pub const BASE_CHANNELS: [usize; 4] = [64, 128, 256, 512];

/// The widest network a run may ask for: 8 times the channels (4096 in the last stage), about
/// 420 million parameters (64 times 6.57 million: the parameters grow as the width squared).
pub const MAX_WIDTH: f64 = 8.0;

/// Refuse a channel multiplier outside `(0, MAX_WIDTH]` (one that overflows the memory is not
/// a network anyone can train here).
pub fn check_width(width: f64) -> Result<()> {
    if !(width > 0.0 && width <= MAX_WIDTH) {
        return Err(crate::Error::Invalid(format!("--width must be a number in (0, {MAX_WIDTH}] (1 is the real network), got {width}")));
    }
    Ok(())
}

impl Arch {
    /// The ResNet-9 with every channel count multiplied by `width` (1.0 = the real network),
    /// rounded, at least 1.
    pub fn new(width: f64, out_scale: f64) -> Result<Arch> {
        check_width(width)?;
        let c = |base: f64| ((base * width).round() as usize).max(1);
        Arch::with_channels([c(64.0), c(128.0), c(256.0), c(512.0)], out_scale)
    }

    /// The ResNet-9 with the channel counts of prep, layer 1, layer 2 and layer 3 given (a
    /// saved network's, read off its weights' shapes: `checkpoint::load_network`), each at
    /// least 1 and at most [`MAX_WIDTH`] times the real network's.
    pub fn with_channels(channels: [usize; 4], out_scale: f64) -> Result<Arch> {
        for (c, base) in channels.iter().zip(BASE_CHANNELS) {
            if *c == 0 || *c as f64 > base as f64 * MAX_WIDTH {
                return Err(crate::Error::Invalid(format!(
                    "channel counts {channels:?}: each must be between 1 and {MAX_WIDTH} times the real network's {BASE_CHANNELS:?}"
                )));
            }
        }
        if !(out_scale > 0.0 && out_scale.is_finite()) {
            return Err(crate::Error::Invalid(format!("the logits' scale (out_scale) must be a positive number, got {out_scale}")));
        }
        let mut arch = Arch {
            channels,
            out_scale,
            compute: None,
            layout: Layout::Nchw,
            fuse_bn_relu: false,
            fuse_residual: true,
            units: Vec::new(),
            fc_w: 0,
            fc_b: 0,
            param_names: Vec::new(),
            param_shapes: Vec::new(),
            bn_names: Vec::new(),
        };
        let [c0, c1, c2, c3] = channels;
        arch.add_unit("prep.conv", "prep.bn", 3, c0, false);
        arch.add_unit("layer1.conv", "layer1.bn", c0, c1, true);
        arch.add_unit("res1.conv1", "res1.bn1", c1, c1, false);
        arch.add_unit("res1.conv2", "res1.bn2", c1, c1, false);
        arch.add_unit("layer2.conv", "layer2.bn", c1, c2, true);
        arch.add_unit("layer3.conv", "layer3.bn", c2, c3, true);
        arch.add_unit("res2.conv1", "res2.bn1", c3, c3, false);
        arch.add_unit("res2.conv2", "res2.bn2", c3, c3, false);
        arch.fc_w = arch.add_param("fc.weight", vec![NUM_CLASSES, c3]);
        arch.fc_b = arch.add_param("fc.bias", vec![NUM_CLASSES]);
        Ok(arch)
    }

    fn add_param(&mut self, name: &str, shape: Vec<usize>) -> usize {
        self.param_names.push(name.to_string());
        self.param_shapes.push(shape);
        self.param_names.len() - 1
    }

    fn add_unit(&mut self, conv: &str, bn: &str, cin: usize, cout: usize, pool: bool) {
        let conv_w = self.add_param(&format!("{conv}.weight"), vec![cout, cin, 3, 3]);
        let bn_gamma = self.add_param(&format!("{bn}.weight"), vec![cout]);
        let bn_beta = self.add_param(&format!("{bn}.bias"), vec![cout]);
        self.bn_names.push(bn.to_string());
        let bn_stats = self.bn_names.len() - 1;
        self.units.push(ConvBn { conv_name: conv.into(), bn_name: bn.into(), conv_w, bn_gamma, bn_beta, bn_stats, pool });
    }

    /// Total number of learnable parameters.
    pub fn num_params(&self) -> usize {
        self.param_shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Output channels of each BN layer, in `bn_names` order.
    pub fn bn_channels(&self) -> Vec<usize> {
        self.units.iter().map(|u| self.param_shapes[u.bn_gamma][0]).collect()
    }

    /// The layer table a user checks: (layer, output shape for batch `n`, parameter count).
    pub fn summary(&self, n: usize) -> Vec<(String, Vec<usize>, usize)> {
        let numel = |i: usize| self.param_shapes[i].iter().product::<usize>();
        let [c0, c1, c2, c3] = self.channels;
        let spatial = [32, 16, 16, 16, 8, 4, 4, 4];
        let chans = [c0, c1, c1, c1, c2, c3, c3, c3];
        let mut rows = Vec::new();
        for (i, u) in self.units.iter().enumerate() {
            let s = spatial[i];
            let what = if u.pool { "conv3x3-maxpool2-BN-ReLU" } else { "conv3x3-BN-ReLU" };
            rows.push((
                format!("{} ({what})", u.conv_name.trim_end_matches(".conv")),
                vec![n, chans[i], s, s],
                numel(u.conv_w) + numel(u.bn_gamma) + numel(u.bn_beta),
            ));
        }
        rows.push(("pool (maxpool4)".into(), vec![n, c3, 1, 1], 0));
        rows.push(("fc (linear)".into(), vec![n, NUM_CLASSES], numel(self.fc_w) + numel(self.fc_b)));
        rows
    }

    /// Fresh parameters with PyTorch's default initialisation: conv and linear weights
    /// (and the linear bias) uniform in ±1/√fan_in (`kaiming_uniform_(a=√5)`), BN scale 1, shift 0.
    pub fn init_params(&self, dtype: DType, rng: &mut impl Rng) -> Vec<Tensor> {
        let mut params: Vec<Tensor> = Vec::with_capacity(self.param_shapes.len());
        for (name, shape) in self.param_names.iter().zip(&self.param_shapes) {
            let t = if name.contains(".bn") {
                let v = if name.ends_with(".weight") { 1.0 } else { 0.0 };
                Tensor::full(shape, dtype, v)
            } else {
                let fan_in = if name == "fc.bias" { self.param_shapes[self.fc_w][1] } else { shape[1..].iter().product() };
                let bound = 1.0 / (fan_in as f64).sqrt();
                Tensor::uniform(shape, dtype, -bound, bound, rng)
            };
            params.push(t);
        }
        params
    }

    /// Fresh BN running statistics (mean 0, variance 1).
    pub fn init_bn_stats(&self, dtype: DType) -> Vec<RunningStats> {
        self.bn_channels().into_iter().map(|c| RunningStats::new(c, dtype)).collect()
    }

    /// Record the forward pass of a batch `x` `[N, 3, 32, 32]` on `g` (whose parameters are
    /// this network's), returning the logits `[N, 10]`. In training mode BN uses batch
    /// statistics and updates `bn`; otherwise it uses `bn`.
    pub fn forward(&self, g: &mut Graph<'_>, x: Var, train: bool, bn: &mut [RunningStats]) -> Result<Var> {
        self.forward_with_copies(g, x, train, bn, None)
    }

    /// [`Arch::forward`], with the convolution weights' compute copies (see
    /// [`Arch::copy_target`] and `ops::weight_copy`) as the tape's parameters `first`,
    /// `first + 1`, ... (one per unit, in [`Arch::conv_weights`] order; `Graph::with_extra`)
    /// instead of a recorded cast and layout conversion of each weight in its unit.
    pub fn forward_with_copies(&self, g: &mut Graph<'_>, x: Var, train: bool, bn: &mut [RunningStats], first: Option<usize>) -> Result<Var> {
        if bn.len() != self.units.len() {
            return Err(Error::Invalid(format!("expected {} BN states, got {}", self.units.len(), bn.len())).into());
        }
        let x = self.to_compute(g, x)?;
        let x = self.to_trunk_layout(g, x)?;
        let x = self.unit(g, x, PREP, train, bn, first)?;
        let x = self.unit(g, x, LAYER1, train, bn, first)?;
        let x = self.residual(g, x, RES1, train, bn, first)?;
        let x = self.unit(g, x, LAYER2, train, bn, first)?;
        let x = self.unit(g, x, LAYER3, train, bn, first)?;
        let x = self.residual(g, x, RES2, train, bn, first)?;
        let trunk = x;
        let x = ops::max_pool::max_pool2d(g, trunk, 4)?;
        g.release_unread(trunk);
        let x = if self.layout == Layout::Nchw { x } else { ops::layout::to_layout(g, x, Layout::Nchw)? };
        let x = match self.compute {
            Some(t) if t != DType::F32 && t != DType::F64 => ops::cast::cast(g, x, DType::F32)?,
            _ => x,
        };
        let x = ops::reshape::flatten(g, x)?;
        let (w, b) = (g.param(self.fc_w)?, g.param(self.fc_b)?);
        let logits = ops::linear::linear(g, x, w, b)?;
        if self.out_scale == 1.0 {
            Ok(logits)
        } else {
            Ok(ops::scale::scale(g, logits, self.out_scale)?)
        }
    }

    /// The parameter index of every convolution weight, unit by unit.
    pub fn conv_weights(&self) -> Vec<usize> {
        self.units.iter().map(|u| u.conv_w).collect()
    }

    /// The type and layout of the convolution weights' compute copies where the training
    /// step makes them all at once (`ops::weight_copy`): bf16 channels-last, the GPU's fast
    /// path, which has one kernel for it. `None` elsewhere: each unit then records its own
    /// cast and layout conversion, if any.
    pub fn copy_target(&self) -> Option<(DType, Layout)> {
        (self.compute == Some(DType::BF16) && self.layout == Layout::Nhwc).then_some((DType::BF16, Layout::Nhwc))
    }

    /// `x` in the trunk's compute type (a recorded cast when it differs).
    fn to_compute(&self, g: &mut Graph<'_>, x: Var) -> Result<Var> {
        match self.compute {
            Some(t) if t != g.value(x).dtype() => Ok(ops::cast::cast(g, x, t)?),
            _ => Ok(x),
        }
    }

    /// `x` in the trunk's layout (a recorded conversion when it is not NCHW).
    fn to_trunk_layout(&self, g: &mut Graph<'_>, x: Var) -> Result<Var> {
        if self.layout == g.value(x).layout() {
            return Ok(x);
        }
        Ok(ops::layout::to_layout(g, x, self.layout)?)
    }

    /// `x + unit_b(unit_a(x))`. With the fused batch norm + ReLU, the add is part of unit_b's
    /// last op (`ops::batch_norm_relu::batch_norm_relu_add_train`).
    fn residual(&self, g: &mut Graph<'_>, x: Var, units: [usize; 2], train: bool, bn: &mut [RunningStats], first: Option<usize>) -> Result<Var> {
        let h = self.unit(g, x, units[0], train, bn, first)?;
        if self.fuse_bn_relu && self.fuse_residual {
            return self.unit_with_skip(g, h, units[1], train, bn, first, Some(x));
        }
        let h = self.unit(g, h, units[1], train, bn, first)?;
        Ok(ops::add::add(g, x, h)?)
    }

    /// conv3x3 (pad 1) → \[MaxPool2\] → BN → ReLU.
    /// With `first`, the unit's weight is the compute copy at parameter `first + i`.
    fn unit(&self, g: &mut Graph<'_>, x: Var, i: usize, train: bool, bn: &mut [RunningStats], first: Option<usize>) -> Result<Var> {
        self.unit_with_skip(g, x, i, train, bn, first, None)
    }

    /// [`ResNet9::unit`], plus `skip` added at the end where given (fused batch norm + ReLU only).
    #[allow(clippy::too_many_arguments)]
    fn unit_with_skip(&self, g: &mut Graph<'_>, x: Var, i: usize, train: bool, bn: &mut [RunningStats], first: Option<usize>, skip: Option<Var>) -> Result<Var> {
        let u = &self.units[i];
        let w = match first {
            Some(f) => g.param(f + i)?,
            None => {
                let w = g.param(u.conv_w)?;
                let w = self.to_compute(g, w)?;
                self.to_trunk_layout(g, w)?
            }
        };
        let mut h = conv2d::conv2d(g, x, w, Conv2dParams { stride: 1, padding: 1 })?;
        if u.pool {
            let conv_out = h;
            h = ops::max_pool::max_pool2d(g, conv_out, 2)?;
            // The convolution's output, 4x the pooled size, is needed by no backward rule where
            // the pool saved the positions of its maxima (the CPU, and the GPU's fast path; see
            // `ops::max_pool`), and by nothing later: free it now.
            g.release_unread(conv_out);
        }
        let (gamma, beta) = (g.param(u.bn_gamma)?, g.param(u.bn_beta)?);
        let cfg = BatchNormConfig::default();
        if self.fuse_bn_relu {
            use ops::batch_norm_relu as bnr;
            return Ok(match (train, skip) {
                (true, None) => bnr::batch_norm_relu_train(g, h, gamma, beta, &mut bn[u.bn_stats], cfg)?,
                (true, Some(s)) => bnr::batch_norm_relu_add_train(g, h, gamma, beta, s, &mut bn[u.bn_stats], cfg)?,
                (false, None) => bnr::batch_norm_relu_eval(g, h, gamma, beta, &bn[u.bn_stats], cfg)?,
                (false, Some(s)) => bnr::batch_norm_relu_add_eval(g, h, gamma, beta, s, &bn[u.bn_stats], cfg)?,
            });
        }
        if skip.is_some() {
            return Err(Error::Invalid("a unit adds its residual input only with the fused batch norm + ReLU".into()).into());
        }
        h = if train {
            batch_norm::batch_norm_train(g, h, gamma, beta, &mut bn[u.bn_stats], cfg)?
        } else {
            batch_norm::batch_norm_eval(g, h, gamma, beta, &bn[u.bn_stats], cfg)?
        };
        let y = ops::relu::relu(g, h)?;
        // No backward rule reads the batch norm's output (its own rule reads its input, ReLU's
        // its output), and nothing after this uses it: free it now rather than at the end of
        // the step (23% of the values a unit keeps). The fused op never makes it.
        g.release_unread(h);
        Ok(y)
    }

    /// `state_dict` prefix of BN layer `i`.
    pub fn bn_name(&self, i: usize) -> &str {
        &self.units[i].bn_name
    }
}

/// The network's state: structure, parameters and BN running statistics.
#[derive(Clone, Debug)]
pub struct ResNet9 {
    pub arch: Arch,
    pub params: Vec<Tensor>,
    pub bn: Vec<RunningStats>,
}

impl ResNet9 {
    /// The convolution weights' compute copies in `target` (type, layout), one per unit in
    /// [`Arch::conv_weights`] order, made together (`ops::weight_copy::to_compute`: one launch
    /// on the GPU's fast path). For `Graph::with_extra` and [`Arch::forward_with_copies`].
    pub fn weight_copies(&self, (dtype, layout): (DType, Layout)) -> Result<Vec<Tensor>> {
        let ws: Vec<&Tensor> = self.arch.conv_weights().into_iter().map(|i| &self.params[i]).collect();
        Ok(ops::weight_copy::to_compute(&ws, dtype, layout)?)
    }

    /// The device holding the parameters.
    pub fn device(&self) -> engine::Device {
        self.params.first().map_or(engine::Device::Cpu, |p| p.device())
    }

    /// A copy of the parameters and BN running statistics on the same device (a failed device
    /// copy is an error, not a panic).
    pub fn clone_on_device(&self) -> Result<ResNet9> {
        let params = self.params.iter().map(Tensor::try_clone).collect::<engine::Result<Vec<_>>>()?;
        let bn = self
            .bn
            .iter()
            .map(|s| Ok(RunningStats { mean: s.mean.try_clone()?, var: s.var.try_clone()?, num_batches_tracked: s.num_batches_tracked }))
            .collect::<engine::Result<Vec<_>>>()?;
        Ok(ResNet9 { arch: self.arch.clone(), params, bn })
    }

    /// Move the parameters and the BN running statistics to `device` (f32 there).
    pub fn to_device(&mut self, device: &engine::Device) -> Result<()> {
        for p in &mut self.params {
            *p = p.to_device(device)?;
        }
        for s in &mut self.bn {
            s.mean = s.mean.to_device(device)?;
            s.var = s.var.to_device(device)?;
        }
        Ok(())
    }

    /// A freshly initialised network.
    pub fn new(width: f64, out_scale: f64, dtype: DType, rng: &mut impl Rng) -> Result<ResNet9> {
        let arch = Arch::new(width, out_scale)?;
        let params = arch.init_params(dtype, rng);
        let bn = arch.init_bn_stats(dtype);
        Ok(ResNet9 { arch, params, bn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_width_has_the_assignments_parameter_count() {
        let arch = Arch::new(1.0, 1.0).unwrap();
        assert_eq!(arch.num_params(), 6_573_130);
        assert_eq!(arch.summary(1).iter().map(|r| r.2).sum::<usize>(), 6_573_130);
    }

    #[test]
    fn names_are_unique_and_match_pytorch_layout() {
        let arch = Arch::new(1.0, 1.0).unwrap();
        let mut names = arch.param_names.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), arch.param_names.len());
        assert_eq!(arch.param_names[0], "prep.conv.weight");
        assert_eq!(arch.param_shapes[0], vec![64, 3, 3, 3]);
        assert_eq!(arch.param_names.last().unwrap(), "fc.bias");
        assert_eq!(arch.bn_names.len(), 8);
    }

    /// The forward frees each batch norm's output once its ReLU is recorded, so the unfused
    /// training tape holds what the fused one does (conv outputs, pool outputs, ReLU outputs:
    /// the fused op never makes the batch norm's output), but for the two residual blocks'
    /// ReLU outputs: the fused op adds the residual in the same pass and keeps only the sum
    /// (on the CPU its record keeps the ReLU output for the backward's mask; on the GPU
    /// nothing). Keeping the BN outputs would add C·H·W per image for each of the 8 units.
    #[test]
    fn the_forward_keeps_no_batch_norm_output() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let net = ResNet9::new(0.125, 0.125, DType::F32, &mut rng).unwrap();
        let x = Tensor::randn(&[3, 3, 32, 32], DType::F32, 1.0, &mut rng);
        let held = |fused: bool, train: bool| {
            let mut arch = net.arch.clone();
            arch.fuse_bn_relu = fused;
            let mut bn = net.bn.clone();
            let mut g = Graph::new(&net.params);
            let input = g.input(x.clone());
            arch.forward(&mut g, input, train, &mut bn).unwrap();
            g.held_elements()
        };
        let (unfused, fused) = (held(false, true), held(true, true));
        // The residual blocks' outputs: 3 images, layer 1's channels at 16x16, layer 3's at 4x4.
        let c = net.arch.channels;
        let residual_outputs = 3 * (c[1] * 16 * 16 + c[3] * 4 * 4);
        assert_eq!(unfused - fused, residual_outputs, "unfused {unfused}, fused {fused}");
        // Evaluation, with either (on the CPU the fused evaluation records the three ops): the
        // unfused training tape's values again.
        assert_eq!(held(false, false), unfused);
        assert_eq!(held(true, false), unfused);
    }

    #[test]
    fn width_scales_channels_and_rejects_nonsense() {
        let arch = Arch::new(0.25, 1.0).unwrap();
        assert_eq!(arch.channels, [16, 32, 64, 128]);
        assert!(Arch::new(0.0, 1.0).is_err());
        assert!(Arch::new(f64::NAN, 1.0).is_err());
    }
}
