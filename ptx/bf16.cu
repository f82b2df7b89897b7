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
