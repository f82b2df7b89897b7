// Batch norm (training mode) fused with the ReLU that follows it: the forward reads x
// twice (statistics, then output) and writes y once, where cuDNN's batch norm and a
// separate ReLU read x twice, write z, read z and write y; the backward recomputes the
// ReLU's mask from x instead of reading y or z. See ops/src/batch_norm_relu.rs for the
// math; per channel c over its M = N*H*W values:
//
//   forward:  mean, var (biased) -> invstd = 1/sqrt(var + eps)
//             (evaluation: the running mean and variance instead)
//             scale = gamma*invstd, shift = beta - mean*scale
//             z = fma(x, scale, shift), y = z > 0 ? z : 0
//   backward: dz = z > 0 ? dy : 0, xhat = (x - mean)*invstd
//             dbeta = sum dz, dgamma = sum dz*xhat
//             dx = gamma*invstd * (dz - dbeta/M - xhat*dgamma/M)
//
// z is computed with the same fma in the forward and the backward, so the backward's
// mask is exactly the forward's.
//
// Element types: data T in f32, f64 or bf16 (bit patterns in unsigned short), with
// statistics, parameters and sums in A = f32 (f32 and bf16 data) or f64. Layouts: NCHW
// (element (n, c, s) at (n*C + c)*HW + s) or NHWC (at (n*HW + s)*C + c). Per-channel
// sums are done in two stages: each block reduces one chunk of one channel (NCHW), of 32
// channels (NHWC) or of all channels (NHWC with 16-byte loads, the `_vec` kernels) into
// `partial[split][c]`, and a finalize kernel merges the splits.
// Means and variances are merged with Chan et al.'s pairwise update (count, mean, M2),
// which does not lose precision to cancellation like a sum of squares.
//
// Kernel names: <name> for f32 data, <name>_f64, <name>_bf16.

typedef unsigned short bf16;

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
// The bf16 bits are the f32's top 16 bits (exact).
__device__ __forceinline__ float widen(bf16 h) { return __uint_as_float(((unsigned int)h) << 16); }

