// The network's first convolution, 3 input channels, as direct bf16 kernels instead of cuDNN
// (ops/src/conv2d_c3.rs): 3x3 kernel, stride 1, zero padding 1, channels-last data.
//
//   y[n,i,j,o]  = Σ_{r,s,c} w[o,r,s,c] · x[n, i+r-1, j+s-1, c]          (x outside the image = 0)
//   dw[o,r,s,c] = Σ_{n,i,j} dy[n,i,j,o] · x[n, i+r-1, j+s-1, c]
//
// Shapes (memory order): x [N, H, W, 3], w and dw [O, 3, 3, 3] as (o, r, s, c) (the weights'
// channels-last copies, KRSC), y and dy [N, H, W, O]; all bf16, sums in f32, each result
// rounded to bf16 once (nearest even). O is even and at most 64 (a warp's 32 lanes, a pair of
// output channels each), y and dy 4-byte aligned: the caller checks.
//
// Why not cuDNN: with C = 3 the convolution's arithmetic is tiny (1.8 GFLOP forward per batch
// of 512) and its cost is moving y (67 MB at batch 512) and dy, but on an H100 (2026-11-26,
// bench/results/h100-2026-11-26/build-02dad36/profile.txt) cuDNN's forward took 0.23 ms and
// its weight gradient 0.20 ms per step, where those bytes take about 0.02 ms each at the
// memory's rate: 12% of the training step for 0.3% of its arithmetic. PyTorch's forward of
// it took about 0.1 ms there (by subtraction: the kernels of its other seven forward
// convolutions sum to 0.61 of its 0.70 ms). On an H200 (2026-11-27) cuDNN took 0.31 ms forward
// and 0.20 ms for the weight gradient.
//
// The previous design, measured on an H200 (2026-11-27, bench/results/h200-2026-11-27/): its
// forward (one thread per pixel and group of 8 output channels, the weights in shared memory
// as [tap][o]) took 0.244 ms and its weight gradient (a warp per pixel at a time, a lane per
// channel pair, the pixel's indices by three divisions, its 27 inputs loaded one by one) 0.315
// + 0.008 ms per step, five to six times the estimate made for it (0.03 to 0.05 ms forward,
// 0.06 ms weight gradient), and the step captured as a CUDA graph was faster with cuDNN for both
// passes (3.12 ms against 3.20 ms with that forward and 3.35 ms with both). Probable causes, by
// arithmetic, not profiled: the forward read 27 x 8 weights per thread from shared memory (54
// 16-byte loads per pixel and 8 channels, lanes 0-7 32 bytes apart: two-way bank conflicts),
// about 0.22 ms of the shared memory's bandwidth; the weight gradient's loop over a warp's pixels
// is 347 instructions of sm_90 SASS (54 of them FFMA, 28 loads), with its one dy load per pixel
// not issued ahead (24 warps per SM, 128 bytes each in flight: far too few to stream dy). So
// these kernels run only when asked (`--first-conv direct-forward|direct`,
// engine::cuda::FirstConv).
//
// The present design, MEASURED on an H200 (2026-11-27, build 98c8127,
// bench/results/h200-2026-11-27/build-98c8127/profile.txt): forward 0.067 ms, weight gradient
// 0.079 ms + 0.006 ms for the finish, per training step at batch 512, against cuDNN's 0.318 and
// 0.198 ms; the step captured as a CUDA graph 2.95 ms against 3.12 ms with cuDNN for both, so
// these kernels are the default since. (About 1.3-1.5 times the estimates below.) y is cut into tiles of C3_ROWS = 8 rows x
// C3_SEG = 32 columns of one image (fewer at the image's edges); a block of 256 threads takes
// one tile at a time (grid-stride over the tiles; the host launches at most one wave, two
// blocks per SM by the launch bounds). The block stages the tile's inputs, 10 x 34 pixels with
// the padding as zeros, widened to f32 in shared memory (16 bytes a pixel, the 4th value 0),
// and for the weight gradient also the tile's dy (32 KB at O = 64, every load of a thread
// issued before its first store). Warp `row` then walks output row `row` of the tile left to
// right, lane k owning output channels 2k and 2k + 1 (lanes with 2k >= O idle): the pixel's
// 3x3x3 window is held in registers as three columns of 9 values, and each step loads only the
// new right column (three 16-byte shared loads, one address for the whole warp), the other two
// rotating through the registers (c3_walk). The forward keeps its lane's 54 weights in registers
// (widened once per block) and stores each pixel's pair as one 4-byte word (128 contiguous
// bytes per warp at O = 64); the weight gradient keeps 54 sums per lane and reads the pixel's
// dy pair from shared memory. No divisions per pixel: a tile's indices are computed once.
//
// What they should take at batch 512, O = 64, 32 x 32 images on an H100 or H200 (132 SMs;
// ESTIMATES from ptxas's output and the instruction counts of its sm_90 SASS, not measured):
//   registers (sm_90, NVRTC 13.0): forward 122, weight gradient 125 (no spills), so two blocks
//   of 256 per SM (16 warps) and a grid of 264 blocks for the 2048 tiles (7 or 8 tiles each);
//   forward, per pixel and warp: 54 FFMA, 3 LDS.128, 1 STG.32, 13 instructions of rounding to
//   bf16, about 5 of addressing and loop: ~76 warp instructions. 524,288 pixels / 132 SMs x 76
//   / 4 instructions per SM per cycle = 75K cycles; with ~5% for the staging (~3%) and the
//   uneven last tiles, about 0.04 ms at 1.98 GHz, 0.045 ms at 1.75 GHz. Its traffic: y 67 MB
//   written (0.017 ms at 4 TB/s, 0.022 ms at 3 TB/s), x 3 MB read about 1.25 times (the
//   staged rows above and below), w 3.5 KB per block. The FMA pipes are 71% busy at that
//   rate; shared memory delivers 1.5 KB per pixel and warp (12 cycles at its 128 bytes per
//   cycle if a 16-byte broadcast costs as much as 16 distinct bytes per lane, under the 19
//   cycles of issue).
//   weight gradient, per pixel and warp: 54 FFMA, 3 LDS.128 + 1 LDS.32, 2 to widen dy, about 8
//   of addressing and loop: ~68, plus the staging of dy (32 loads and 32 shared stores per
//   thread per tile: ~9%): about 0.04 ms at 1.98 GHz, 0.045 ms at 1.75 GHz, plus the finish
//   (~0.007 ms). Its traffic: dy 67 MB read once (0.017-0.022 ms), partial sums 1.8 MB.
//   So roughly 0.04-0.06 ms each, against cuDNN's 0.31 and 0.20 ms on the H200, if the GPU
//   runs them near their issue rate. Risks to watch in a profile: each block waits at its
//   barriers while it stages a tile (the other block of the SM computes meanwhile, 8 warps with
//   two dependent chains of 27 FFMA each in the forward); dy's DRAM latency per tile in the
//   weight gradient; the clock under load.
//
// Sums: the forward adds the 27 products of each output in (r, s, c) order with fused
// multiply-adds from 0 (__fmaf_rn, the same on the GPU and in the CPU emulation), taps over the
// padding included (a zero input: the same sum as skipping them unless a weight is infinite or
// NaN, which then gives NaN as the zero-padded formula does, or the sum so far is -0); the
// weight gradient sums per thread over its pixels in order (its tiles in order, each row left to
// right), then over the block's 8 rows of threads in a fixed tree, then over the blocks
// (conv3x3_c3_wgrad_finish: 8 lanes, each over every 8th block in order, then a fixed tree of
// the lanes): deterministic, the same bits at every run for a given grid.
//
// 32-bit indices: the caller checks that x, y and dy have fewer than 2^31 elements.

