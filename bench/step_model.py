"""A roofline model of one ResNet-9 training step: what the arithmetic and the memory traffic of each
layer cost at a GPU's peak rates, so that a measured profile (`model profile`) can be read against it.

    python3 bench/step_model.py [--batch 512] [--bytes 4] [--tflops 400] [--tbps 3.0]

Prints a markdown table, one row per layer of the network (forward and backward together), and the
totals for one step and for 24 epochs. It is a model, not a measurement:
- a layer's time is max(its FLOPs / the compute rate, its bytes moved / the memory rate) (a roofline:
  the layer is limited by whichever takes longer), summed over the layers (nothing overlaps);
- FLOPs: 2 per multiply-add; a convolution's backward is two more of its forward (input gradient
  and weight gradient), except that the first layer needs no input gradient;
- bytes: each pass over an activation reads or writes all of it once; the passes counted per layer
  are those of an unfused implementation like ours by default (cuDNN's batch norm reads its input twice
  forward and its input and output gradient twice backward), written out in `PASSES` below;
- the weights, the optimizer (6.57 M parameters, a few passes: ~0.1 GB) and the augmentation (the
  3-channel input) are small and left out, as are launch overheads (what CUDA graphs remove) and
  caches (activations of 8x8 and 4x4 images fit in the 50 MB of L2 and cost less than modelled).

The default rates are those of an H100 as measured on this workplace's machines (KINDS.md of the
device tool, 2026-11): 798 TFLOP/s for a large bf16 matrix product, 3.0 TB/s for a device-to-device
copy counting reads and writes. For f32 convolutions with TF32 tensor cores NVIDIA's datasheet gives
495 TFLOP/s dense for the H100 SXM (not measured here): use --tflops 400 as a round figure.
"""
import argparse

# Passes over each activation of a unit, by kind of layer (forward + backward, unfused):
# conv: read x, write y | backward: read dy, write dx (input grad), read x + dy (weight grad).
# pool: read x, write y (1/4 or 1/16 of x) and one index byte per y value (the window position of
#     its maximum) | backward: read the index bytes and dy, write dx (ops/src/max_pool.rs, the
#     channels-last path; the other path reads x and dy instead of the bytes).
# bn (training): read x twice (statistics, then normalise), write y | backward: read x and dy
#     (sums), read them again and write dx.
# relu: read x, write y | backward: read y and dy, write dx.
# add: read a and b, write y | backward: the gradient goes on to both inputs, itself to one and a copy
#     to the other (read 1, write 1), and the block's first convolution adds its input gradient into
#     the first (cuDNN's beta = 1: read 1).
PASSES = {
    "bn": 3 + 5,
    "relu": 2 + 3,
    "add": 3 + 3,
}
# With --fused-bn-relu: our kernel makes two passes forward (statistics; normalise + ReLU + write) and
# two backward (sums; apply), over input and output: forward read x twice, write y once; backward read x
# and dy twice, write dx once.
FUSED_BN_RELU = 3 + 5
# ... and each residual block's add is part of its last batch norm + ReLU's output pass: forward, that
# pass also reads the skip; backward, the gradient goes on to the block's input with no copy, and the
# block's first convolution adds its input gradient into it (cuDNN's beta = 1: one more read). The
# unfused add's count above includes that read too.
FUSED_ADD = 1 + 1


