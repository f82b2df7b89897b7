"""How far PyTorch's own bf16 autocast moves ResNet-9's gradients from f32, at initialisation.

The calibration of our GPU test `one_bf16_resnet_step_agrees_with_the_f32_cpu_step`
(tests/cuda_train.rs): the same network (bench/resnet9.py, width 1, logit scale 0.125), a random
batch of 32 normal images, labels i*3 mod 10, cross-entropy with label smoothing 0.2 as in the
test; one backward pass in f32 and one under torch.autocast(bfloat16) from the same weights,
then the cosine similarity of each parameter's gradient between the two, the ratio of their
norms (bf16 over f32: a gradient scaled wrong keeps its cosine), and how far the logits and the
batch norms' running statistics after the step move (largest difference relative to the f32
tensor's largest value). Runs on the CPU (autocast on the CPU runs the convolutions in bf16 with
f32 accumulation, as cuDNN does).

    python bench/bf16_grad_cosine.py [--seeds 3] [--device cpu]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet9 import ResNet9  # noqa: E402


def grads(model, x, y, bf16):
    """The loss, every parameter's gradient, the logits and the BN running statistics after the
    pass (the model's state is put back afterwards, so that both passes start alike)."""
    model.zero_grad()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.2)
    loss.backward()
    stats = {k: v.detach().double().flatten().clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    model.load_state_dict(saved)
    g = {n: p.grad.detach().double().flatten().clone() for n, p in model.named_parameters()}
    return loss.item(), g, logits.detach().double().flatten(), stats


def rel_max(a, b):
    """Largest |a - b| relative to b's largest |value|."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cosines, ratios, stat_moves = {}, {}, {}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = ResNet9(1.0, 0.125).to(args.device).train()
        x = torch.randn(32, 3, 32, 32, device=args.device)
        y = torch.tensor([(i * 3) % 10 for i in range(32)], device=args.device)
        l32, g32, z32, s32 = grads(model, x, y, False)
        l16, g16, z16, s16 = grads(model, x, y, True)
        print(f"seed {seed}: loss f32 {l32:.6f}, bf16 autocast {l16:.6f}; logits: largest difference "
              f"{rel_max(z16, z32):.3e} of the largest, cosine {F.cosine_similarity(z16, z32, dim=0).item():.5f}")
        for n in g32:
            cosines.setdefault(n, []).append(F.cosine_similarity(g32[n], g16[n], dim=0).item())
            ratios.setdefault(n, []).append((g16[n].norm() / g32[n].norm().clamp_min(1e-300)).item())
        for k in s32:
            stat_moves.setdefault(k, []).append(rel_max(s16[k], s32[k]))
    print(f"torch {torch.__version__}, device {args.device}; cosine of bf16 vs f32 gradients per seed:")
    print("| parameter | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " |")
    print("| --- |" + " --- |" * args.seeds)
    for n, cs in cosines.items():
        print(f"| {n} | " + " | ".join(f"{c:.5f}" for c in cs) + " |")
    low = min((min(cs), n) for n, cs in cosines.items())
    print(f"lowest: {low[0]:.5f} ({low[1]})")
    print("norm of the bf16 gradient over the f32 one, per seed:")
    for n, rs in ratios.items():
        print(f"| {n} | " + " | ".join(f"{r:.4f}" for r in rs) + " |")
    far = max((max(abs(r - 1) for r in rs), n) for n, rs in ratios.items())
    print(f"farthest from 1: {far[0]:.4f} ({far[1]})")
    worst = max((max(v), k) for k, v in stat_moves.items())
    print(f"BN running statistics after the step: largest difference {worst[0]:.3e} of the largest value ({worst[1]})")


if __name__ == "__main__":
    main()