__device__ __forceinline__ void narrow(float v, float* out) { *out = v; }
__device__ __forceinline__ void narrow(double v, double* out) { *out = v; }
// Round to nearest even, NaN kept quiet: the same conversion as to_bf16 in bf16.cu.
__device__ __forceinline__ void narrow(float v, bf16* out)
{
    const unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        *out = (bf16)((u >> 16) | 0x0040u);
        return;
    }
    *out = (bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#define BNR_THREADS 256   // threads of the NCHW and vectorised NHWC reduction blocks (launched with exactly this)
#define BNR_NHWC_X 32     // channels per NHWC reduction block (threadIdx.x)
#define BNR_NHWC_Y 8      // rows reduced in parallel per NHWC block (threadIdx.y)
#define BNR_FIN_X 8       // channels per finalize block (threadIdx.x)
#define BNR_FIN_Y 32      // lanes over the splits per finalize block (threadIdx.y)
#define BNR_UNROLL 4      // 16-byte loads a thread of the vectorised passes issues at once
#define BNR_FIN_UNROLL 4  // splits a finalize thread loads before it merges (or adds) them

// Chan's merge of (nb, mb, qb) into (na, ma, qa): counts, means, sums of squared deviations.
// An empty side contributes nothing (and an empty (na, ma, qa) becomes a copy of the other,
// exactly).
template <typename A>
__device__ __forceinline__ void merge(A& na, A& ma, A& qa, A nb, A mb, A qb)
{
    if (nb == A(0)) {
        return;
    }
    if (na == A(0)) {
        na = nb; ma = mb; qa = qb;
        return;
    }
    const A n = na + nb;
    const A d = mb - ma;
    const A f = nb / n;
    ma = ma + d * f;
    qa = qa + qb + d * d * na * f;
    na = n;
}

// The chunk [j0, j1) of the M positions (n, s) handled by split `split` of `splits`.
__device__ __forceinline__ void chunk(unsigned int m, unsigned int split, unsigned int splits, unsigned int& j0, unsigned int& j1)
{
    const unsigned int per = (m + splits - 1) / splits;
    j0 = min(m, split * per);
    j1 = min(m, j0 + per);
}

// ---- forward statistics ----

// NCHW: block (c = blockIdx.x, split = blockIdx.y) of BNR_THREADS threads; ONE THREAD
// folds positions j0 + t, j0 + t + 256, ... of channel c into its (count, mean, M2);
// the block then merges its threads' triples and thread 0 writes partial[split][c][0..3).
template <typename T, typename A>
__device__ void stats_nchw(const T* x, A* partial, unsigned int n, unsigned int c_count, unsigned int hw, unsigned int splits)
{
    __shared__ A sn[BNR_THREADS], sm[BNR_THREADS], sq[BNR_THREADS];
    const unsigned int c = blockIdx.x, split = blockIdx.y, t = threadIdx.x;
    unsigned int j0, j1;
    chunk(n * hw, split, splits, j0, j1);
    A cn = 0, cm = 0, cq = 0;
    for (unsigned int j = j0 + t; j < j1; j += BNR_THREADS) {
        const unsigned int b = j / hw, s = j - b * hw;
        const A v = widen(x[((unsigned long long)b * c_count + c) * hw + s]);
        cn += A(1);
        const A d = v - cm;
        cm += d / cn;
        cq += d * (v - cm);
    }
    sn[t] = cn; sm[t] = cm; sq[t] = cq;
    __syncthreads();
    for (unsigned int w = BNR_THREADS / 2; w > 0; w /= 2) {
        if (t < w) {
            merge(sn[t], sm[t], sq[t], sn[t + w], sm[t + w], sq[t + w]);
        }
        __syncthreads();
    }
    if (t == 0) {
        A* p = partial + ((unsigned long long)split * c_count + c) * 3;
        p[0] = sn[0]; p[1] = sm[0]; p[2] = sq[0];
    }
}

// NHWC: block (channel group blockIdx.x, split blockIdx.y) of 32 x 8 threads; ONE THREAD
// (tx, ty) folds rows j0 + ty, j0 + ty + 8, ... of channel c = 32*blockIdx.x + tx (a warp
// reads 32 consecutive channels of one row); the 8 triples of each channel are merged
// and thread (tx, 0) writes partial[split][c][0..3).
template <typename T, typename A>
__device__ void stats_nhwc(const T* x, A* partial, unsigned int n, unsigned int c_count, unsigned int hw, unsigned int splits)
{
    __shared__ A sn[BNR_NHWC_Y][BNR_NHWC_X], sm[BNR_NHWC_Y][BNR_NHWC_X], sq[BNR_NHWC_Y][BNR_NHWC_X];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y, split = blockIdx.y;
    const unsigned int c = blockIdx.x * BNR_NHWC_X + tx;
    unsigned int j0, j1;
    chunk(n * hw, split, splits, j0, j1);
    A cn = 0, cm = 0, cq = 0;
    if (c < c_count) {
        for (unsigned int j = j0 + ty; j < j1; j += BNR_NHWC_Y) {
            const A v = widen(x[(unsigned long long)j * c_count + c]);
            cn += A(1);
            const A d = v - cm;
            cm += d / cn;
            cq += d * (v - cm);
        }
    }
    sn[ty][tx] = cn; sm[ty][tx] = cm; sq[ty][tx] = cq;
    __syncthreads();
    for (unsigned int w = BNR_NHWC_Y / 2; w > 0; w /= 2) {
        if (ty < w) {
            merge(sn[ty][tx], sm[ty][tx], sq[ty][tx], sn[ty + w][tx], sm[ty + w][tx], sq[ty + w][tx]);
        }
        __syncthreads();
    }
    if (ty == 0 && c < c_count) {
        A* p = partial + ((unsigned long long)split * c_count + c) * 3;
        p[0] = sn[0][tx]; p[1] = sm[0][tx]; p[2] = sq[0][tx];
    }
}

// Block (BNR_FIN_X, BNR_FIN_Y) per 8 channels: thread (tx, ty) merges, in order, the splits
// ty, ty + 32, ... of channel c = 8*blockIdx.x + tx, loading BNR_FIN_UNROLL of them before it
// merges any; the 32 lanes of a channel are merged in a tree, and thread (tx, 0) writes
// stats[0..4)[c] = mean, invstd, scale, shift and updates the running statistics
// (running_var with the unbiased variance, as PyTorch). Lanes, not one thread per channel,
// and the loads first: each merge needs its split's values, so a loop that loads one split
// and merges it waits a memory latency per split. With 32 x 8 blocks and one load at a time
// (until 2026-11-26), the 512 splits of the network's larger layers were 64 such waits in a
// row per thread, on C/32 blocks (2 for the first layer's 64 channels): about 25 µs per
// finalize at ~0.4 µs per wait, an estimate close to what batch norm + ReLU took on the H100
// beyond its memory traffic for those layers (bench/results/h100-2026-11-26; not measured
// per kernel: profile's per-launch table will say). Now 512 splits are 4 rounds of 4 loads
// per thread, on C/8 blocks.
template <typename A>
__device__ void finalize(const A* partial, unsigned int c_count, unsigned int splits, const A* gamma, const A* beta,
                         A* running_mean, A* running_var, A momentum, A eps, A* stats)
{
    __shared__ A sn[BNR_FIN_Y][BNR_FIN_X], sm[BNR_FIN_Y][BNR_FIN_X], sq[BNR_FIN_Y][BNR_FIN_X];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y, c = blockIdx.x * BNR_FIN_X + tx;
    A n = 0, m = 0, q = 0;
    if (c < c_count) {
        for (unsigned int first = ty; first < splits; first += BNR_FIN_UNROLL * BNR_FIN_Y) {
            // Splits first, first + BNR_FIN_Y, ... (BNR_FIN_UNROLL of them) loaded first (an
            // empty one past the last split merges as nothing), then merged in that order.
            A pn[BNR_FIN_UNROLL], pm[BNR_FIN_UNROLL], pq[BNR_FIN_UNROLL];
            for (int u = 0; u < BNR_FIN_UNROLL; ++u) {
                const unsigned int s = first + u * BNR_FIN_Y;
                pn[u] = pm[u] = pq[u] = A(0);
                if (s < splits) {
                    const A* p = partial + ((unsigned long long)s * c_count + c) * 3;
                    pn[u] = p[0]; pm[u] = p[1]; pq[u] = p[2];
                }
            }
            for (int u = 0; u < BNR_FIN_UNROLL; ++u) {
                merge(n, m, q, pn[u], pm[u], pq[u]);
            }
        }
    }
    sn[ty][tx] = n; sm[ty][tx] = m; sq[ty][tx] = q;
    __syncthreads();
    for (unsigned int w = BNR_FIN_Y / 2; w > 0; w /= 2) {
        if (ty < w) {
            merge(sn[ty][tx], sm[ty][tx], sq[ty][tx], sn[ty + w][tx], sm[ty + w][tx], sq[ty + w][tx]);
        }
        __syncthreads();
    }
    if (ty == 0 && c < c_count) {
        n = sn[0][tx]; m = sm[0][tx]; q = sq[0][tx];
        const A var = q / n;
        const A invstd = A(1) / sqrt(var + eps);
        const A scale = gamma[c] * invstd;
        stats[c] = m;
        stats[c_count + c] = invstd;
        stats[2 * c_count + c] = scale;
        stats[3 * c_count + c] = beta[c] - m * scale;
        running_mean[c] = (A(1) - momentum) * running_mean[c] + momentum * m;
        running_var[c] = (A(1) - momentum) * running_var[c] + momentum * (q / (n - A(1)));
    }
}

// ---- evaluation: the running statistics in place of the batch's ----

// ONE THREAD per channel c: stats[0..4)[c] = mean, invstd, scale, shift from the running
// statistics (eval mode: invstd = 1/sqrt(running_var + eps)), for apply / apply_vec.
template <typename A>
__device__ void eval_stats(const A* gamma, const A* beta, const A* running_mean, const A* running_var, A eps,
                           unsigned int c_count, A* stats)
{
    for (unsigned int c = blockIdx.x * blockDim.x + threadIdx.x; c < c_count; c += blockDim.x * gridDim.x) {
        const A m = running_mean[c];
        const A invstd = A(1) / sqrt(running_var[c] + eps);
        const A scale = gamma[c] * invstd;
        stats[c] = m;
        stats[c_count + c] = invstd;
        stats[2 * c_count + c] = scale;
        stats[3 * c_count + c] = beta[c] - m * scale;
    }
}

// ---- forward output ----

// One output element, in the statistics' type: max(fma(x, scale, shift), 0), from the
// channel's scale and shift (shared by every forward pass, so that all give the same bits).
template <typename A>
__device__ __forceinline__ A bnr_y_of(A xv, A scale, A shift)
{
    const A z = fma(xv, scale, shift);
    return z > A(0) ? z : A(0);
}

// The same for channel c, its scale and shift read from stats.
template <typename A>
__device__ __forceinline__ A bnr_y(A xv, const A* stats, unsigned int c_count, unsigned int c)
{
    return bnr_y_of(xv, stats[2 * c_count + c], stats[3 * c_count + c]);
}

// The residual join fused into the output pass: r + s, rounded as the separate residual add
// rounds it (add / add_f64 of elementwise.cu, add_bf16 of bf16.cu: the sum of the two stored
// values in f32 or f64, rounded once to the data type), so that relu(bn(x)) + skip gives the
// same bits fused or not.
__device__ __forceinline__ float plus(float r, float s) { return __fadd_rn(r, s); }
__device__ __forceinline__ double plus(double r, double s) { return __dadd_rn(r, s); }
__device__ __forceinline__ bf16 plus(bf16 r, bf16 s)
{
    bf16 out;
    narrow(__fadd_rn(widen(r), widen(s)), &out);
    return out;
}

// ONE THREAD per element i (grid-stride): y[i] = max(fma(x[i], scale[c], shift[c]), 0), plus
// skip[i] (rounded as by the residual add) where skip is not null.
template <typename T, typename A>
__device__ void apply(const T* x, const A* stats, const T* skip, T* y, unsigned int total, unsigned int c_count,
                      unsigned int hw, int nhwc)
{
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const unsigned int e = (unsigned int)i;  // < total < 2^32: 32-bit division is much cheaper
        const unsigned int c = nhwc ? e % c_count : (e / hw) % c_count;
        T r;
        narrow(bnr_y(widen(x[i]), stats, c_count, c), &r);
        y[i] = skip ? plus(r, skip[i]) : r;
    }
}

