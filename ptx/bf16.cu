// Kernels of the bf16 mixed-precision path: activations and their gradients in
// bfloat16 (the top 16 bits of an f32: sign, 8-bit exponent, 7-bit fraction),
// arithmetic in f32. bf16 values travel as `unsigned short` bit patterns (NVRTC
// from PyPI has no cuda_bf16.h); the two conversions below are the whole format.
// Each kernel is a grid-stride loop: ONE THREAD handles element i, then i + stride.
//
// Conversion f32 -> bf16 rounds to nearest, ties to even (like PyTorch's
// `.to(torch.bfloat16)` and the `half` crate's `bf16::from_f32`); NaN stays a quiet
// NaN. bf16 -> f32 is exact. Every output is (at most) one f32 operation on inputs
// widened exactly, then one rounding, so the host can reproduce it bit for bit.

#define GRID_STRIDE_LOOP(i, n) \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (unsigned long long)(n); i += (unsigned long long)blockDim.x * gridDim.x)

typedef unsigned short bf16;

// Widen: the bf16 bits are the f32's top 16 bits.
__device__ __forceinline__ float to_f32(bf16 h)
{
    return __uint_as_float(((unsigned int)h) << 16);
}

// Narrow with round to nearest even: add 0x7fff plus the lowest kept bit, truncate.
__device__ __forceinline__ bf16 to_bf16(float x)
{
    const unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16)((u >> 16) | 0x0040u);  // NaN: keep the sign, force quiet
    }
    return (bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// f32_to_bf16: y[i] = bf16(x[i])
extern "C" __global__ void f32_to_bf16(const float* x, bf16* y, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = to_bf16(x[i]);
    }
}

// bf16_to_f32: y[i] = x[i] (exact widening)
extern "C" __global__ void bf16_to_f32(const bf16* x, float* y, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = to_f32(x[i]);
    }
}

// relu_forward_bf16: y[i] = x[i] > 0 ? x[i] : +0   (no rounding: a copy or a zero)
extern "C" __global__ void relu_forward_bf16(const bf16* x, bf16* y, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = to_f32(x[i]) > 0.0f ? x[i] : (bf16)0;
    }
}

// relu_backward_bf16: dx[i] = y[i] > 0 ? dy[i] : +0   (y is the forward output)
extern "C" __global__ void relu_backward_bf16(const bf16* y, const bf16* dy, bf16* dx, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        dx[i] = to_f32(y[i]) > 0.0f ? dy[i] : (bf16)0;
    }
}

// add_bf16: y[i] = bf16(f32(a[i]) + f32(b[i]))
extern "C" __global__ void add_bf16(const bf16* a, const bf16* b, bf16* y, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = to_bf16(__fadd_rn(to_f32(a[i]), to_f32(b[i])));
    }
}

// accumulate_bf16: a[i] = bf16(f32(a[i]) + f32(b[i]))   (gradient accumulation)
extern "C" __global__ void accumulate_bf16(bf16* a, const bf16* b, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        a[i] = to_bf16(__fadd_rn(to_f32(a[i]), to_f32(b[i])));
    }
}

// ---- 8 values per thread (16-byte loads and stores) ----
//
// add_bf16_x8 and accumulate_bf16_x8 compute exactly what add_bf16 and accumulate_bf16 do,
// element for element, but each thread moves 8 bf16 (one 16-byte access per operand) where
// those move 2 bytes; the residual adds and gradient accumulations are such passes over
// activations. Thread g takes elements 8g .. 8g+7 for g < n/8, and the last n % 8 elements
// one per thread. The caller checks that every buffer is 16-byte aligned.

// Element k (0..7) of 16 bytes held as 4 words (element 2m is word m's low half), and back.
__device__ __forceinline__ bf16 lane8(const uint4 v, int k)
{
    const unsigned int w = k < 2 ? v.x : k < 4 ? v.y : k < 6 ? v.z : v.w;
    return (bf16)(k % 2 ? w >> 16 : w & 0xffffu);
}
__device__ __forceinline__ uint4 join8(const bf16* e)
{
    return uint4{(unsigned int)e[0] | ((unsigned int)e[1] << 16), (unsigned int)e[2] | ((unsigned int)e[3] << 16),
                 (unsigned int)e[4] | ((unsigned int)e[5] << 16), (unsigned int)e[6] | ((unsigned int)e[7] << 16)};
}

