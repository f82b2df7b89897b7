// Layout conversion of a 4-d tensor [N, C, H, W] between NCHW (row-major) and NHWC
// ("channels last"). Pure data movement, so one template serves every element size:
// 2 bytes (bf16, `_u16`), 4 (f32, `_u32`) and 8 (f64, `_u64`).
//
// ONE THREAD writes ONE OUTPUT element (grid-stride loop over N*C*H*W), with HW = H*W:
//   nchw_to_nhwc: y[((n*HW + p)*C + c)] = x[((n*C + c)*HW + p)]
//   nhwc_to_nchw: y[((n*C + c)*HW + p)] = x[((n*HW + p)*C + c)]
// Writes are coalesced, reads are strided (a tiled shared-memory transpose is a later
// speed-up; these run on the input batch and the weights, not on every activation).
// Index arithmetic in 32 bits: the caller checks that N*C*H*W < 2^32 (64-bit division
// costs several times the instructions on the GPU, and these kernels are mostly division).

#define GRID_STRIDE_LOOP(i, total) \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (total); i += (unsigned long long)blockDim.x * gridDim.x)

template <typename T>
__device__ void nchw_to_nhwc_t(const T* x, T* y, unsigned int n, unsigned int c, unsigned int hw)
{
    const unsigned long long total = (unsigned long long)n * c * hw;
    GRID_STRIDE_LOOP(i, total) {
        const unsigned int e = (unsigned int)i;  // < total < 2^32
        const unsigned int ch = e % c, r = e / c;
        const unsigned int p = r % hw, b = r / hw;
        y[i] = x[(b * c + ch) * hw + p];
    }
}

template <typename T>
__device__ void nhwc_to_nchw_t(const T* x, T* y, unsigned int n, unsigned int c, unsigned int hw)
{
    const unsigned long long total = (unsigned long long)n * c * hw;
    GRID_STRIDE_LOOP(i, total) {
        const unsigned int e = (unsigned int)i;  // < total < 2^32
        const unsigned int p = e % hw, r = e / hw;
        const unsigned int ch = r % c, b = r / c;
        y[i] = x[(b * hw + p) * c + ch];
    }
}

extern "C" __global__ void nchw_to_nhwc_u16(const unsigned short* x, unsigned short* y, unsigned int n, unsigned int c, unsigned int hw) { nchw_to_nhwc_t(x, y, n, c, hw); }
extern "C" __global__ void nchw_to_nhwc_u32(const unsigned int* x, unsigned int* y, unsigned int n, unsigned int c, unsigned int hw) { nchw_to_nhwc_t(x, y, n, c, hw); }
extern "C" __global__ void nchw_to_nhwc_u64(const unsigned long long* x, unsigned long long* y, unsigned int n, unsigned int c, unsigned int hw) { nchw_to_nhwc_t(x, y, n, c, hw); }
extern "C" __global__ void nhwc_to_nchw_u16(const unsigned short* x, unsigned short* y, unsigned int n, unsigned int c, unsigned int hw) { nhwc_to_nchw_t(x, y, n, c, hw); }
extern "C" __global__ void nhwc_to_nchw_u32(const unsigned int* x, unsigned int* y, unsigned int n, unsigned int c, unsigned int hw) { nhwc_to_nchw_t(x, y, n, c, hw); }
extern "C" __global__ void nhwc_to_nchw_u64(const unsigned long long* x, unsigned long long* y, unsigned int n, unsigned int c, unsigned int hw) { nhwc_to_nchw_t(x, y, n, c, hw); }