// ---- backward sums ----

// One channel's forward statistics, as the backward uses them (stats[0..4)[c]).
template <typename A>
struct BnrStats {
    A mean, invstd, scale, shift;
};

template <typename A>
__device__ __forceinline__ BnrStats<A> bnr_stats_of(const A* stats, unsigned int c_count, unsigned int c)
{
    return BnrStats<A>{stats[c], stats[c_count + c], stats[2 * c_count + c], stats[3 * c_count + c]};
}

// The two per-element terms of the backward sums at x, dy of a channel with statistics st:
// dz and dz*xhat (shared by every backward reduction).
template <typename A>
__device__ __forceinline__ void dz_terms(A xv, A dyv, const BnrStats<A>& st, A& dz, A& dzx)
{
    const A z = fma(xv, st.scale, st.shift);
    dz = z > A(0) ? dyv : A(0);
    dzx = dz * ((xv - st.mean) * st.invstd);
}

// One element of dx, in the statistics' type: k1*(dz - k2 - xhat*k3), from the channel's
// statistics and coefficients (k1, k2, k3) = coef[0..3)[c] (shared by every backward pass, so
// that all give the same bits).
template <typename A>
__device__ __forceinline__ A bnr_dx_of(A xv, A dyv, const BnrStats<A>& st, A k1, A k2, A k3)
{
    A dz, dzx;
    dz_terms(xv, dyv, st, dz, dzx);
    const A xhat = (xv - st.mean) * st.invstd;
    return k1 * (dz - k2 - xhat * k3);
}

// The same for channel c, its statistics and coefficients read from stats and coef.
template <typename A>
__device__ __forceinline__ A bnr_dx(A xv, A dyv, const A* stats, const A* coef, unsigned int c_count, unsigned int c)
{
    return bnr_dx_of(xv, dyv, bnr_stats_of(stats, c_count, c), coef[c], coef[c_count + c], coef[2 * c_count + c]);
}

// ---- vectorised elementwise passes ----
//
// The same per-element arithmetic as apply / bwd_apply (so the same bits), VEC consecutive
// elements per thread moved with one 16-byte load or store: 8 bf16 or 4 f32 values, where
// the scalar kernels move 2 or 4 bytes per thread and compute the channel of every element
// with an integer division. Needs VEC consecutive elements to share a channel pattern the
// thread can compute once: NHWC with C a multiple of VEC (channels c0 .. c0+VEC-1), or NCHW
// with H*W a multiple of VEC (one channel); and 16-byte aligned buffers. The caller checks
// both and otherwise launches the scalar kernels.

// 16 bytes as CUDA's built-in uint4 (16-byte aligned: one ld/st.global.v4.u32 on the GPU;
// the CPU emulation defines its own).
typedef uint4 bnr_v16;

