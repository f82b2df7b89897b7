// Max pooling, kernel = stride = k (ops/src/max_pool.rs).
//
//   y[n,c,i,j]  = x at the first maximum (row-major) of window (i, j),
//   dx[n,c,h,w] = dy[n,c,i,j]  if (h, w) is that first maximum of window (i, j),
//               = 0            otherwise.
//
// Two plans:
// - ONE THREAD per window and one value (`max_pool_backward{,_f64,_bf16}`, a backward only;
//   the forward is then cuDNN's): any layout, f32/f64/bf16; it finds the window's maximum
//   again from x.
// - ONE THREAD per window and 16-byte group of channels in NHWC (`max_pool_*_nhwc_*`): the
//   forward writes y and, per output value, the position p*k + q of its window's first
//   maximum in one byte (`idx`, in y's order); the backward reads those bytes and dy, not x.
//   So the forward's input (the convolution's output, 4x or 16x y's size) is not needed by the
//   backward and is freed after the forward: on a bf16 ResNet-9 step the three 2x2 pools'
//   inputs are 235 MB at batch 512, where their index bytes are 29 MB, and the backward reads
//   a byte per dy value instead of k*k values of x.
//
// x and dx are [N, C, H, W], dy is [N, C, OH, OW] with OH = H / k, OW = W / k, all three in
// the same memory order: NCHW (nhwc = 0) or NHWC (nhwc = 1). The windows do not overlap, so
// every element of dx under a window is written by exactly one thread; rows and columns past
// the last whole window (H or W not a multiple of k) are not written: the caller zeroes dx
// first then.
//
// The comparison is the CPU reference's: a value wins if it is greater than the best so far,
// or NaN where the best is not; so the first maximum wins ties and a NaN wins its window, as
// in PyTorch. Every y and dx element is a copy of an x or dy element or a zero: the results
// equal the CPU reference bit for bit. Element types: f32, f64 (`_f64`) and bf16 (`_bf16`,
// 16-bit patterns compared after exact widening to f32).
//
// The one-value thread index o runs over dy in its own memory order (w fastest in NCHW, c
// fastest in NHWC), so o is dy's flat index and neighbouring threads read neighbouring
// elements. Why not cuDNN's cudnnPoolingBackward: on an H200 (2026-11-26) it took 2.87 ms for
// the four pools of a bf16 NHWC ResNet-9 step (36% of the step), and 1.12 ms in f32 NCHW,
// where the one-value kernel only has to read x and dy and write dx once.

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

// ---- NHWC with 16-byte accesses: forward (y and idx) and backward (from idx) ----
//
// The same rule, ONE THREAD per window and group of LANES consecutive channels (4 f32 or 8
// bf16 values, one 16-byte load or store), where the kernel above moves 2 or 4 bytes per
// access; the forward replaces cuDNN's (cudnnPoolingForward: 0.28 ms of the bf16 step on an
// H200, 2026-11-26, for about 0.06 ms of memory traffic). Needs NHWC, C a multiple of LANES
// and 16-byte aligned buffers (idx too); the caller checks. The thread index o runs over y
// and dy in 16-byte units, so o is their vector index, and its LANES index bytes are
// idx[o*LANES .. o*LANES + LANES), one 4- or 8-byte access. Positions go up to k*k - 1, which
// must fit in a byte (k <= 16: the caller checks).

// Lane l of a 16-byte vector held as 4 words: f32 (LANES = 4, lane l is word l) or bf16
// (LANES = 8, lane 2m is word m's low half, 2m + 1 its high half): its value, exactly
// widened to f32, and the bits it occupies in its word.
template <int LANES>
__device__ __forceinline__ float mp_lane_value(const unsigned int* words, int l)
{
    return LANES == 4 ? __uint_as_float(words[l]) : __uint_as_float((words[l / 2] >> (16 * (l % 2))) << 16);
}
template <int LANES>
__device__ __forceinline__ unsigned int mp_lane_bits(int l)
{
    return LANES == 4 ? 0xffffffffu : 0xffffu << (16 * (l % 2));
}

