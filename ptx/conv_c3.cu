// The network's first convolution, 3 input channels, as direct bf16 kernels instead of cuDNN
// (ops/src/conv2d_c3.rs): 3x3 kernel, stride 1, zero padding 1, channels-last data.
//
//   y[n,i,j,o]  = Σ_{r,s,c} w[o,r,s,c] · x[n, i+r-1, j+s-1, c]          (x outside the image = 0)
//   dw[o,r,s,c] = Σ_{n,i,j} dy[n,i,j,o] · x[n, i+r-1, j+s-1, c]
//
// Shapes (memory order): x [N, H, W, 3], w and dw [O, 3, 3, 3] as (o, r, s, c) (the weights'
// channels-last copies, KRSC), y and dy [N, H, W, O]; all bf16, sums in f32, each result
// rounded to bf16 once (nearest even). O is even and at most 64 (the wgrad's warp-wide rows);
// the forward's 16-byte stores also need O a multiple of 8 and y 16-byte aligned: the caller
// checks.
//
// Why not cuDNN: with C = 3 the convolution's arithmetic is tiny (1.8 GFLOP forward per batch
// of 512) and its cost is moving y (67 MB at batch 512) and dy, but on an H100 (2026-11-26,
// bench/results/h100-2026-11-26/build-02dad36/profile.txt) cuDNN's forward took 0.23 ms and
// its weight gradient 0.20 ms per step, where those bytes take about 0.02 ms each at the
// memory's rate: 12% of the training step for 0.3% of its arithmetic. PyTorch's forward of
// it took about 0.1 ms there (by subtraction: the kernels of its other seven forward
// convolutions sum to 0.61 of its 0.70 ms).
//
// What these kernels should take at batch 512 on an H100 (estimates from its figures, not
// measured): the forward writes 67 MB (0.02 ms at ~3 TB/s) and makes 0.9 G fused
// multiply-adds on the f32 units (132 SMs x 128 lanes x ~1.7 GHz: 0.03 ms), so about 0.03 to
// 0.05 ms; the weight gradient reads dy once (0.02 ms) and issues about 110 warp instructions
// per pixel (27 loads, 54 multiply-adds, the rest index arithmetic) for 524,288 pixels, about
// 0.06 ms at four warp instructions per SM per cycle.
//
// Measured on an H200 (2026-11-27, bench/results/h200-2026-11-27/): the forward took 0.244 ms
// and the weight gradient 0.315 + 0.008 ms per step, five to six times those estimates, and
// the step captured as a CUDA graph was faster with cuDNN for both passes (3.12 ms against
// 3.20 ms with our forward and 3.35 ms with both). So these kernels run only when asked
// (`--first-conv direct-forward|direct`, engine::cuda::FirstConv); why they are slow is not
// known yet.
//
// Sums: the forward adds the 27 products of each output in (r, s, c) order with fused
// multiply-adds (__fmaf_rn, the same on the GPU and in the CPU emulation); the weight
// gradient sums per thread over its pixels in order, then over the block's 8 rows of threads
// in a fixed tree, then over the blocks (conv3x3_c3_wgrad_finish: 8 lanes, each over every
// 8th block in order, then a fixed tree of the lanes): deterministic, the same bits at every
// run for a given grid.
//
// 32-bit indices: the caller checks that x, y and dy have fewer than 2^31 elements.

typedef unsigned short bf16;

// The bf16 bits are the f32's top 16 bits (exact).
__device__ __forceinline__ float c3_widen(bf16 h) { return __uint_as_float(((unsigned int)h) << 16); }

