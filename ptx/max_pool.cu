// Max pooling's backward, kernel = stride = k (ops/src/max_pool.rs; the forward is cuDNN's).
//
//   dx[n,c,h,w] = dy[n,c,i,j]  if (h, w) is the first maximum (row-major) of window (i, j),
//               = 0            otherwise.
//
// x and dx are [N, C, H, W], dy is [N, C, OH, OW] with OH = H / k, OW = W / k, all three in
// the same memory order: NCHW (nhwc = 0) or NHWC (nhwc = 1). ONE THREAD per window: it finds
// the window's maximum again from x (the comparison of the CPU reference: a value wins if it
// is greater than the best so far, or NaN where the best is not; so the first maximum wins
// ties and a NaN wins its window, as in PyTorch) and writes all k*k elements of dx under the
// window: dy at the maximum, 0 elsewhere. The windows do not overlap, so every element of dx
// under a window is written by exactly one thread; rows and columns past the last whole
// window (H or W not a multiple of k) are not written: the caller zeroes dx first then.
//
// The thread index o runs over dy in its own memory order (w fastest in NCHW, c fastest in
// NHWC), so o is dy's flat index and neighbouring threads read neighbouring elements.
// Why not cuDNN's cudnnPoolingBackward: on an H200 (2026-11-26) it took 2.87 ms for the
// four pools of a bf16 NHWC ResNet-9 step (36% of the step), and 1.12 ms in f32 NCHW, where
// this kernel only has to read x and dy and write dx once.
//
// Every dx element is a copy of a dy element or a zero: the result equals the CPU
// reference bit for bit. Element types: f32, f64 (`_f64`) and bf16 (`_bf16`, 16-bit
// patterns compared after exact widening to f32).

// Values compare as themselves in f32 and f64; bf16 bit patterns widen exactly to f32.
__device__ __forceinline__ float mp_value(float v) { return v; }
__device__ __forceinline__ double mp_value(double v) { return v; }
__device__ __forceinline__ float mp_value(unsigned short v) { return __uint_as_float(((unsigned int)v) << 16); }

// Flat index of element (n, c, h, w) of an [N, C, H, W] tensor in its memory order. 32-bit
// arithmetic: the caller checks that x has fewer than 2^32 elements (64-bit division and
// multiplication cost several times more instructions on the GPU).
__device__ __forceinline__ unsigned int mp_index(unsigned int n, unsigned int c, unsigned int h, unsigned int w,
                                                 unsigned int cc, unsigned int hh, unsigned int ww, unsigned int nhwc)
{
    return nhwc ? ((n * hh + h) * ww + w) * cc + c : ((n * cc + c) * hh + h) * ww + w;
}

template <typename T>
__device__ void max_pool_backward_t(const T* x, const T* dy, T* dx, unsigned int n, unsigned int c, unsigned int h,
                                    unsigned int w, unsigned int k, unsigned int nhwc)
{
    const unsigned int oh = h / k, ow = w / k;
    const unsigned int total = n * c * oh * ow;
    for (unsigned int o = blockIdx.x * blockDim.x + threadIdx.x; o < total; o += blockDim.x * gridDim.x) {
        // (ni, ci, i, j) of dy element o.
        unsigned int r = o, ci, i, j;
        if (nhwc) {
            ci = r % c; r /= c;
            j = r % ow; r /= ow;
            i = r % oh; r /= oh;
        } else {
            j = r % ow; r /= ow;
            i = r % oh; r /= oh;
            ci = r % c; r /= c;
        }
        const unsigned int ni = r;
        unsigned int best = mp_index(ni, ci, i * k, j * k, c, h, w, nhwc);
        auto best_v = mp_value(x[best]);
        for (unsigned int p = 0; p < k; ++p) {
            for (unsigned int q = 0; q < k; ++q) {
                const unsigned int at = mp_index(ni, ci, i * k + p, j * k + q, c, h, w, nhwc);
                const auto v = mp_value(x[at]);
                // v != v: v is NaN (no isnan without headers in NVRTC).
                if (v > best_v || (v != v && best_v == best_v)) {
                    best = at;
                    best_v = v;
                }
            }
        }
        const T g = dy[o];
        for (unsigned int p = 0; p < k; ++p) {
            for (unsigned int q = 0; q < k; ++q) {
                const unsigned int at = mp_index(ni, ci, i * k + p, j * k + q, c, h, w, nhwc);
                dx[at] = at == best ? g : T(0);
            }
        }
    }
}

extern "C" __global__ void max_pool_backward(const float* x, const float* dy, float* dx, unsigned int n, unsigned int c,
                                             unsigned int h, unsigned int w, unsigned int k, unsigned int nhwc)
{
    max_pool_backward_t(x, dy, dx, n, c, h, w, k, nhwc);
}
extern "C" __global__ void max_pool_backward_f64(const double* x, const double* dy, double* dx, unsigned int n,
                                                 unsigned int c, unsigned int h, unsigned int w, unsigned int k,
                                                 unsigned int nhwc)
{
    max_pool_backward_t(x, dy, dx, n, c, h, w, k, nhwc);
}
extern "C" __global__ void max_pool_backward_bf16(const unsigned short* x, const unsigned short* dy, unsigned short* dx,
                                                  unsigned int n, unsigned int c, unsigned int h, unsigned int w,
                                                  unsigned int k, unsigned int nhwc)
{
    max_pool_backward_t(x, dy, dx, n, c, h, w, k, nhwc);
}