typedef unsigned short bf16;

// The bf16 bits are the f32's top 16 bits (exact).
__device__ __forceinline__ float c3_widen(bf16 h) { return __uint_as_float(((unsigned int)h) << 16); }

// v's bits with the bf16 that v rounds to in their top half: rounded to nearest even, NaN kept
// quiet (its top half (u >> 16) | 0x40); the low half is junk.
__device__ __forceinline__ unsigned int c3_rounded(float v)
{
    const unsigned int u = __float_as_uint(v);
    if (v != v) return u | 0x00400000u;
    return u + 0x7fffu + ((u >> 16) & 1u);
}

// Round to nearest even, NaN kept quiet: the same conversion as to_bf16 in bf16.cu.
__device__ __forceinline__ unsigned int c3_narrow(float v) { return c3_rounded(v) >> 16; }

// Two values rounded to bf16 as a pair, lo in the low half (c3_narrow of each).
__device__ __forceinline__ unsigned int c3_narrow_pair(float lo, float hi)
{
    return (c3_rounded(lo) >> 16) | (c3_rounded(hi) & 0xffff0000u);
}

#define C3_TAPS 27       // 3 rows x 3 columns x 3 channels: one output's products
#define C3_MAX_O 64      // output channels a warp covers (32 lanes x a pair) and the wgrad's partial sums hold
#define C3_THREADS 256   // threads per block of the forward and the wgrad's first pass (launched with exactly this)
#define C3_ROWS 8        // output rows of a tile: one per warp of a block (C3_THREADS / 32)
#define C3_SEG 32        // output columns of a tile: the pixels one warp walks along its row
#define C3_HALF (C3_MAX_O / 2)                                   // bf16 pairs of dy per pixel, at most
#define C3_DY_LOADS (C3_ROWS * C3_SEG * C3_HALF / C3_THREADS)   // words of a dy tile per thread (32)

