// The SGD update of every parameter tensor in ONE launch, with torch.optim.SGD
// semantics (per element, as PyTorch's single-tensor path computes it):
//
//   d   = g + wd * p                              (only if wd != 0; else d = g)
//   if momentum != 0:
//       buf = first_step ? d : momentum * buf + (1 - dampening) * d
//       d   = nesterov ? d + momentum * buf : buf
//   p   = p - lr * d
//
// The tensors arrive as a table passed BY VALUE in the kernel's parameters (up to
// SGD_MAX_TENSORS of them; 1.6 KB, far under the 4 KB parameter limit), so no upload
// precedes the launch (PyTorch's multi_tensor_apply does the same). The grid is one row
// of blocks, every block busy: tensor t owns blocks block0[t] .. block0[t+1]-1 (the
// caller's prefix sums of ceil(n / (blockDim.x * SGD_PER_THREAD))), and block j of a tensor
// updates its elements j*blockDim.x*SGD_PER_THREAD + k*blockDim.x + threadIdx.x for
// k < SGD_PER_THREAD: ONE THREAD updates SGD_PER_THREAD ELEMENTS of p (and of buf), a
// warp's accesses consecutive. (The layout before this one gave each tensor a block row
// of its own, sized for the largest, which left most blocks of the small tensors' rows
// empty: 26 rows of up to 1024 blocks for the ResNet's 6.5M parameters.)
//
// Every step is written with round-to-nearest intrinsics (__fmul_rn, __fadd_rn,
// __fsub_rn), so the compiler cannot fuse a multiply and an add into an FMA: the
// result is bit-identical to a CPU reference that evaluates the expressions above
// in f32, left to right, one rounding per operation, with (1 - dampening) computed
// in f32. Hyper-parameters are f32 here; the caller converts its f64 settings.
//
// With lr_ptr not null, the LR is *lr_ptr instead of lr: a training step captured as a
// CUDA graph reads each replay's LR from device memory (see graph_step.cu).
//
// When momentum == 0 the buffer is neither read nor written (buf may be null), as
// in PyTorch, which keeps no momentum buffer then.
//
// A gradient may also arrive as the gradient of the parameter's bf16 channels-last compute
// copy (g16 not null: a convolution weight [K, C, R, S] whose copy is laid out [K, R, S, C],
// ops/src/weight_copy.rs): element i = (k*C + c)*RS + p of the parameter then takes the
// copy's element (k*RS + p)*C + c, widened to f32 (exactly), which is what the separate
// conversion (weight_grads_to_f32_kcrs in bf16.cu) would have stored for it: the same bits,
// with one launch and one pass over the gradients fewer.

#define SGD_MAX_TENSORS 32
#define SGD_PER_THREAD 4   // elements per thread (ops/src/sgd.rs PER_THREAD)

struct SgdTable {
    float* p[SGD_MAX_TENSORS];          // parameters, updated in place
    const float* g[SGD_MAX_TENSORS];    // gradients (f32, the parameter's order), or null where g16 is set
    float* buf[SGD_MAX_TENSORS];        // momentum buffers, updated in place
    const unsigned short* g16[SGD_MAX_TENSORS];  // null, or the bf16 [K, R, S, C] gradient of a [K, C, R, S] parameter
    unsigned int n[SGD_MAX_TENSORS];    // element counts
    int first_step[SGD_MAX_TENSORS];    // 1: buf = d (PyTorch's clone on the first step)
    unsigned int block0[SGD_MAX_TENSORS];  // first block of each tensor (prefix sums)
    unsigned int c16[SGD_MAX_TENSORS];  // C of a g16 gradient
    unsigned int rs16[SGD_MAX_TENSORS]; // R*S of a g16 gradient
};

// Element i = (k*C + c)*RS + p of a [K, C, R, S] tensor: its index in the [K, R, S, C] order.
// In 32 bits (the tensor's n < 2^32, checked by the caller): 64-bit divisions are many times
// slower.
__device__ __forceinline__ unsigned int sgd_krsc(unsigned int i, unsigned int c, unsigned int rs)
{
    const unsigned int crs = c * rs;
    const unsigned int k = i / crs, r = i - k * crs;
    const unsigned int ch = r / rs, p = r - ch * rs;
    return (k * rs + p) * c + ch;
}

extern "C" __global__ void sgd_update_multi(
    const SgdTable table,
    unsigned int count,       // tensors in the table
    float lr,
    const float* lr_ptr,      // null, or where this step's LR is
    float momentum,
    float dampening,
    float wd,                 // weight decay
    int nesterov)             // 0 or 1
{
    // This block's tensor: the last one starting at or before it (an empty tensor owns no
    // block, so the one after it, starting at the same block, is taken).
    const unsigned int blk = blockIdx.x;
    if (count == 0) {
        return;
    }
    unsigned int t = 0;
    while (t + 1 < count && table.block0[t + 1] <= blk) {
        ++t;
    }
    float* p = table.p[t];
    const float* g = table.g[t];
    const unsigned short* g16 = table.g16[t];
    const unsigned int c16 = table.c16[t], rs16 = table.rs16[t];
    float* buf = table.buf[t];
    const unsigned int n = table.n[t];
    const int first_step = table.first_step[t];
    const float keep = __fsub_rn(1.0f, dampening);
    if (lr_ptr != 0) {
        lr = *lr_ptr;
    }
    const unsigned long long first = (unsigned long long)(blk - table.block0[t]) * blockDim.x * SGD_PER_THREAD + threadIdx.x;
    for (unsigned int k = 0; k < SGD_PER_THREAD; ++k) {
        const unsigned long long i = first + (unsigned long long)k * blockDim.x;
        if (i >= n) {
            continue;
        }
        const float pi = p[i];
        // A bf16 value is the top half of the f32 with the same value.
        float d = g16 ? __uint_as_float((unsigned int)g16[sgd_krsc((unsigned int)i, c16, rs16)] << 16) : g[i];
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
