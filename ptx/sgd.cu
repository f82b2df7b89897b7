// The SGD update of one parameter tensor, with torch.optim.SGD semantics
// (PyTorch's single-tensor "foreach=False" path):
//
//   d   = g + wd * p                              (only if wd != 0; else d = g)
//   if momentum != 0:
//       buf = first_step ? d : momentum * buf + (1 - dampening) * d
//       d   = nesterov ? d + momentum * buf : buf
//   p   = p - lr * d
//
// ONE THREAD updates ONE ELEMENT i of p (and of buf), in a grid-stride loop
// over n elements; any grid/block shape works.
//
// Every step is written with round-to-nearest intrinsics (__fmul_rn,
// __fadd_rn, __fsub_rn), so the compiler cannot fuse a multiply and an add
// into an FMA: the result is bit-identical to a CPU reference that evaluates
// the expressions above in f32, left to right, one rounding per operation,
// with (1 - dampening) computed in f32. Hyper-parameters are f32 here; the
// caller converts its f64 settings with `as f32`.
//
// When momentum == 0 the buffer is neither read nor written (buf may be null),
// as in PyTorch, which keeps no momentum buffer then.

extern "C" __global__ void sgd_update(
    float* p,                 // [n] parameter, updated in place
    const float* g,           // [n] gradient
    float* buf,               // [n] momentum buffer, updated in place (unused if momentum == 0)
    unsigned int n,
    float lr,
    float momentum,
    float dampening,
    float wd,                 // weight decay
    int nesterov,             // 0 or 1
    int first_step)           // 1 on the first step: buf = d (PyTorch's clone), 0 after
{
    const float keep = __fsub_rn(1.0f, dampening);
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < (unsigned long long)n; i += (unsigned long long)blockDim.x * gridDim.x) {
        const float pi = p[i];
        float d = g[i];
        if (wd != 0.0f) {
            d = __fadd_rn(d, __fmul_rn(wd, pi));
        }
        if (momentum != 0.0f) {
            const float b = first_step ? d : __fadd_rn(__fmul_rn(momentum, buf[i]), __fmul_rn(keep, d));
            buf[i] = b;
            d = nesterov ? __fadd_rn(d, __fmul_rn(momentum, b)) : b;
        }
        p[i] = __fsub_rn(pi, __fmul_rn(lr, d));
    }
}