// Round to nearest even, NaN kept quiet: the same conversion as to_bf16 in bf16.cu.
__device__ __forceinline__ unsigned int c3_narrow(float v)
{
    const unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x0040u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

#define C3_TAPS 27       // 3 rows x 3 columns x 3 channels: one output's products
#define C3_MAX_O 64      // output channels the shared weight table and the wgrad rows hold
#define C3_THREADS 256   // threads per block of the forward and the wgrad's first pass (launched with exactly this)
#define C3_ROWS 8        // wgrad: rows of 32 threads per block, each row one pixel at a time

// Calls take(tap, value) for each input of pixel pix's 3x3 window (pix = (b*H + i)*W + j) that
// lies inside the image, in (r, s, c) order, tap = (r*3 + s)*3 + c, the value widened to f32;
// the taps over the zero padding are skipped (they would add 0). Both kernels' sums run
// through here, so they visit each window in the same order.
template <typename Take>
__device__ __forceinline__ void c3_window(const bf16* x, unsigned int pix, unsigned int h, unsigned int wd, Take take)
{
    const unsigned int j = pix % wd, i = (pix / wd) % h, b = pix / (wd * h);
    for (int r = 0; r < 3; ++r) {
        const int ii = (int)i + r - 1;
        if (ii < 0 || ii >= (int)h) continue;
        for (int s = 0; s < 3; ++s) {
            const int jj = (int)j + s - 1;
            if (jj < 0 || jj >= (int)wd) continue;
            const unsigned int at = ((b * h + (unsigned int)ii) * wd + (unsigned int)jj) * 3;
            for (int c = 0; c < 3; ++c) take((r * 3 + s) * 3 + c, c3_widen(x[at + c]));
        }
    }
}

// Forward: ONE THREAD per pixel and group of 8 output channels (one 16-byte store of y); the
// thread index e runs over y in 16-byte units, e = pixel * (O/8) + group, so neighbouring
// threads write neighbouring bytes. The weights are widened once per block into shared
// memory as [tap][o], tap = (r*3 + s)*3 + c.
extern "C" __global__ void conv3x3_c3_forward_bf16(const bf16* x, const bf16* w, uint4* y, unsigned int n, unsigned int h,
                                                   unsigned int wd, unsigned int o)
{
    __shared__ float ws[C3_TAPS * C3_MAX_O];
    for (unsigned int t = threadIdx.x; t < C3_TAPS * o; t += blockDim.x) {
        const unsigned int k = t / C3_TAPS, tap = t % C3_TAPS;
        ws[tap * C3_MAX_O + k] = c3_widen(w[t]);
    }
    __syncthreads();
    const unsigned int groups = o / 8;
    const unsigned int total = n * h * wd * groups;
    for (unsigned int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += blockDim.x * gridDim.x) {
        const unsigned int g = e % groups, pix = e / groups;
        float acc[8];
        for (int l = 0; l < 8; ++l) acc[l] = 0.0f;
        c3_window(x, pix, h, wd, [&](int tap, float xv) {
            const float* wt = ws + tap * C3_MAX_O + g * 8;
            for (int l = 0; l < 8; ++l) acc[l] = __fmaf_rn(xv, wt[l], acc[l]);
        });
        unsigned int out[4];
        for (int m = 0; m < 4; ++m) out[m] = c3_narrow(acc[2 * m]) | (c3_narrow(acc[2 * m + 1]) << 16);
        y[e] = uint4{out[0], out[1], out[2], out[3]};
    }
}

// Weight gradient, first pass: each block sums over its pixels into partial[block] ([27][64]
// f32, [tap][o]). A block is C3_ROWS rows of 32 threads; thread (row, lane) owns output
// channels 2*lane and 2*lane + 1 (lanes past O/2 add nothing) and the row takes pixels
// blockIdx.x*C3_ROWS + row, then a grid's worth of rows further, and so on. Each row reads
// its pixel's O values of dy once (32 threads, one bf16 pair each) and the pixel's 27 inputs
// (the same addresses for the whole row). Launch bounds: 256 threads, three blocks per SM, so
// ptxas keeps the 54 sums and the rest within 80 registers (without them it took 86, which
// leaves room for two blocks).
extern "C" __global__ void __launch_bounds__(C3_THREADS, 3) conv3x3_c3_wgrad_partial_bf16(const bf16* x, const unsigned int* dy, float* partial, unsigned int n,
                                                         unsigned int h, unsigned int wd, unsigned int o)
{
    __shared__ float red[C3_ROWS / 2][C3_TAPS * C3_MAX_O];
    const unsigned int lane = threadIdx.x % 32, row = threadIdx.x / 32;
    const bool mine = 2 * lane < o;
    float acc[C3_TAPS][2];
    for (int t = 0; t < C3_TAPS; ++t) acc[t][0] = acc[t][1] = 0.0f;
    const unsigned int pixels = n * h * wd;
    for (unsigned int pix = blockIdx.x * C3_ROWS + row; mine && pix < pixels; pix += gridDim.x * C3_ROWS) {
        const unsigned int d = dy[pix * (o / 2) + lane];
        const float d0 = c3_widen((bf16)(d & 0xffffu)), d1 = c3_widen((bf16)(d >> 16));
        c3_window(x, pix, h, wd, [&](int tap, float xv) {
            acc[tap][0] = __fmaf_rn(xv, d0, acc[tap][0]);
            acc[tap][1] = __fmaf_rn(xv, d1, acc[tap][1]);
        });
    }
    // The block's rows in a fixed tree: rows 0-3 store, rows 4-7 add theirs to row - 4's, then
    // (0 + 1) + (2 + 3).
    if (row < C3_ROWS / 2) {
        for (int t = 0; t < C3_TAPS; ++t) {
            red[row][t * C3_MAX_O + 2 * lane] = acc[t][0];
            red[row][t * C3_MAX_O + 2 * lane + 1] = acc[t][1];
        }
    }
    __syncthreads();
    if (row >= C3_ROWS / 2) {
        for (int t = 0; t < C3_TAPS; ++t) {
            float* slot = red[row - C3_ROWS / 2] + t * C3_MAX_O + 2 * lane;
            slot[0] = __fadd_rn(slot[0], acc[t][0]);
            slot[1] = __fadd_rn(slot[1], acc[t][1]);
        }
    }
    __syncthreads();
    for (unsigned int v = threadIdx.x; v < C3_TAPS * C3_MAX_O; v += blockDim.x) {
        partial[blockIdx.x * (C3_TAPS * C3_MAX_O) + v] = __fadd_rn(__fadd_rn(red[0][v], red[1][v]), __fadd_rn(red[2][v], red[3][v]));
    }
}

// Weight gradient, second pass: ONE BLOCK per tap (27 blocks) of C3_MAX_O x C3_FIN_LANES
// threads. Thread (k, lane) sums the partial sums of output channel k from blocks lane,
// lane + 8, lane + 16, ... in that order, loading C3_FIN_UNROLL of them before it adds any;
// the 8 lanes are then added in a fixed tree, rounded to bf16 and written in w's order
// (o*27 + tap). Neighbouring threads read neighbouring channels (128 bytes per warp load).
// Before, one thread per weight summed all the blocks (396 on an H100: one wave of the first
// pass) one load after another, in 7 blocks of 256 threads, reading 256 bytes apart across a
// warp: about 100 memory latencies in a row per thread, some 50 µs by arithmetic, as long as
// the first pass it finishes; now 7 rounds of 8 loads, on 27 blocks.
#define C3_FIN_LANES 8   // lanes over the blocks (threadIdx.y); threadIdx.x is the channel, < C3_MAX_O
#define C3_FIN_UNROLL 8  // loads a lane issues before it adds
extern "C" __global__ void conv3x3_c3_wgrad_finish_bf16(const float* partial, bf16* dw, unsigned int blocks, unsigned int o)
{
    __shared__ float lanes[C3_FIN_LANES][C3_MAX_O];
    const unsigned int k = threadIdx.x, lane = threadIdx.y, tap = blockIdx.x;
    const float* col = partial + tap * C3_MAX_O + k;  // partial[q][tap][k] at col[q * 27 * 64]
    float sum = 0.0f;
    for (unsigned int first = lane; first < blocks; first += C3_FIN_UNROLL * C3_FIN_LANES) {
        float v[C3_FIN_UNROLL];
        for (int u = 0; u < C3_FIN_UNROLL; ++u) {
            const unsigned int q = first + u * C3_FIN_LANES;
            v[u] = q < blocks ? col[(unsigned long long)q * (C3_TAPS * C3_MAX_O)] : 0.0f;
        }
        for (int u = 0; u < C3_FIN_UNROLL; ++u) {
            if (first + u * C3_FIN_LANES < blocks) sum = __fadd_rn(sum, v[u]);
        }
    }
    lanes[lane][k] = sum;
    __syncthreads();
    for (unsigned int w = C3_FIN_LANES / 2; w > 0; w /= 2) {
        if (lane < w) lanes[lane][k] = __fadd_rn(lanes[lane][k], lanes[lane + w][k]);
        __syncthreads();
    }
    if (lane == 0 && k < o) dw[k * C3_TAPS + tap] = (bf16)c3_narrow(lanes[0][k]);
}