// Tile `tile` of y: image b, output rows i0 .. i0 + C3_ROWS - 1 and columns j0 .. j0 + C3_SEG - 1,
// clipped to the image (tiles never span two images). Tiles are numbered column tile fastest,
// then row tile, then image.
__device__ __forceinline__ void c3_tile(unsigned int tile, unsigned int h, unsigned int wd, unsigned int& b, unsigned int& i0,
                                        unsigned int& j0)
{
    const unsigned int across = (wd + C3_SEG - 1) / C3_SEG, down = (h + C3_ROWS - 1) / C3_ROWS;
    j0 = tile % across * C3_SEG;
    i0 = tile / across % down * C3_ROWS;
    b = tile / across / down;
}

// The columns of a tile that starts at column j0: C3_SEG, or fewer at the image's right edge.
__device__ __forceinline__ unsigned int c3_len(unsigned int wd, unsigned int j0) { return wd - j0 < C3_SEG ? wd - j0 : C3_SEG; }

// The inputs under a tile's windows, widened, into shared memory: xs[r][s] = (x[b, i0+r-1, j0+s-1,
// 0..2], 0) for r < C3_ROWS + 2, s < C3_SEG + 2, and all zeros outside the image (the padding).
// Every thread of the block takes part (call between barriers).
__device__ __forceinline__ void c3_stage_x(float4 (*xs)[C3_SEG + 2], const bf16* x, unsigned int b, unsigned int i0,
                                           unsigned int j0, unsigned int h, unsigned int wd)
{
    for (unsigned int e = threadIdx.x; e < (C3_ROWS + 2) * (C3_SEG + 2); e += C3_THREADS) {
        const unsigned int r = e / (C3_SEG + 2), s = e % (C3_SEG + 2);
        const unsigned int i = i0 + r - 1, j = j0 + s - 1;  // unsigned: one before row or column 0 wraps past h or wd
        float4 v = {0.0f, 0.0f, 0.0f, 0.0f};
        if (i < h && j < wd) {
            const bf16* p = x + ((b * h + i) * wd + j) * 3;
            v.x = c3_widen(p[0]);
            v.y = c3_widen(p[1]);
            v.z = c3_widen(p[2]);
        }
        xs[r][s] = v;
    }
}