// 16 bytes as 8 bf16 or 4 f32 values, and back (little-endian: element 2k is word k's low half).
__device__ __forceinline__ void unpack(const bnr_v16 v, bf16* e)
{
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
    for (int k = 0; k < 4; ++k) {
        e[2 * k] = (bf16)(w[k] & 0xffffu);
        e[2 * k + 1] = (bf16)(w[k] >> 16);
    }
}
__device__ __forceinline__ void unpack(const bnr_v16 v, float* e)
{
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
    for (int k = 0; k < 4; ++k) {
        e[k] = __uint_as_float(w[k]);
    }
}
__device__ __forceinline__ bnr_v16 pack(const bf16* e)
{
    unsigned int w[4];
    for (int k = 0; k < 4; ++k) {
        w[k] = (unsigned int)e[2 * k] | ((unsigned int)e[2 * k + 1] << 16);
    }
    return bnr_v16{w[0], w[1], w[2], w[3]};
}
__device__ __forceinline__ bnr_v16 pack(const float* e)
{
    unsigned int w[4];
    for (int k = 0; k < 4; ++k) {
        w[k] = __float_as_uint(e[k]);
    }
    return bnr_v16{w[0], w[1], w[2], w[3]};
}

// The channel of each of the VEC elements starting at flat index e.
template <int VEC>
__device__ __forceinline__ void vec_channels(unsigned int e, unsigned int c_count, unsigned int hw, int nhwc, unsigned int* c)
{
    const unsigned int c0 = nhwc ? e % c_count : (e / hw) % c_count;
    for (int k = 0; k < VEC; ++k) {
        c[k] = nhwc ? c0 + k : c0;
    }
}

// Whether every group of VEC elements a thread visits in the grid-stride loops below has the
// same channels: NHWC, and the grid's thread count a multiple of the C/VEC groups of a row
// (ops/src/batch_norm_relu.rs launches 256-thread blocks, and C/VEC divides 256 in this
// network). The thread's channels are then VEC*(first % (C/VEC)) + 0..VEC, and their
// per-channel values are read once, into registers, instead of once per element: in the
// per-element form those reads (2 per element forward, 7 backward, each warp's spread over
// 8 cache lines) outnumber the data's own loads many times over.
__device__ __forceinline__ bool fixed_channels(int nhwc, unsigned int row_groups)
{
    return nhwc && (blockDim.x * gridDim.x) % row_groups == 0;
}

// y (VEC values) plus the VEC residual values held in the 16 bytes sv.
template <typename T, int VEC>
__device__ __forceinline__ void add_residual(const bnr_v16 sv, T* ys)
{
    T ss[VEC];
    unpack(sv, ss);
    for (int k = 0; k < VEC; ++k) {
        ys[k] = plus(ys[k], ss[k]);
    }
}

// y (VEC values) plus the VEC values of skip's group g, where skip is not null.
template <typename T, int VEC>
__device__ __forceinline__ void add_skip(const T* skip, unsigned int g, T* ys)
{
    if (skip) {
        add_residual<T, VEC>(reinterpret_cast<const bnr_v16*>(skip)[g], ys);
    }
}

// ONE THREAD per group of VEC elements g (grid-stride): y = max(fma(x, scale, shift), 0), plus
// skip's group g where skip is not null (as apply).
template <typename T, int VEC>
__device__ void apply_vec(const T* x, const float* stats, const T* skip, T* y, unsigned int total, unsigned int c_count,
                          unsigned int hw, int nhwc)
{
    const unsigned int groups = total / VEC, first = blockIdx.x * blockDim.x + threadIdx.x;
    if (fixed_channels(nhwc, c_count / VEC)) {
        const unsigned int c0 = (first % (c_count / VEC)) * VEC;
        float scale[VEC], shift[VEC];
        for (int k = 0; k < VEC; ++k) {
            scale[k] = stats[2 * c_count + c0 + k];
            shift[k] = stats[3 * c_count + c0 + k];
        }
        // BNR_UNROLL groups at a time, all their loads first: more bytes in flight per thread
        // than one group's (the pass is memory-bound, and at a few blocks per SM one load per
        // thread leaves the memory's bandwidth-latency product barely covered).
        const unsigned int stride = blockDim.x * gridDim.x;
        for (unsigned int g = first; g < groups; g += BNR_UNROLL * stride) {
            bnr_v16 xv[BNR_UNROLL] = {}, sv[BNR_UNROLL] = {};
            for (int u = 0; u < BNR_UNROLL; ++u) {
                const unsigned int gu = g + u * stride;
                if (gu < groups) {
                    xv[u] = reinterpret_cast<const bnr_v16*>(x)[gu];
                    if (skip) {
                        sv[u] = reinterpret_cast<const bnr_v16*>(skip)[gu];
                    }
                }
            }
            for (int u = 0; u < BNR_UNROLL; ++u) {
                const unsigned int gu = g + u * stride;
                if (gu < groups) {
                    T xs[VEC], ys[VEC];
                    unpack(xv[u], xs);
                    for (int k = 0; k < VEC; ++k) {
                        narrow(bnr_y_of(widen(xs[k]), scale[k], shift[k]), ys + k);
                    }
                    if (skip) {
                        add_residual<T, VEC>(sv[u], ys);
                    }
                    reinterpret_cast<bnr_v16*>(y)[gu] = pack(ys);
                }
            }
        }
        return;
    }
    for (unsigned int g = first; g < groups; g += blockDim.x * gridDim.x) {
        unsigned int c[VEC];
        vec_channels<VEC>(g * VEC, c_count, hw, nhwc, c);
        T xs[VEC], ys[VEC];
        unpack(reinterpret_cast<const bnr_v16*>(x)[g], xs);
        for (int k = 0; k < VEC; ++k) {
            narrow(bnr_y(widen(xs[k]), stats, c_count, c[k]), ys + k);
        }
        add_skip<T, VEC>(skip, g, ys);
        reinterpret_cast<bnr_v16*>(y)[g] = pack(ys);
    }
}