// Lane by lane, whether vector v (window position pos, 0 for the window's first) beats the
// best so far, and if so, takes its place: position, bits in place, value.
template <int LANES>
__device__ __forceinline__ void mp_take(const uint4& v, unsigned int pos, float* best_v, unsigned int* best, unsigned int* best_bits)
{
    const unsigned int words[4] = {v.x, v.y, v.z, v.w};
    for (int l = 0; l < LANES; ++l) {
        const float val = mp_lane_value<LANES>(words, l);
        // v != v: NaN, as in the one-value kernel.
        if (pos == 0 || val > best_v[l] || (val != val && best_v[l] == best_v[l])) {
            best[l] = pos;
            best_bits[l] = words[l / (LANES / 4)] & mp_lane_bits<LANES>(l);
            best_v[l] = val;
        }
    }
}

// The first maximum of each lane over a k x k window whose top-left 16-byte vector is
// x[base], rows `row` vectors apart and columns `col` apart: per lane its position p*k + q
// in the window, and its bits in place within their word (the value copied exactly).
// k = 2 (the network's pools) loads the window's four vectors before comparing any, so that
// the four loads are in flight together; the general loop, whose trip count the compiler
// does not know, waits for each load before it issues the next (one 16-byte load in flight
// per thread: the H100's forward pool of [512, 128, 32, 32] took 0.089 ms at 5e7fb32, about
// three times its memory traffic's time).
template <int LANES>
__device__ __forceinline__ void mp_window_first_max(const uint4* x, unsigned int base, unsigned int row, unsigned int col,
                                                    unsigned int k, unsigned int* best, unsigned int* best_bits)
{
    float best_v[LANES];
    for (int l = 0; l < LANES; ++l) {
        best[l] = 0;
        best_bits[l] = 0;
        best_v[l] = 0.0f;  // replaced by the window's first value (pos 0)
    }
    if (k == 2) {
        const uint4 v0 = x[base], v1 = x[base + col], v2 = x[base + row], v3 = x[base + row + col];
        mp_take<LANES>(v0, 0, best_v, best, best_bits);
        mp_take<LANES>(v1, 1, best_v, best, best_bits);
        mp_take<LANES>(v2, 2, best_v, best, best_bits);
        mp_take<LANES>(v3, 3, best_v, best, best_bits);
        return;
    }
    for (unsigned int p = 0; p < k; ++p) {
        for (unsigned int q = 0; q < k; ++q) {
            mp_take<LANES>(x[base + p * row + q * col], p * k + q, best_v, best, best_bits);
        }
    }
}

// dy vector o's window: the vector index of its top-left corner in x, with o = dy's (and y's)
// vector index: ((ni*OH + i)*OW + j)*G + g for G = C/LANES groups of channels.
__device__ __forceinline__ unsigned int mp_window_base(unsigned int o, unsigned int groups, unsigned int h, unsigned int w,
                                                       unsigned int k)
{
    const unsigned int oh = h / k, ow = w / k;
    unsigned int r = o;
    const unsigned int g = r % groups; r /= groups;
    const unsigned int j = r % ow; r /= ow;
    const unsigned int i = r % oh;
    const unsigned int ni = r / oh;
    return ((ni * h + i * k) * w + j * k) * groups + g;
}

