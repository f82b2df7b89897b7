// emu.h: just enough of CUDA C to compile the kernel sources of ptx/ as C++ and run them
// on the CPU. A semantic check of the kernels' index math, reductions and barriers, not a
// substitute for running them on a GPU (see README.md for what it does not model).
//
// Model:
//  - blocks run one after another; the threads of a block run as std::threads (launch) or,
//    for kernels without __syncthreads, one after another in the calling thread (launch_seq);
//  - __shared__ is `static`: one copy per kernel instantiation, which is per block in effect
//    because blocks never overlap (its contents are NOT reset between blocks: before each block
//    the harness cannot know the arrays, so a kernel that reads shared memory before writing it
//    sees the previous block's values, as it might on a GPU);
//  - __syncthreads is a barrier over the block's threads; a thread that returns from the
//    kernel leaves it (as an exited warp does on the GPU). CUDA's rule that every thread of a
//    block reaches the same barriers is checked: threads of one block whose sequences of
//    __syncthreads (count and source lines) differ are reported (exit 3), and so is a launch
//    that stops making progress at a barrier (a watchdog, instead of hanging);
//  - no warps: no shuffles, votes or warp-synchronous code.
#pragma once

#include <math.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <source_location>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__
#define __noinline__
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static

// CUDA's built-in 16-byte vector type (the vectorised passes of batch_norm_relu.cu).
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
// and its 8-byte one (max_pool.cu's index bytes of 8 bf16 lanes).
struct alignas(8) uint2 {
    unsigned int x, y;
};
// and the 16-byte float one (conv_c3.cu's staged inputs).
struct alignas(16) float4 {
    float x, y, z, w;
};

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

// ---- __syncthreads ----

namespace emu {

inline int barrier_timeout_s = 20;       // no barrier progress for this long: a deadlock
inline std::atomic<unsigned long long> progress{0};  // barrier releases so far (the watchdog's clock)

// A reusable barrier for `expected` threads; a thread that finishes the kernel drops out.
// Counting under a mutex; waiting on an atomic generation (C++20 wait/notify).
class Barrier {
public:
    explicit Barrier(unsigned int expected, std::function<void()> on_release = {})
        : expected_(expected), on_release_(std::move(on_release)) {}

    void arrive_and_wait()
    {
        unsigned int gen;
        {
            std::lock_guard<std::mutex> lk(m_);
            gen = gen_.load(std::memory_order_relaxed);
            if (++arrived_ >= expected_) {
                release();
                return;
            }
        }
        while (gen_.load(std::memory_order_acquire) == gen) {
            gen_.wait(gen, std::memory_order_acquire);
        }
    }

    // For the next block (called when no thread is inside the kernel).
    void rearm(unsigned int expected)
    {
        std::lock_guard<std::mutex> lk(m_);
        expected_ = expected;
        arrived_ = 0;
    }

    void drop()
    {
        std::lock_guard<std::mutex> lk(m_);
        --expected_;
        if (expected_ > 0 && arrived_ >= expected_) {
            release();
        }
    }

    unsigned int arrived() { std::lock_guard<std::mutex> lk(m_); return arrived_; }
    unsigned int expected() { std::lock_guard<std::mutex> lk(m_); return expected_; }

private:
    void release()  // under m_
    {
        arrived_ = 0;
        if (on_release_) {
            on_release_();
        }
        progress.fetch_add(1, std::memory_order_relaxed);
        gen_.fetch_add(1, std::memory_order_release);
        gen_.notify_all();
    }

    std::mutex m_;
    unsigned int expected_;
    unsigned int arrived_ = 0;
    std::atomic<unsigned int> gen_{0};
    std::function<void()> on_release_;
};

inline thread_local Barrier* current_barrier = nullptr;
inline thread_local bool sequential = false;
// The __syncthreads calls of this thread in the current block: how many, and a hash of
// their source lines in order. CUDA requires every thread of a block to reach the same
// barriers; a block whose threads differ here is reported (launch), even where the
// emulation (like the GPU, often) would not hang.
inline thread_local unsigned long long sync_calls = 0;
inline thread_local unsigned long long sync_hash = 0;
inline thread_local unsigned int sync_first_line = 0;

}  // namespace emu

inline void __syncthreads(std::source_location loc = std::source_location::current())
{
    emu::sync_hash = emu::sync_hash * 1000003ull + loc.line();
    if (emu::sync_calls++ == 0) {
        emu::sync_first_line = loc.line();
    }
    if (emu::sequential) {
        std::fprintf(stderr, "emu: __syncthreads in a kernel launched with launch_seq (use launch)\n");
        std::_Exit(3);
    }
    emu::current_barrier->arrive_and_wait();
}

// ---- intrinsics ----