def layers(width=1.0, batch=512):
    """(name, kind, FLOPs of the forward pass, activation sizes in elements) for every layer."""
    c = [max(1, int(b * width + 0.5)) for b in (64, 128, 256, 512)]
    out = []

    def conv(name, cin, cout, hw, first=False):
        flops = 2 * 9 * cin * cout * hw * hw * batch
        out.append((name, "conv", flops, {"in": cin * hw * hw * batch, "out": cout * hw * hw * batch, "first": first}))
        return cout * hw * hw * batch

    def unit(name, cin, cout, hw, pool, first=False):
        n = conv(f"{name} conv", cin, cout, hw, first)
        if pool:
            out.append((f"{name} max-pool 2", "pool", 0, {"in": n, "out": n // 4}))
            n //= 4
        out.append((f"{name} batch norm + ReLU", "bn_relu", 0, {"x": n}))
        return n

    unit("prep", 3, c[0], 32, False, first=True)
    unit("layer1", c[0], c[1], 32, True)
    unit("res1 a", c[1], c[1], 16, False)
    n = unit("res1 b", c[1], c[1], 16, False)
    out.append(("res1 add", "add", 0, {"x": n}))
    unit("layer2", c[1], c[2], 16, True)
    unit("layer3", c[2], c[3], 8, True)
    unit("res2 a", c[3], c[3], 4, False)
    n = unit("res2 b", c[3], c[3], 4, False)
    out.append(("res2 add", "add", 0, {"x": n}))
    out.append(("max-pool 4", "pool", 0, {"in": n, "out": n // 16}))
    out.append(("linear", "linear", 2 * c[3] * 10 * batch, {"in": c[3] * batch, "out": 10 * batch}))
    return out


def cost(kind, fwd_flops, size, elem_bytes, fused):
    """(FLOPs, bytes) of one layer, forward and backward."""
    if kind == "conv":
        flops = fwd_flops * (2 if size["first"] else 3)
        moved = size["in"] + size["out"]  # forward: read x, write y
        moved += size["out"] + (0 if size["first"] else size["in"])  # input gradient: read dy, write dx
        moved += size["in"] + size["out"]  # weight gradient: read x and dy
        return flops, moved * elem_bytes
    if kind == "pool":
        moved = (size["in"] + size["out"]) * elem_bytes + size["out"]  # forward: read x, write y and the index bytes
        moved += size["out"] + (size["out"] + size["in"]) * elem_bytes  # backward: read the bytes and dy, write dx
        return 0, moved
    if kind == "bn_relu":
        passes = FUSED_BN_RELU if fused else PASSES["bn"] + PASSES["relu"]
        return 0, passes * size["x"] * elem_bytes
    if kind == "add":
        return 0, (FUSED_ADD if fused else PASSES["add"]) * size["x"] * elem_bytes
    if kind == "linear":
        return 3 * fwd_flops, 3 * (size["in"] + size["out"]) * 4
    raise ValueError(kind)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--bytes", type=int, default=4, help="bytes per activation element: 4 (f32) or 2 (bf16)")
    ap.add_argument("--tflops", type=float, default=400.0, help="compute rate, TFLOP/s (bf16 on an H100: 798 measured)")
    ap.add_argument("--tbps", type=float, default=3.0, help="memory rate, TB/s counting reads and writes (H100: 3.0 measured)")
    ap.add_argument("--fused-bn-relu", action="store_true", help="count our fused batch norm + ReLU's passes")
    ap.add_argument("--steps", type=int, default=98 * 24, help="training steps to total (default: 24 epochs of 50,000)")
    args = ap.parse_args()

    rows, tot_f, tot_b, tot_t = [], 0.0, 0.0, 0.0
    for name, kind, fwd, size in layers(args.width, args.batch):
        flops, moved = cost(kind, fwd, size, args.bytes, args.fused_bn_relu)
        t_compute = flops / (args.tflops * 1e12)
        t_memory = moved / (args.tbps * 1e12)
        t = max(t_compute, t_memory)
        tot_f, tot_b, tot_t = tot_f + flops, tot_b + moved, tot_t + t
        rows.append((name, flops / 1e9, moved / 1e6, t_compute * 1e3, t_memory * 1e3, t * 1e3,
                     "compute" if t_compute >= t_memory else "memory"))
    print(f"One training step, batch {args.batch}, width {args.width}, {args.bytes}-byte activations, "
          f"{args.tflops:g} TFLOP/s, {args.tbps:g} TB/s{', fused BN + ReLU' if args.fused_bn_relu else ''}:\n")
    print("| layer | GFLOP | MB moved | compute ms | memory ms | model ms | bound by |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.0f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]} |")
    print(f"| **total** | **{tot_f / 1e9:.0f}** | **{tot_b / 1e6:.0f}** | **{tot_f / (args.tflops * 1e12) * 1e3:.2f}** | "
          f"**{tot_b / (args.tbps * 1e12) * 1e3:.2f}** | **{tot_t * 1e3:.2f}** | |")
    print(f"\n{args.steps} steps: {tot_t * args.steps:.1f} s of training at this model's rates "
          f"(arithmetic alone: {tot_f * args.steps / (args.tflops * 1e12):.1f} s; memory traffic alone: "
          f"{tot_b * args.steps / (args.tbps * 1e12):.1f} s), test evaluation not included.")


if __name__ == "__main__":
    main()
