"""Generate the PyTorch parity fixture used by tests/pytorch_parity.rs (committed in tests/fixtures/).

For the ResNet-9 of resnet9.py at width 1/16 (channels 4-8-16-32), in float64 and training mode:
random weights (PyTorch's default init, BN scale/shift perturbed away from 1/0), a batch of 8 random
inputs and labels, then one training step exactly as our recipe does it:
logits, the cross-entropy with label smoothing 0.1, every parameter's gradient, the BN running statistics
after the forward, and every parameter after one SGD step (lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4).

    python3 bench/make_parity_fixture.py   # writes tests/fixtures/resnet9_w16_step.safetensors
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet9 import ResNet9  # noqa: E402

WIDTH, OUT_SCALE, SMOOTHING = 1.0 / 16.0, 0.125, 0.1
LR, MOMENTUM, WD = 0.05, 0.9, 5e-4


def main():
    torch.manual_seed(20261124)
    model = ResNet9(width=WIDTH, out_scale=OUT_SCALE).double().train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".bn" in name:
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if name.endswith("weight") else torch.randn_like(p) * 0.1)
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([3, 7, 0, 9, 1, 1, 5, 2], dtype=torch.int64)
    out = {"input": x, "labels": labels}
    for name, t in model.state_dict().items():
        out[f"init.{name}"] = t.clone()
    logits = model(x)
    loss = F.cross_entropy(logits, labels, label_smoothing=SMOOTHING)
    loss.backward()
    out["logits"] = logits.detach()
    out["loss"] = loss.detach().reshape(1)
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad.clone()
    for name, t in model.state_dict().items():
        if "running" in name:
            out[f"after_forward.{name}"] = t.clone()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WD)
    opt.step()
    for name, p in model.named_parameters():
        out[f"after_step.{name}"] = p.detach().clone()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "resnet9_w16_step.safetensors")
    meta = {"width": str(WIDTH), "out_scale": str(OUT_SCALE), "label_smoothing": str(SMOOTHING), "lr": str(LR),
            "momentum": str(MOMENTUM), "weight_decay": str(WD), "torch": torch.__version__}
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata=meta)
    print(f"wrote {path}: {len(out)} tensors, loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