// The sum of two 16-byte groups, element by element as add_bf16 rounds it.
__device__ __forceinline__ uint4 add8(const uint4 a, const uint4 b)
{
    bf16 y[8];
    for (int k = 0; k < 8; ++k) {
        y[k] = to_bf16(__fadd_rn(to_f32(lane8(a, k)), to_f32(lane8(b, k))));
    }
    return join8(y);
}

// add_bf16_x8: y[i] = bf16(f32(a[i]) + f32(b[i])), 8 per thread
extern "C" __global__ void add_bf16_x8(const bf16* a, const bf16* b, bf16* y, unsigned int n)
{
    GRID_STRIDE_LOOP(g, n / 8) {
        reinterpret_cast<uint4*>(y)[g] = add8(reinterpret_cast<const uint4*>(a)[g], reinterpret_cast<const uint4*>(b)[g]);
    }
    GRID_STRIDE_LOOP(t, n % 8) {
        const unsigned long long i = n / 8 * 8 + t;
        y[i] = to_bf16(__fadd_rn(to_f32(a[i]), to_f32(b[i])));
    }
}

// accumulate_bf16_x8: a[i] = bf16(f32(a[i]) + f32(b[i])), 8 per thread
extern "C" __global__ void accumulate_bf16_x8(bf16* a, const bf16* b, unsigned int n)
{
    GRID_STRIDE_LOOP(g, n / 8) {
        uint4* av = reinterpret_cast<uint4*>(a);
        av[g] = add8(av[g], reinterpret_cast<const uint4*>(b)[g]);
    }
    GRID_STRIDE_LOOP(t, n % 8) {
        const unsigned long long i = n / 8 * 8 + t;
        a[i] = to_bf16(__fadd_rn(to_f32(a[i]), to_f32(b[i])));
    }
}


// ---- The convolution weights' bf16 channels-last copies, every tensor in ONE launch ----
//
// For tensor t of the table, the parameter W [K, C, R, S] in f32 (KCRS: PyTorch's order, the
// one our parameters keep) and its compute copy Wc [K, R, S, C] in bf16 (KRSC: channels last,
// what the convolutions read), with RS = R*S:
//
//   weights_to_bf16_krsc:     Wc[(k*RS + p)*C + c] = bf16(W[(k*C + c)*RS + p])
//   weight_grads_to_f32_kcrs: dW[(k*C + c)*RS + p] = f32(dWc[(k*RS + p)*C + c])   (exact)
//
// the same values as a layout conversion and a cast one after the other (ops/src/layout.rs,
// f32_to_bf16 above), in one pass and one launch for all of them instead of two launches per
// tensor each way. The table (WCOPY_MAX_TENSORS tensors, 512 bytes) is passed BY VALUE, as
// sgd.cu's: tensor t owns the blocks block0[t] .. block0[t+1]-1 of a one-row grid (the caller's
// prefix sums of ceil(K*C*RS / blockDim.x)), and ONE THREAD writes ONE OUTPUT element, so a
// warp's writes are consecutive. Index arithmetic in 32 bits: the caller checks each tensor
// has fewer than 2^32 elements.

#define WCOPY_MAX_TENSORS 16

struct WeightCopyTable {
    unsigned long long src[WCOPY_MAX_TENSORS];  // device addresses
    unsigned long long dst[WCOPY_MAX_TENSORS];
    unsigned int k[WCOPY_MAX_TENSORS];
    unsigned int c[WCOPY_MAX_TENSORS];
    unsigned int rs[WCOPY_MAX_TENSORS];
    unsigned int block0[WCOPY_MAX_TENSORS];
};

// This block's tensor (the last one starting at or before it; an empty tensor owns no block)
// and this thread's output element within it; false when the thread has none.
__device__ __forceinline__ bool wcopy_element(const WeightCopyTable& table, unsigned int count, unsigned int* t,
                                              unsigned int* i)
{
    const unsigned int blk = blockIdx.x;
    if (count == 0) {
        return false;
    }
    unsigned int u = 0;
    while (u + 1 < count && table.block0[u + 1] <= blk) {
        ++u;
    }
    *t = u;
    *i = (blk - table.block0[u]) * blockDim.x + threadIdx.x;
    return *i < table.k[u] * table.c[u] * table.rs[u];
}