// ONE THREAD per group of VEC elements g (grid-stride): dx = k1*(dz - k2 - xhat*k3).
template <typename T, int VEC>
__device__ void bwd_apply_vec(const T* x, const T* dy, const float* stats, const float* coef, T* dx, unsigned int total,
                              unsigned int c_count, unsigned int hw, int nhwc)
{
    const unsigned int groups = total / VEC, first = blockIdx.x * blockDim.x + threadIdx.x;
    if (fixed_channels(nhwc, c_count / VEC)) {
        const unsigned int c0 = (first % (c_count / VEC)) * VEC;
        BnrStats<float> st[VEC];
        float k1[VEC], k2[VEC], k3[VEC];
        for (int k = 0; k < VEC; ++k) {
            st[k] = bnr_stats_of(stats, c_count, c0 + k);
            k1[k] = coef[c0 + k];
            k2[k] = coef[c_count + c0 + k];
            k3[k] = coef[2 * c_count + c0 + k];
        }
        // BNR_UNROLL groups at a time, their loads first (as in apply_vec).
        const unsigned int stride = blockDim.x * gridDim.x;
        for (unsigned int g = first; g < groups; g += BNR_UNROLL * stride) {
            bnr_v16 xv[BNR_UNROLL] = {}, dv[BNR_UNROLL] = {};
            for (int u = 0; u < BNR_UNROLL; ++u) {
                const unsigned int gu = g + u * stride;
                if (gu < groups) {
                    xv[u] = reinterpret_cast<const bnr_v16*>(x)[gu];
                    dv[u] = reinterpret_cast<const bnr_v16*>(dy)[gu];
                }
            }
            for (int u = 0; u < BNR_UNROLL; ++u) {
                const unsigned int gu = g + u * stride;
                if (gu < groups) {
                    T xs[VEC], dys[VEC], dxs[VEC];
                    unpack(xv[u], xs);
                    unpack(dv[u], dys);
                    for (int k = 0; k < VEC; ++k) {
                        narrow(bnr_dx_of(widen(xs[k]), widen(dys[k]), st[k], k1[k], k2[k], k3[k]), dxs + k);
                    }
                    reinterpret_cast<bnr_v16*>(dx)[gu] = pack(dxs);
                }
            }
        }
        return;
    }
    for (unsigned int g = first; g < groups; g += blockDim.x * gridDim.x) {
        unsigned int c[VEC];
        vec_channels<VEC>(g * VEC, c_count, hw, nhwc, c);
        T xs[VEC], dys[VEC], dxs[VEC];
        unpack(reinterpret_cast<const bnr_v16*>(x)[g], xs);
        unpack(reinterpret_cast<const bnr_v16*>(dy)[g], dys);
        for (int k = 0; k < VEC; ++k) {
            narrow(bnr_dx(widen(xs[k]), widen(dys[k]), stats, coef, c_count, c[k]), dxs + k);
        }
        reinterpret_cast<bnr_v16*>(dx)[g] = pack(dxs);
    }
}

// ---- vectorised NHWC reductions ----
//
// stats_nhwc and bwd_sums_nhwc load 2 (bf16) or 4 (f32) bytes per thread at a time, too
// few bytes in flight to use the memory's bandwidth (on an H200, 2026-11-26, batch norm +
// ReLU's forward took 1.04 ms of the step for about 0.25 ms of traffic). These load 16 bytes
// (VEC = 8 bf16 or 4 f32 channels of one row) per access and issue BNR_UNROLL of them before
// folding any in. A block of BNR_THREADS threads covers all C channels of its rows: G = C/VEC
// threads per row, thread t taking channels VEC*(t % G) .. +VEC of rows j0 + t/G, j0 + t/G + R,
// ... with R = BNR_THREADS/G rows at once. Needs G a power of two that divides BNR_THREADS,
// and x (and dy) 16-byte aligned; the caller checks, and otherwise launches the kernels above.
// Grid (1, splits): block y reduces rows chunk(M, y, splits) into partial[y][c] as they do.

// One row's VEC values folded into a thread's (count, means, M2s): Welford's update with one
// reciprocal per row (the VEC channels share the count) instead of a division per value.
template <typename T, int VEC>
__device__ __forceinline__ void fold_row(const bnr_v16 v, float& cn, float* cm, float* cq)
{
    T e[VEC];
    unpack(v, e);
    cn += 1.0f;
    const float f = 1.0f / cn;
    for (int k = 0; k < VEC; ++k) {
        const float val = widen(e[k]);
        const float d = val - cm[k];
        cm[k] = fma(d, f, cm[k]);
        cq[k] = fma(d, val - cm[k], cq[k]);
    }
}

