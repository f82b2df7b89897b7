"""Where PyTorch spends one training step of this recipe, per operation, for comparison with our
`model profile` (issue 7: choose the next optimisation by measurement).

    python3 bench/torch_step_profile.py                      # bf16 autocast + channels-last, eager
    python3 bench/torch_step_profile.py --fp32               # fp32 (TF32 convolutions), NCHW
    python3 bench/torch_step_profile.py --compile            # + torch.compile
    python3 bench/torch_step_profile.py --device cpu --width 0.125 --batch-size 64 --steps 2   # smoke test

The step is train_torch.py's (the same network, augmentation on the device, SGD Nesterov with weight decay,
one-cycle LR set per step), on random uint8 images of CIFAR-10's shape, so no data files are needed.
After `--warmup` steps (cuDNN's algorithm search and, with --compile, the compilation), it prints:

1. the step time: `--steps` steps, each between CUDA events, median and min; and the same steps queued
   back to back (one synchronisation at the end), as our profile's "queued back to back" line;
2. the per-operation table: torch.profiler over `--steps` more steps, each operator's *self* device time
   (kernel time of the work it launched itself, not of operators it called), divided by the steps, the
   operators with the most time first; their sum is the GPU time of a step. Operator names are ATen's
   (`aten::cudnn_convolution` is the convolution forward, `aten::convolution_backward` both of its
   gradients, `aten::cudnn_batch_norm` / `aten::native_batch_norm` batch norm, `aten::_to_copy`/`aten::copy_`
   the autocast casts and layout copies, `aten::_foreach_*` the optimizer, and so on);
3. the same time grouped by the CUDA kernel's own name (`--kernels N` rows), which says which cuDNN
   engine ran each convolution.

On a CPU the device times are the operators' self CPU times (a smoke test of the script; not a GPU figure).
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet9 import ResNet9  # noqa: E402
from train_torch import augment  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--fp32", action="store_true", help="fp32 NCHW instead of bf16 autocast + channels-last")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic=False)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (algorithm search, compilation)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps, and profiled steps")
    ap.add_argument("--kernels", type=int, default=25, help="rows of the per-kernel table")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        ap.error("--steps must be at least 1, --warmup at least 0, --batch-size at least 1")
    return args


def self_device_us(evt, on_gpu):
    """An averaged profiler event's self time on the device (GPU kernels it launched), in microseconds,
    across PyTorch versions (self_device_time_total since 2.4, self_cuda_time_total before); the
    self CPU time when there is no GPU."""
    if not on_gpu:
        return evt.self_cpu_time_total
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return getattr(evt, name)
    return 0.0


def main(argv=None):
    args = parse_args(argv)
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("error: no CUDA device is visible to PyTorch; use --device cpu for a smoke test")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    amp, channels_last = not args.fp32, not args.fp32
    bs = args.batch_size

    model = ResNet9(width=args.width, out_scale=0.125).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model, dynamic=False) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    x_u8 = torch.randint(0, 256, (bs, 3, 32, 32), dtype=torch.uint8, device=dev, generator=gen)
    y = torch.randint(0, 10, (bs,), device=dev, generator=gen)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616], device=dev).view(1, 3, 1, 1)

    def step(i):
        xb = augment(x_u8, mean, std, gen)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        for g in opt.param_groups:  # as train_torch.py: the one-cycle LR is set every step
            g["lr"] = 0.01 + 1e-4 * i
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = fwd(xb)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if on_gpu:
            torch.cuda.synchronize(dev)

    variant = ("fp32, NCHW" if args.fp32 else "bf16 autocast, channels-last") + (", torch.compile" if args.compile else ", eager")
    name = torch.cuda.get_device_name(dev) if on_gpu else "cpu"
    print(f"Device: {name} (torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}); {variant}; "
          f"ResNet-9 width {args.width}, batch {bs}", flush=True)
    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync()
    print(f"{args.warmup} warm-up steps took {time.perf_counter() - t0:.2f}s", flush=True)

    times = []
    for i in range(args.steps):
        if on_gpu:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step(i)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            s = time.perf_counter()
            step(i)
            times.append(1e3 * (time.perf_counter() - s))
    sync()
    s = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync()
    queued = 1e3 * (time.perf_counter() - s) / args.steps
    med = statistics.median(times)
    print(f"{args.steps} steps timed one by one: median {med:.3f} ms, min {min(times):.3f} ms per step "
          f"({bs / med * 1e3:.0f} images/s at the median)")
    print(f"{args.steps} steps queued back to back: {queued:.3f} ms per step")

    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(args.steps):
            step(i)
        sync()
    # key_averages() holds the operators (device_type CPU: they run on the host and launch kernels) and,
    # with a GPU, the kernels themselves (device_type CUDA); an operator's self device time is the time of
    # the kernels it launched, so the two kinds are kept apart, or each kernel would count twice.
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    events = list(prof.key_averages())
    ops = [(e.key, e.count / args.steps, self_device_us(e, on_gpu) / 1e3 / args.steps) for e in events
           if getattr(e, "device_type", cpu) == cpu]
    ops = sorted((o for o in ops if o[2] > 0), key=lambda o: -o[2])
    total = sum(o[2] for o in ops)
    kind = "device" if on_gpu else "CPU (no GPU: not a GPU figure)"
    print(f"\nOne training step, self {kind} time per operator (torch.profiler, mean of {args.steps} steps):")
    print(f"{'operator':<44} {'calls':>6} {'ms':>9} {'share':>7}")
    for key, calls, ms in ops:
        print(f"{key[:44]:<44} {calls:>6.0f} {ms:>9.3f} {100 * ms / total:>6.1f}%")
    print(f"{'total':<44} {'':>6} {total:>9.3f} {100.0:>6.1f}%")

    if on_gpu:
        rows = sorted(((e.key, e.count, self_device_us(e, True)) for e in events if getattr(e, "device_type", cpu) == cuda),
                      key=lambda r: -r[2])
        print(f"\nThe kernels with the most time, per step ({len(rows)} kernels, the first {args.kernels} shown; "
              f"their sum: {sum(r[2] for r in rows) / 1e3 / args.steps:.3f} ms):")
        print(f"{'kernel':<90} {'calls':>6} {'ms':>9}")
        for kname, calls, us in rows[:args.kernels]:
            print(f"{kname[:90]:<90} {calls / args.steps:>6.0f} {us / 1e3 / args.steps:>9.3f}")

if __name__ == "__main__":
    main()