extern "C" __global__ void weights_to_bf16_krsc(const WeightCopyTable table, unsigned int count)
{
    unsigned int t, i;
    if (!wcopy_element(table, count, &t, &i)) {
        return;
    }
    const unsigned int c = table.c[t], rs = table.rs[t];
    // Output i in KRSC order: channel fastest.
    const unsigned int ch = i % c, r = i / c;
    const unsigned int p = r % rs, k = r / rs;
    const float* w = reinterpret_cast<const float*>(table.src[t]);
    reinterpret_cast<bf16*>(table.dst[t])[i] = to_bf16(w[(k * c + ch) * rs + p]);
}

// weights_to_bf16_krsc_tiled: the same copies, ONE BLOCK per output channel k of a tensor
// (block0[t] = the K of the tensors before t: the caller's prefix sums). For one k, W's row
// W[k, :, :, :] and Wc's row Wc[k, :, :, :] are each C*RS consecutive values, only ordered
// differently, so the block reads W's row in order into shared memory (neighbouring threads,
// neighbouring floats) and writes Wc's row in order, two channels per 4-byte store where C is
// even (one bf16 per store where it is odd: the first layer's 3 channels). The one-thread-per-
// element kernel above reads W at a stride of RS floats from neighbouring threads instead; on
// an H100 it took 0.048 ms per step for the network's 6.5 M weights (39 MB moved: about
// 0.013 ms at 3 TB/s). The caller uses this one when every tensor's C*RS fits WCOPY_TILE.
#define WCOPY_TILE 4608  // floats of one row in shared memory (18 KB): 512 channels x 3x3, the network's widest

extern "C" __global__ void weights_to_bf16_krsc_tiled(const WeightCopyTable table, unsigned int count)
{
    __shared__ float row[WCOPY_TILE];
    if (count == 0) {
        return;
    }
    // This block's tensor (the last one starting at or before it; an empty tensor owns no
    // block) and output channel. Every thread of the block takes the same branches.
    const unsigned int blk = blockIdx.x;
    unsigned int t = 0;
    while (t + 1 < count && table.block0[t + 1] <= blk) {
        ++t;
    }
    const unsigned int k = blk - table.block0[t], c = table.c[t], rs = table.rs[t], n = c * rs;
    // (Neither holds for a launch of ops/src/weight_copy.rs, which sizes the grid from the K's
    // and uses this kernel only where every C*RS fits its TILE, equal to WCOPY_TILE.)
    if (k >= table.k[t] || n > WCOPY_TILE) {
        return;
    }
    const float* w = reinterpret_cast<const float*>(table.src[t]) + (unsigned long long)k * n;
    for (unsigned int j = threadIdx.x; j < n; j += blockDim.x) {
        row[j] = w[j];
    }
    __syncthreads();
    bf16* out = reinterpret_cast<bf16*>(table.dst[t]) + (unsigned long long)k * n;
    if (c % 2 == 0) {
        // Output pair i holds KRSC positions 2i and 2i + 1: kernel position p, channels ch and
        // ch + 1 (C even: a pair never straddles two positions). n is even, so each row starts
        // 4-byte aligned in a 4-byte aligned buffer.
        unsigned int* out2 = reinterpret_cast<unsigned int*>(out);
        for (unsigned int i = threadIdx.x; i < n / 2; i += blockDim.x) {
            const unsigned int ch = (2 * i) % c, p = (2 * i) / c;
            out2[i] = (unsigned int)to_bf16(row[ch * rs + p]) | ((unsigned int)to_bf16(row[(ch + 1) * rs + p]) << 16);
        }
    } else {
        for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
            const unsigned int ch = i % c, p = i / c;
            out[i] = to_bf16(row[ch * rs + p]);
        }
    }
}

extern "C" __global__ void weight_grads_to_f32_kcrs(const WeightCopyTable table, unsigned int count)
{
    unsigned int t, i;
    if (!wcopy_element(table, count, &t, &i)) {
        return;
    }
    const unsigned int c = table.c[t], rs = table.rs[t];
    // Output i in KCRS order: the kernel position fastest.
    const unsigned int p = i % rs, r = i / rs;
    const unsigned int ch = r % c, k = r / c;
    const bf16* dw = reinterpret_cast<const bf16*>(table.src[t]);
    reinterpret_cast<float*>(table.dst[t])[i] = to_f32(dw[(k * rs + p) * c + ch]);
}