template <typename T, int VEC>
__device__ void stats_nhwc_vec(const T* x, float* partial, unsigned int n, unsigned int c_count, unsigned int hw,
                               unsigned int splits)
{
    __shared__ float sn[BNR_THREADS], sm[VEC][BNR_THREADS], sq[VEC][BNR_THREADS];
    const unsigned int groups = c_count / VEC, rows = BNR_THREADS / groups;
    const unsigned int t = threadIdx.x, g = t % groups, r = t / groups;
    unsigned int j0, j1;
    chunk(n * hw, blockIdx.y, splits, j0, j1);
    const bnr_v16* xv = reinterpret_cast<const bnr_v16*>(x);  // row j's group g is xv[j*G + g]
    float cn = 0, cm[VEC], cq[VEC];
    for (int k = 0; k < VEC; ++k) {
        cm[k] = 0;
        cq[k] = 0;
    }
    for (unsigned int j = j0 + r; j < j1; j += BNR_UNROLL * rows) {
        // Up to BNR_UNROLL rows: all loads first, then the arithmetic.
        bnr_v16 v[BNR_UNROLL];
        for (int u = 0; u < BNR_UNROLL; ++u) {
            if (j + u * rows < j1) {
                v[u] = xv[(unsigned long long)(j + u * rows) * groups + g];
            }
        }
        for (int u = 0; u < BNR_UNROLL; ++u) {
            if (j + u * rows < j1) {
                fold_row<T, VEC>(v[u], cn, cm, cq);
            }
        }
    }
    sn[t] = cn;
    for (int k = 0; k < VEC; ++k) {
        sm[k][t] = cm[k];
        sq[k][t] = cq[k];
    }
    __syncthreads();
    // Tree over the R rows: thread t (row r < w) takes in thread t + w*G (same channels, row r + w).
    for (unsigned int w = rows / 2; w > 0; w /= 2) {
        if (r < w) {
            const unsigned int o = t + w * groups;
            for (int k = 0; k < VEC; ++k) {
                float na = sn[t];
                merge(na, sm[k][t], sq[k][t], sn[o], sm[k][o], sq[k][o]);
            }
            sn[t] += sn[o];
        }
        __syncthreads();
    }
    if (r == 0) {
        for (int k = 0; k < VEC; ++k) {
            float* p = partial + ((unsigned long long)blockIdx.y * c_count + g * VEC + k) * 3;
            p[0] = sn[t]; p[1] = sm[k][t]; p[2] = sq[k][t];
        }
    }
}

// The backward's sums, blocks and rows as in stats_nhwc_vec: dz and dz*xhat of each value
// (dz_terms, as the other reductions) added into a thread's VEC pairs of sums.
template <typename T, int VEC>
__device__ void bwd_sums_nhwc_vec(const T* x, const T* dy, const float* stats, float* partial, unsigned int n,
                                  unsigned int c_count, unsigned int hw, unsigned int splits)
{
    __shared__ float s0[VEC][BNR_THREADS], s1[VEC][BNR_THREADS];
    const unsigned int groups = c_count / VEC, rows = BNR_THREADS / groups;
    const unsigned int t = threadIdx.x, g = t % groups, r = t / groups;
    unsigned int j0, j1;
    chunk(n * hw, blockIdx.y, splits, j0, j1);
    const bnr_v16* xv = reinterpret_cast<const bnr_v16*>(x);
    const bnr_v16* dyv = reinterpret_cast<const bnr_v16*>(dy);
    float a0[VEC], a1[VEC];
    BnrStats<float> st[VEC];  // the thread's VEC channels' statistics, read once
    for (int k = 0; k < VEC; ++k) {
        a0[k] = 0;
        a1[k] = 0;
        st[k] = bnr_stats_of(stats, c_count, g * VEC + k);
    }
    for (unsigned int j = j0 + r; j < j1; j += BNR_UNROLL * rows) {
        // Up to BNR_UNROLL rows: all loads first, then the arithmetic.
        bnr_v16 v[BNR_UNROLL], d[BNR_UNROLL];
        for (int u = 0; u < BNR_UNROLL; ++u) {
            if (j + u * rows < j1) {
                const unsigned long long i = (unsigned long long)(j + u * rows) * groups + g;
                v[u] = xv[i];
                d[u] = dyv[i];
            }
        }
        for (int u = 0; u < BNR_UNROLL; ++u) {
            if (j + u * rows < j1) {
                T xs[VEC], dys[VEC];
                unpack(v[u], xs);
                unpack(d[u], dys);
                for (int k = 0; k < VEC; ++k) {
                    float dz, dzx;
                    dz_terms(widen(xs[k]), widen(dys[k]), st[k], dz, dzx);
                    a0[k] += dz;
                    a1[k] += dzx;
                }
            }
        }
    }
    for (int k = 0; k < VEC; ++k) {
        s0[k][t] = a0[k];
        s1[k][t] = a1[k];
    }
    __syncthreads();
    for (unsigned int w = rows / 2; w > 0; w /= 2) {
        if (r < w) {
            const unsigned int o = t + w * groups;
            for (int k = 0; k < VEC; ++k) {
                s0[k][t] += s0[k][o];
                s1[k][t] += s1[k][o];
            }
        }
        __syncthreads();
    }
    if (r == 0) {
        for (int k = 0; k < VEC; ++k) {
            float* p = partial + ((unsigned long long)blockIdx.y * c_count + g * VEC + k) * 2;
            p[0] = s0[k][t]; p[1] = s1[k][t];
        }
    }
}

// NCHW, blocks as in stats_nchw: ONE THREAD sums dz and dz*xhat over its positions;
// thread 0 writes the block's sums to partial[split][c][0..2).
template <typename T, typename A>
__device__ void bwd_sums_nchw(const T* x, const T* dy, const A* stats, A* partial, unsigned int n, unsigned int c_count,
                              unsigned int hw, unsigned int splits)
{
    __shared__ A s0[BNR_THREADS], s1[BNR_THREADS];
    const unsigned int c = blockIdx.x, split = blockIdx.y, t = threadIdx.x;
    unsigned int j0, j1;
    chunk(n * hw, split, splits, j0, j1);
    A a0 = 0, a1 = 0;
    const BnrStats<A> st = bnr_stats_of(stats, c_count, c);
    for (unsigned int j = j0 + t; j < j1; j += BNR_THREADS) {
        const unsigned int b = j / hw, s = j - b * hw;
        const unsigned long long i = ((unsigned long long)b * c_count + c) * hw + s;
        A dz, dzx;
        dz_terms(widen(x[i]), widen(dy[i]), st, dz, dzx);
        a0 += dz;
        a1 += dzx;
    }
    s0[t] = a0; s1[t] = a1;
    __syncthreads();
    for (unsigned int w = BNR_THREADS / 2; w > 0; w /= 2) {
        if (t < w) {
            s0[t] += s0[t + w];
            s1[t] += s1[t + w];
        }
        __syncthreads();
    }
    if (t == 0) {
        A* p = partial + ((unsigned long long)split * c_count + c) * 2;
        p[0] = s0[0]; p[1] = s1[0];
    }
}