// Forward: y = each lane's first maximum (its bits, so a NaN window gives that NaN), and its
// window position in idx.
template <int LANES>
__device__ void max_pool_forward_nhwc_vec_t(const uint4* x, uint4* y, unsigned char* idx, unsigned int n, unsigned int c,
                                            unsigned int h, unsigned int w, unsigned int k)
{
    const unsigned int groups = c / LANES;
    const unsigned int total = n * (h / k) * (w / k) * groups;
    for (unsigned int o = blockIdx.x * blockDim.x + threadIdx.x; o < total; o += blockDim.x * gridDim.x) {
        unsigned int best[LANES], best_bits[LANES];
        mp_window_first_max<LANES>(x, mp_window_base(o, groups, h, w, k), w * groups, groups, k, best, best_bits);
        unsigned int out[4] = {0, 0, 0, 0};
        // Position of lane l in byte l % 4 of word l / 4 (little-endian: idx[o*LANES + l]).
        unsigned int pos[2] = {0, 0};
        for (int l = 0; l < LANES; ++l) {
            out[l / (LANES / 4)] |= best_bits[l];
            pos[l / 4] |= best[l] << (8 * (l % 4));
        }
        y[o] = uint4{out[0], out[1], out[2], out[3]};
        if (LANES == 4) {
            reinterpret_cast<unsigned int*>(idx)[o] = pos[0];
        } else {
            reinterpret_cast<uint2*>(idx)[o] = uint2{pos[0], pos[1]};
        }
    }
}

// Backward: dx = dy at each lane's saved window position, 0 elsewhere in the window.
template <int LANES>
__device__ void max_pool_backward_nhwc_idx_t(const unsigned char* idx, const uint4* dy, uint4* dx, unsigned int n,
                                             unsigned int c, unsigned int h, unsigned int w, unsigned int k)
{
    const unsigned int groups = c / LANES;
    const unsigned int total = n * (h / k) * (w / k) * groups;
    for (unsigned int o = blockIdx.x * blockDim.x + threadIdx.x; o < total; o += blockDim.x * gridDim.x) {
        const unsigned int base = mp_window_base(o, groups, h, w, k);
        unsigned int pos[2];
        if (LANES == 4) {
            pos[0] = reinterpret_cast<const unsigned int*>(idx)[o];
            pos[1] = 0;
        } else {
            const uint2 p = reinterpret_cast<const uint2*>(idx)[o];
            pos[0] = p.x;
            pos[1] = p.y;
        }
        const uint4 d = dy[o];
        const unsigned int dwords[4] = {d.x, d.y, d.z, d.w};
        for (unsigned int p = 0; p < k; ++p) {
            for (unsigned int q = 0; q < k; ++q) {
                unsigned int out[4] = {0, 0, 0, 0};
                for (int l = 0; l < LANES; ++l) {
                    if (((pos[l / 4] >> (8 * (l % 4))) & 0xffu) == p * k + q) {
                        out[l / (LANES / 4)] |= dwords[l / (LANES / 4)] & mp_lane_bits<LANES>(l);
                    }
                }
                dx[base + (p * w + q) * groups] = uint4{out[0], out[1], out[2], out[3]};
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
extern "C" __global__ void max_pool_backward_nhwc_idx(const unsigned char* idx, const uint4* dy, uint4* dx, unsigned int n,
                                                      unsigned int c, unsigned int h, unsigned int w, unsigned int k)
{
    max_pool_backward_nhwc_idx_t<4>(idx, dy, dx, n, c, h, w, k);
}
extern "C" __global__ void max_pool_backward_nhwc_idx_bf16(const unsigned char* idx, const uint4* dy, uint4* dx,
                                                           unsigned int n, unsigned int c, unsigned int h, unsigned int w,
                                                           unsigned int k)
{
    max_pool_backward_nhwc_idx_t<8>(idx, dy, dx, n, c, h, w, k);
}
extern "C" __global__ void max_pool_forward_nhwc_vec(const uint4* x, uint4* y, unsigned char* idx, unsigned int n,
                                                     unsigned int c, unsigned int h, unsigned int w, unsigned int k)
{
    max_pool_forward_nhwc_vec_t<4>(x, y, idx, n, c, h, w, k);
}
extern "C" __global__ void max_pool_forward_nhwc_vec_bf16(const uint4* x, uint4* y, unsigned char* idx, unsigned int n,
                                                          unsigned int c, unsigned int h, unsigned int w, unsigned int k)
{
    max_pool_forward_nhwc_vec_t<8>(x, y, idx, n, c, h, w, k);
}