// The 9 inputs of the tile's staged column s under output row `row`: v[r*3 + c] = xs[row + r][s]'s
// channel c, r = 0..2 (one 16-byte shared load per r, the same address for the whole warp).
__device__ __forceinline__ void c3_column(const float4 (*xs)[C3_SEG + 2], unsigned int row, unsigned int s, float* v)
{
    for (int r = 0; r < 3; ++r) {
        const float4 q = xs[row + r][s];
        v[r * 3] = q.x;
        v[r * 3 + 1] = q.y;
        v[r * 3 + 2] = q.z;
    }
}

// A warp's walk along its output row of a tile: calls pixel(t, left, mid, right) for t = 0 .. len-1,
// the pixel at column j0 + t, with its 3x3 window as three columns of 9 inputs (window column s = 0,
// 1, 2; each indexed [r*3 + c]). The window slides: each step loads only its new right column; the
// other two are the previous step's, rotating through three register arrays (the loop body is three
// steps, so no values are copied).
template <typename Pixel>
__device__ __forceinline__ void c3_walk(const float4 (*xs)[C3_SEG + 2], unsigned int row, unsigned int len, Pixel pixel)
{
    float a[9], b[9], c[9];
    c3_column(xs, row, 0, a);
    c3_column(xs, row, 1, b);
    for (unsigned int t = 0; t < len; t += 3) {  // staged columns read: up to len + 1 <= C3_SEG + 1
        c3_column(xs, row, t + 2, c);
        pixel(t, a, b, c);
        if (t + 1 == len) break;
        c3_column(xs, row, t + 3, a);
        pixel(t + 1, b, c, a);
        if (t + 2 == len) break;
        c3_column(xs, row, t + 4, b);
        pixel(t + 2, c, a, b);
    }
}

// Forward: ONE BLOCK per tile at a time (C3_ROWS x C3_SEG pixels; grid-stride over the tiles), ONE
// WARP per output row of the tile, ONE LANE per pair of output channels: lane k computes channels
// 2k and 2k + 1 (lanes with 2k >= O idle) of the warp's pixels one after another, left to right,
// with its 54 weights in registers (widened once per block), and stores the pair as one 4-byte word
// (a warp: O*2 contiguous bytes of y, one pixel). The block first stages the tile's inputs in
// shared memory (c3_stage_x); the window of each pixel then comes from three registers arrays
// (c3_walk). Each output is the 27 products in (r, s, c) order, taps over the padding included
// (x = 0 there).
extern "C" __global__ void __launch_bounds__(C3_THREADS, 2)
    conv3x3_c3_forward_bf16(const bf16* x, const bf16* w, unsigned int* y, unsigned int n, unsigned int h, unsigned int wd, unsigned int o)
{
    __shared__ float4 xs[C3_ROWS + 2][C3_SEG + 2];
    const unsigned int lane = threadIdx.x % 32, row = threadIdx.x / 32, half = o / 2;
    const bool mine = 2 * lane < o;
    float wt[C3_TAPS][2];  // w[2k, tap], w[2k + 1, tap]
    for (int t = 0; t < C3_TAPS; ++t) {
        wt[t][0] = mine ? c3_widen(w[2 * lane * C3_TAPS + t]) : 0.0f;
        wt[t][1] = mine ? c3_widen(w[(2 * lane + 1) * C3_TAPS + t]) : 0.0f;
    }
    const unsigned int tiles = n * ((h + C3_ROWS - 1) / C3_ROWS) * ((wd + C3_SEG - 1) / C3_SEG);
    for (unsigned int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        unsigned int b, i0, j0;
        c3_tile(tile, h, wd, b, i0, j0);
        __syncthreads();  // the previous tile's windows are read
        c3_stage_x(xs, x, b, i0, j0, h, wd);
        __syncthreads();
        const unsigned int i = i0 + row;
        if (!mine || i >= h) continue;
        unsigned int* out = y + ((b * h + i) * wd + j0) * half + lane;  // pixel t of the row; then t + 1 at out + half, ...
        c3_walk(xs, row, c3_len(wd, j0), [&](unsigned int, const float* left, const float* mid, const float* right) {
            const float* cols[3] = {left, mid, right};
            float acc0 = 0.0f, acc1 = 0.0f;
            for (int r = 0; r < 3; ++r) {
                for (int s = 0; s < 3; ++s) {
                    for (int c = 0; c < 3; ++c) {
                        const int tap = (r * 3 + s) * 3 + c;
                        acc0 = __fmaf_rn(cols[s][r * 3 + c], wt[tap][0], acc0);
                        acc1 = __fmaf_rn(cols[s][r * 3 + c], wt[tap][1], acc1);
                    }
                }
            }
            *out = c3_narrow_pair(acc0, acc1);
            out += half;
        });
    }
}