// NHWC, blocks as in stats_nhwc: ONE THREAD (tx, ty) sums over rows j0 + ty, j0 + ty + 8, ...
template <typename T, typename A>
__device__ void bwd_sums_nhwc(const T* x, const T* dy, const A* stats, A* partial, unsigned int n, unsigned int c_count,
                              unsigned int hw, unsigned int splits)
{
    __shared__ A s0[BNR_NHWC_Y][BNR_NHWC_X], s1[BNR_NHWC_Y][BNR_NHWC_X];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y, split = blockIdx.y;
    const unsigned int c = blockIdx.x * BNR_NHWC_X + tx;
    unsigned int j0, j1;
    chunk(n * hw, split, splits, j0, j1);
    A a0 = 0, a1 = 0;
    if (c < c_count) {
        const BnrStats<A> st = bnr_stats_of(stats, c_count, c);
        for (unsigned int j = j0 + ty; j < j1; j += BNR_NHWC_Y) {
            const unsigned long long i = (unsigned long long)j * c_count + c;
            A dz, dzx;
            dz_terms(widen(x[i]), widen(dy[i]), st, dz, dzx);
            a0 += dz;
            a1 += dzx;
        }
    }
    s0[ty][tx] = a0; s1[ty][tx] = a1;
    __syncthreads();
    for (unsigned int w = BNR_NHWC_Y / 2; w > 0; w /= 2) {
        if (ty < w) {
            s0[ty][tx] += s0[ty + w][tx];
            s1[ty][tx] += s1[ty + w][tx];
        }
        __syncthreads();
    }
    if (ty == 0 && c < c_count) {
        A* p = partial + ((unsigned long long)split * c_count + c) * 2;
        p[0] = s0[0][tx]; p[1] = s1[0][tx];
    }
}

// Blocks as in finalize: thread (tx, ty) adds, in order, the splits ty, ty + 32, ... of
// channel c (BNR_FIN_UNROLL loaded before it adds any); the 32 lanes are added in a tree, and
// thread (tx, 0) writes dbeta = sum dz,
// dgamma = sum dz*xhat and the coefficients of dx: coef[0..3)[c] = gamma*invstd, dbeta/M,
// dgamma/M.
template <typename A>
__device__ void bwd_finalize(const A* partial, unsigned int c_count, unsigned int splits, unsigned int m, const A* gamma,
                             const A* stats, A* dgamma, A* dbeta, A* coef)
{
    __shared__ A s0[BNR_FIN_Y][BNR_FIN_X], s1[BNR_FIN_Y][BNR_FIN_X];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y, c = blockIdx.x * BNR_FIN_X + tx;
    A a0 = 0, a1 = 0;
    if (c < c_count) {
        for (unsigned int first = ty; first < splits; first += BNR_FIN_UNROLL * BNR_FIN_Y) {
            A p0[BNR_FIN_UNROLL], p1[BNR_FIN_UNROLL];
            for (int u = 0; u < BNR_FIN_UNROLL; ++u) {
                const unsigned int s = first + u * BNR_FIN_Y;
                p0[u] = p1[u] = A(0);
                if (s < splits) {
                    const A* p = partial + ((unsigned long long)s * c_count + c) * 2;
                    p0[u] = p[0];
                    p1[u] = p[1];
                }
            }
            // (A split past the last adds its zeros: no change to a sum but that of -0 to +0.)
            for (int u = 0; u < BNR_FIN_UNROLL; ++u) {
                a0 += p0[u];
                a1 += p1[u];
            }
        }
    }
    s0[ty][tx] = a0; s1[ty][tx] = a1;
    __syncthreads();
    for (unsigned int w = BNR_FIN_Y / 2; w > 0; w /= 2) {
        if (ty < w) {
            s0[ty][tx] += s0[ty + w][tx];
            s1[ty][tx] += s1[ty + w][tx];
        }
        __syncthreads();
    }
    if (ty == 0 && c < c_count) {
        a0 = s0[0][tx];
        a1 = s1[0][tx];
        dbeta[c] = a0;
        dgamma[c] = a1;
        coef[c] = gamma[c] * stats[c_count + c];
        coef[c_count + c] = a0 / A(m);
        coef[2 * c_count + c] = a1 / A(m);
    }
}

// ONE THREAD per element i (grid-stride): dx[i] = k1*(dz - k2 - xhat*k3) with the
// channel's coefficients.
template <typename T, typename A>
__device__ void bwd_apply(const T* x, const T* dy, const A* stats, const A* coef, T* dx, unsigned int total,
                          unsigned int c_count, unsigned int hw, int nhwc)
{
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const unsigned int e = (unsigned int)i;  // < total < 2^32: 32-bit division is much cheaper
        const unsigned int c = nhwc ? e % c_count : (e / hw) % c_count;
        narrow(bnr_dx(widen(x[i]), widen(dy[i]), stats, coef, c_count, c), dx + i);
    }
}

// ---- entry points: f32 data (no suffix), f64 (_f64), bf16 data with f32 statistics (_bf16) ----
// The statistics kernels (finalize) exist for A = f32 (f32 and bf16 data) and f64.

