"""The assignment's ResNet-9 in PyTorch, with the same parameter names as our engine.

Our checkpoints (`runs/<name>/model.safetensors`) are this module's `state_dict`:

    import torch, safetensors.torch
    from resnet9 import ResNet9
    model = ResNet9()
    model.load_state_dict(safetensors.torch.load_file("runs/run-1/model.safetensors"))

Structure (see model/src/resnet.rs): prep conv3x3(3->64)-BN-ReLU; layer1 conv3x3(64->128)-MaxPool2-BN-ReLU
plus res1 (conv-BN-ReLU x2) added; layer2 conv3x3(128->256)-MaxPool2-BN-ReLU; layer3 conv3x3(256->512)-MaxPool2-BN-ReLU
plus res2 added; MaxPool4; Linear(512->10); logits multiplied by out_scale.
"""
import torch
from torch import nn


class ConvBN(nn.Module):
    """conv3x3 (pad 1, no bias) -> [MaxPool2] -> BN -> ReLU; parameters `conv.weight`, `bn.*`."""

    def __init__(self, cin, cout, pool=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.pool(self.conv(x))))


class Residual(nn.Module):
    """x + (conv-BN-ReLU)(conv-BN-ReLU)(x); parameters `conv1.weight`, `bn1.*`, `conv2.weight`, `bn2.*`."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return x + h


class ResNet9(nn.Module):
    def __init__(self, width=1.0, out_scale=1.0, num_classes=10, channels=None):
        """`channels` (4 numbers, as in our checkpoints' metadata) overrides the ones `width` gives."""
        super().__init__()
        c = [max(1, int(b * width + 0.5)) for b in (64, 128, 256, 512)]  # rounds half up, as Rust's f64::round does here
        if channels is not None:
            c = [int(x) for x in channels]
        self.prep = ConvBN(3, c[0])
        self.layer1 = ConvBN(c[0], c[1], pool=True)
        self.res1 = Residual(c[1])
        self.layer2 = ConvBN(c[1], c[2], pool=True)
        self.layer3 = ConvBN(c[2], c[3], pool=True)
        self.res2 = Residual(c[3])
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(c[3], num_classes)
        self.out_scale = out_scale

    def forward(self, x):
        x = self.prep(x)
        x = self.res1(self.layer1(x))
        x = self.layer2(x)
        x = self.res2(self.layer3(x))
        x = self.pool(x).flatten(1)
        # The linear layer and the logits stay in the parameters' precision under bf16 autocast,
        # as in our engine (its --bf16 runs the convolutions in bf16, the linear layer in f32).
        with torch.autocast(x.device.type, enabled=False):
            return self.fc(x.to(self.fc.weight.dtype)) * self.out_scale


if __name__ == "__main__":
    m = ResNet9()
    print(sum(p.numel() for p in m.parameters()), "parameters")
    for k, v in m.state_dict().items():
        print(k, tuple(v.shape))