// A tile's output gradients into shared memory as bf16 pairs, each output row's pixels packed:
// dys[r][s * (O/2) + k] = pair k (channels 2k, 2k + 1) of dy at pixel (b, i0 + r, j0 + s), for the
// row's pixels inside the image (the rest of dys[r] is 0). A tile row is contiguous in dy, so the
// block copies C3_ROWS runs of words, 128 bytes per warp load; each thread issues all its
// C3_DY_LOADS loads before it stores any. Every thread of the block takes part.
__device__ __forceinline__ void c3_stage_dy(unsigned int (*dys)[C3_SEG * C3_HALF], const unsigned int* dy, unsigned int b,
                                            unsigned int i0, unsigned int j0, unsigned int h, unsigned int wd, unsigned int o)
{
    const unsigned int half = o / 2, words = c3_len(wd, j0) * half;  // a tile row's words
    unsigned int v[C3_DY_LOADS];
    for (int u = 0; u < C3_DY_LOADS; ++u) {
        const unsigned int r = u / (C3_DY_LOADS / C3_ROWS), e = threadIdx.x + u % (C3_DY_LOADS / C3_ROWS) * C3_THREADS;
        v[u] = i0 + r < h && e < words ? dy[((b * h + i0 + r) * wd + j0) * half + e] : 0u;
    }
    for (int u = 0; u < C3_DY_LOADS; ++u) {
        const unsigned int r = u / (C3_DY_LOADS / C3_ROWS), e = threadIdx.x + u % (C3_DY_LOADS / C3_ROWS) * C3_THREADS;
        dys[r][e] = v[u];
    }
}