inline float __uint_as_float(unsigned int u)
{
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline unsigned int __float_as_uint(float f)
{
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline float __int_as_float(int u)
{
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline int __float_as_int(float f)
{
    int u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline double __longlong_as_double(long long u)
{
    double f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline long long __double_as_longlong(double f)
{
    long long u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// Round-to-nearest arithmetic: plain operations (built with -ffp-contract=off, so they are
// never fused). The directed-rounding variants are not provided.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// Fast-math intrinsics: here exact (the GPU's are approximate, so compare with tolerances).
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }

// CUDA's min/max overloads for integers (floats use fminf/fmaxf or the overloads below).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// Float overloads of the math functions in the global namespace (as CUDA's headers give).
using std::ceil;
using std::exp;
using std::fabs;
using std::floor;
using std::fma;
using std::log;
using std::sqrt;

// ---- launches ----

namespace emu {

inline unsigned long long threads_started = 0;  // emulated threads (block threads x blocks)

// Run `kernel` over `grid` x `block`: blocks one after another, the threads of a block
// concurrently. One std::thread per thread of the block is started per launch and runs
// that thread of every block in turn; a rendezvous separates the blocks (so no thread of a
// block starts before every thread of the previous block has returned).
template <typename... P, typename... Args>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, Args... args)
{
    static_assert(sizeof...(P) == sizeof...(Args), "launch: wrong number of kernel arguments");
    const unsigned int nt = block.x * block.y * block.z;
    const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
    gridDim = grid;
    blockDim = block;
    Barrier bar(nt);  // __syncthreads of the current block
    // End of block: every thread has returned from the kernel; re-arm `bar` for the next block.
    struct Sync {
        unsigned long long calls, hash;
        unsigned int first_line;
    };
    std::vector<Sync> syncs(nt);
    unsigned long long block_done = 0;
    Barrier end_bar(nt, [&] {
        for (unsigned int t = 1; t < nt; ++t) {
            if (syncs[t].calls != syncs[0].calls || syncs[t].hash != syncs[0].hash) {
                const unsigned long long b = block_done;
                std::fprintf(stderr,
                             "emu: divergent __syncthreads in block (%llu,%llu,%llu): thread (%u,%u,%u) called it %llu "
                             "times (first at line %u), thread (0,0,0) %llu times (first at line %u) or at other lines\n",
                             b % grid.x, (b / grid.x) % grid.y, b / ((unsigned long long)grid.x * grid.y), t % block.x,
                             (t / block.x) % block.y, t / (block.x * block.y), syncs[t].calls, syncs[t].first_line,
                             syncs[0].calls, syncs[0].first_line);
                std::_Exit(3);
            }
        }
        ++block_done;
        bar.rearm(nt);
    });
    std::atomic<unsigned long long> block_now{0};
    std::atomic<unsigned int> finished{0};
    std::vector<std::thread> threads;
    threads.reserve(nt);
    for (unsigned int tz = 0; tz < block.z; ++tz) {
        for (unsigned int ty = 0; ty < block.y; ++ty) {
            for (unsigned int tx = 0; tx < block.x; ++tx) {
                threads.emplace_back([&, tx, ty, tz] {
                    threadIdx = uint3(tx, ty, tz);
                    current_barrier = &bar;
                    sequential = false;
                    for (unsigned long long b = 0; b < nb; ++b) {
                        blockIdx = uint3((unsigned int)(b % grid.x), (unsigned int)((b / grid.x) % grid.y),
                                         (unsigned int)(b / ((unsigned long long)grid.x * grid.y)));
                        sync_calls = sync_hash = 0;
                        sync_first_line = 0;
                        kernel(static_cast<P>(args)...);
                        syncs[(tz * block.y + ty) * block.x + tx] = Sync{sync_calls, sync_hash, sync_first_line};
                        bar.drop();
                        if (tx == 0 && ty == 0 && tz == 0) {
                            block_now.store(b + 1, std::memory_order_relaxed);
                        }
                        end_bar.arrive_and_wait();
                    }
                    finished.fetch_add(1);
                });
            }
        }
    }
    // Watchdog: a block whose threads stop reaching their barriers (a __syncthreads that
    // not every live thread of the block reaches) is reported instead of hanging.
    unsigned long long seen = progress.load();
    auto since = std::chrono::steady_clock::now();
    while (finished.load() < nt) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        const unsigned long long p = progress.load();
        if (p != seen) {
            seen = p;
            since = std::chrono::steady_clock::now();
        } else if (std::chrono::steady_clock::now() - since > std::chrono::seconds(barrier_timeout_s)) {
            const unsigned long long b = block_now.load();
            std::fprintf(stderr,
                         "emu: deadlock near block %llu of %llu: %u of %u live threads wait at __syncthreads "
                         "(a barrier not reached by every thread of the block?)\n",
                         b, nb, bar.arrived(), bar.expected());
            std::_Exit(3);
        }
    }
    for (auto& t : threads) {
        t.join();
    }
    threads_started += nt * nb;
}

// Run a kernel that has no __syncthreads (grid-stride elementwise kernels) with its exact
// grid and block shape, every thread one after another in the calling thread (fast;
// a __syncthreads aborts).
template <typename... P, typename... Args>
void launch_seq(void (*kernel)(P...), dim3 grid, dim3 block, Args... args)
{
    static_assert(sizeof...(P) == sizeof...(Args), "launch_seq: wrong number of kernel arguments");
    gridDim = grid;
    blockDim = block;
    sequential = true;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx)
                for (unsigned int tz = 0; tz < block.z; ++tz)
                    for (unsigned int ty = 0; ty < block.y; ++ty)
                        for (unsigned int tx = 0; tx < block.x; ++tx) {
                            blockIdx = uint3(bx, by, bz);
                            threadIdx = uint3(tx, ty, tz);
                            kernel(static_cast<P>(args)...);
                        }
    sequential = false;
    blockIdx = uint3(0, 0, 0);
    threadIdx = uint3(0, 0, 0);
}

// cudarc's LaunchConfig::for_num_elems(n): 1024-thread blocks, ceil(n / 1024) of them
// (ops/src/cuda.rs grid() launches for_num_elems(max(n, 1))).
struct Config {
    dim3 grid, block;
};
inline Config for_num_elems(unsigned int n)
{
    n = n < 1 ? 1 : n;
    return Config{dim3((n + 1023) / 1024), dim3(1024)};
}

}  // namespace emu