extern "C" __global__ void bnr_stats_nchw(const float* x, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ stats_nchw(x, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_stats_nhwc(const float* x, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ stats_nhwc(x, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_apply(const float* x, const float* stats, const float* skip, float* y, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ apply(x, stats, skip, y, total, c, hw, nhwc); }
extern "C" __global__ void bnr_bwd_sums_nchw(const float* x, const float* dy, const float* stats, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ bwd_sums_nchw(x, dy, stats, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_bwd_sums_nhwc(const float* x, const float* dy, const float* stats, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ bwd_sums_nhwc(x, dy, stats, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_bwd_apply(const float* x, const float* dy, const float* stats, const float* coef, float* dx, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ bwd_apply(x, dy, stats, coef, dx, total, c, hw, nhwc); }

extern "C" __global__ void bnr_stats_nchw_f64(const double* x, double* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ stats_nchw(x, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_stats_nhwc_f64(const double* x, double* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ stats_nhwc(x, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_apply_f64(const double* x, const double* stats, const double* skip, double* y, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ apply(x, stats, skip, y, total, c, hw, nhwc); }
extern "C" __global__ void bnr_bwd_sums_nchw_f64(const double* x, const double* dy, const double* stats, double* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ bwd_sums_nchw(x, dy, stats, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_bwd_sums_nhwc_f64(const double* x, const double* dy, const double* stats, double* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ bwd_sums_nhwc(x, dy, stats, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_bwd_apply_f64(const double* x, const double* dy, const double* stats, const double* coef, double* dx, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ bwd_apply(x, dy, stats, coef, dx, total, c, hw, nhwc); }

extern "C" __global__ void bnr_stats_nchw_bf16(const bf16* x, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ stats_nchw(x, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_stats_nhwc_bf16(const bf16* x, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ stats_nhwc(x, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_apply_bf16(const bf16* x, const float* stats, const bf16* skip, bf16* y, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ apply(x, stats, skip, y, total, c, hw, nhwc); }
extern "C" __global__ void bnr_bwd_sums_nchw_bf16(const bf16* x, const bf16* dy, const float* stats, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ bwd_sums_nchw(x, dy, stats, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_bwd_sums_nhwc_bf16(const bf16* x, const bf16* dy, const float* stats, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ bwd_sums_nhwc(x, dy, stats, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_bwd_apply_bf16(const bf16* x, const bf16* dy, const float* stats, const float* coef, bf16* dx, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ bwd_apply(x, dy, stats, coef, dx, total, c, hw, nhwc); }

extern "C" __global__ void bnr_apply_vec(const float* x, const float* stats, const float* skip, float* y, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ apply_vec<float, 4>(x, stats, skip, y, total, c, hw, nhwc); }
extern "C" __global__ void bnr_bwd_apply_vec(const float* x, const float* dy, const float* stats, const float* coef, float* dx, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ bwd_apply_vec<float, 4>(x, dy, stats, coef, dx, total, c, hw, nhwc); }
extern "C" __global__ void bnr_apply_vec_bf16(const bf16* x, const float* stats, const bf16* skip, bf16* y, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ apply_vec<bf16, 8>(x, stats, skip, y, total, c, hw, nhwc); }
extern "C" __global__ void bnr_bwd_apply_vec_bf16(const bf16* x, const bf16* dy, const float* stats, const float* coef, bf16* dx, unsigned int total, unsigned int c, unsigned int hw, int nhwc)
{ bwd_apply_vec<bf16, 8>(x, dy, stats, coef, dx, total, c, hw, nhwc); }

extern "C" __global__ void bnr_stats_nhwc_vec(const float* x, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ stats_nhwc_vec<float, 4>(x, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_bwd_sums_nhwc_vec(const float* x, const float* dy, const float* stats, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ bwd_sums_nhwc_vec<float, 4>(x, dy, stats, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_stats_nhwc_vec_bf16(const bf16* x, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ stats_nhwc_vec<bf16, 8>(x, partial, n, c, hw, splits); }
extern "C" __global__ void bnr_bwd_sums_nhwc_vec_bf16(const bf16* x, const bf16* dy, const float* stats, float* partial, unsigned int n, unsigned int c, unsigned int hw, unsigned int splits)
{ bwd_sums_nhwc_vec<bf16, 8>(x, dy, stats, partial, n, c, hw, splits); }

extern "C" __global__ void bnr_finalize(const float* partial, unsigned int c, unsigned int splits, const float* gamma, const float* beta, float* running_mean, float* running_var, float momentum, float eps, float* stats)
{ finalize(partial, c, splits, gamma, beta, running_mean, running_var, momentum, eps, stats); }
extern "C" __global__ void bnr_bwd_finalize(const float* partial, unsigned int c, unsigned int splits, unsigned int m, const float* gamma, const float* stats, float* dgamma, float* dbeta, float* coef)
{ bwd_finalize(partial, c, splits, m, gamma, stats, dgamma, dbeta, coef); }

extern "C" __global__ void bnr_eval_stats(const float* gamma, const float* beta, const float* running_mean, const float* running_var, float eps, unsigned int c, float* stats)
{ eval_stats(gamma, beta, running_mean, running_var, eps, c, stats); }
extern "C" __global__ void bnr_eval_stats_f64(const double* gamma, const double* beta, const double* running_mean, const double* running_var, double eps, unsigned int c, double* stats)
{ eval_stats(gamma, beta, running_mean, running_var, eps, c, stats); }

extern "C" __global__ void bnr_finalize_f64(const double* partial, unsigned int c, unsigned int splits, const double* gamma, const double* beta, double* running_mean, double* running_var, double momentum, double eps, double* stats)
{ finalize(partial, c, splits, gamma, beta, running_mean, running_var, momentum, eps, stats); }
extern "C" __global__ void bnr_bwd_finalize_f64(const double* partial, unsigned int c, unsigned int splits, unsigned int m, const double* gamma, const double* stats, double* dgamma, double* dbeta, double* coef)
{ bwd_finalize(partial, c, splits, m, gamma, stats, dgamma, dbeta, coef); }