// Weight gradient, first pass: each block sums over its tiles' pixels into partial[block] ([27][64]
// f32, [tap][o]). As in the forward, one block per tile at a time (grid-stride), one warp per
// output row of the tile, one lane per pair of output channels: thread (row, lane) adds
// dy[pixel, 2k] * window and dy[pixel, 2k + 1] * window into its 54 sums for each pixel of its row,
// left to right (c3_walk), its tiles in order; the block stages the tile's inputs (c3_stage_x) and
// output gradients (c3_stage_dy) in shared memory first. Then the block's 8 rows of sums are added
// in a fixed tree (in shared memory that held dy). Taps over the padding add 0 * dy.
extern "C" __global__ void __launch_bounds__(C3_THREADS, 2) conv3x3_c3_wgrad_partial_bf16(const bf16* x, const unsigned int* dy, float* partial,
                                                                                        unsigned int n, unsigned int h, unsigned int wd,
                                                                                        unsigned int o)
{
    __shared__ float4 xs[C3_ROWS + 2][C3_SEG + 2];
    __shared__ union {
        unsigned int dy[C3_ROWS][C3_SEG * C3_HALF];       // a tile's dy (c3_stage_dy)
        float red[C3_ROWS / 2][C3_TAPS * C3_MAX_O];        // then, after the last tile, the rows' sums
    } sm;
    const unsigned int lane = threadIdx.x % 32, row = threadIdx.x / 32, half = o / 2;
    const bool mine = 2 * lane < o;
    float acc[C3_TAPS][2];
    for (int t = 0; t < C3_TAPS; ++t) acc[t][0] = acc[t][1] = 0.0f;
    const unsigned int tiles = n * ((h + C3_ROWS - 1) / C3_ROWS) * ((wd + C3_SEG - 1) / C3_SEG);
    for (unsigned int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        unsigned int b, i0, j0;
        c3_tile(tile, h, wd, b, i0, j0);
        __syncthreads();  // the previous tile's windows and dy are read
        c3_stage_x(xs, x, b, i0, j0, h, wd);
        c3_stage_dy(sm.dy, dy, b, i0, j0, h, wd, o);
        __syncthreads();
        if (!mine || i0 + row >= h) continue;
        const unsigned int* d = sm.dy[row] + lane;  // pixel t of the row at d[t * half]
        c3_walk(xs, row, c3_len(wd, j0), [&](unsigned int t, const float* left, const float* mid, const float* right) {
            const float* cols[3] = {left, mid, right};
            const unsigned int dd = d[t * half];
            const float d0 = c3_widen((bf16)(dd & 0xffffu)), d1 = c3_widen((bf16)(dd >> 16));
            for (int r = 0; r < 3; ++r) {
                for (int s = 0; s < 3; ++s) {
                    for (int c = 0; c < 3; ++c) {
                        const int tap = (r * 3 + s) * 3 + c;
                        acc[tap][0] = __fmaf_rn(cols[s][r * 3 + c], d0, acc[tap][0]);
                        acc[tap][1] = __fmaf_rn(cols[s][r * 3 + c], d1, acc[tap][1]);
                    }
                }
            }
        });
    }
    __syncthreads();  // the last tile's dy is read: sm.red may overwrite it
    // The block's rows in a fixed tree: rows 0-3 store, rows 4-7 add theirs to row - 4's, then
    // (0 + 1) + (2 + 3).
    if (row < C3_ROWS / 2) {
        for (int t = 0; t < C3_TAPS; ++t) {
            sm.red[row][t * C3_MAX_O + 2 * lane] = acc[t][0];
            sm.red[row][t * C3_MAX_O + 2 * lane + 1] = acc[t][1];
        }
    }
    __syncthreads();
    if (row >= C3_ROWS / 2) {
        for (int t = 0; t < C3_TAPS; ++t) {
            float* slot = sm.red[row - C3_ROWS / 2] + t * C3_MAX_O + 2 * lane;
            slot[0] = __fadd_rn(slot[0], acc[t][0]);
            slot[1] = __fadd_rn(slot[1], acc[t][1]);
        }
    }
    __syncthreads();
    for (unsigned int v = threadIdx.x; v < C3_TAPS * C3_MAX_O; v += blockDim.x) {
        partial[blockIdx.x * (C3_TAPS * C3_MAX_O) + v] =
            __fadd_rn(__fadd_rn(sm.red[0][v], sm.red[1][v]), __fadd_rn(sm.red[2][v], sm.red[3][v]));
    }
}

// Weight gradient, second pass: ONE BLOCK per tap (27 blocks) of C3_MAX_O x C3_FIN_LANES
// threads. Thread (k, lane) sums the partial sums of output channel k from blocks lane,
// lane + 8, lane + 16, ... in that order, loading C3_FIN_UNROLL of them before it adds any;
// the 8 lanes are then added in a fixed tree, rounded to bf16 and written in w's order
// (o*27 + tap). Neighbouring threads read neighbouring channels (128 bytes per warp load).
// Before, one thread per weight summed all the blocks (396 on an H100: one wave of the first
// pass as it was then) one load after another, in 7 blocks of 256 threads, reading 256 bytes
// apart across a warp: about 100 memory latencies in a row per thread, some 50 µs by
// arithmetic, as long as the first pass it finished; now ceil(blocks / 64) rounds of 8 loads
// (5 for the 264 blocks of one wave of the present first pass on an H100 or H200), on 27 blocks.
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
