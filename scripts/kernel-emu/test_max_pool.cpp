// ptx/max_pool.cu on the CPU: max_pool_backward{,_f64,_bf16}(x, dy, dx, n, c, h, w, k, nhwc) as
// ops/src/max_pool.rs launches it (grid(windows): 1024-thread blocks, dx zeroed first when
// H or W is not a multiple of k), compared bit for bit with the rule written here on NCHW
// loops: dy goes to the first maximum of its window (a NaN wins its window), 0 elsewhere.
// In NHWC with C a multiple of 4 (f32) or 8 (bf16) also max_pool_forward_nhwc_vec{,_bf16}(x, y,
// idx, n, c, h, w, k) and then max_pool_backward_nhwc_idx{,_bf16}(idx, dy, dx, n, c, h, w, k) on
// 16-byte vectors (blocks of 256, one thread per window and group: vec_grid), as
// ops/src/max_pool.rs launches them there: the
// forward's y must be the bits of x at each window's first maximum, its idx byte (in y's order)
// that maximum's position p*k + q in the window, and the backward from idx alone (x is not
// passed) the same dx as the rule.
// Inputs: random values with deliberate ties (small integers) and NaNs; shapes with and
// without trailing rows/columns; both memory orders; also a grid smaller than the windows.
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/max_pool.cu"
#endif
#include "check.h"

#include <string>

template <typename T>
struct MK;
template <>
struct MK<float> {
    using U = uint32_t;
    static constexpr auto kernel = max_pool_backward;
    static constexpr auto idx_backward = max_pool_backward_nhwc_idx;
    static constexpr auto vec_forward = max_pool_forward_nhwc_vec;
    static constexpr unsigned lanes = 4;
    static constexpr const char* name = "f32";
    static float make(double v) { return float(v); }
    static double value(float v) { return v; }
};
template <>
struct MK<double> {
    using U = uint64_t;
    static constexpr auto kernel = max_pool_backward_f64;
    static constexpr unsigned lanes = 0;  // no vectorised kernel
    static constexpr const char* name = "f64";
    static double make(double v) { return v; }
    static double value(double v) { return v; }
};
template <>
struct MK<unsigned short> {
    using U = uint16_t;
    static constexpr auto kernel = max_pool_backward_bf16;
    static constexpr auto idx_backward = max_pool_backward_nhwc_idx_bf16;
    static constexpr auto vec_forward = max_pool_forward_nhwc_vec_bf16;
    static constexpr unsigned lanes = 8;
    static constexpr const char* name = "bf16";
    static unsigned short make(double v) { return chk::to_bf16(float(v)); }
    static double value(unsigned short v) { return chk::from_bf16(v); }
};

template <typename T>
void case_pool(unsigned n, unsigned c, unsigned h, unsigned w, unsigned k, bool nhwc, std::mt19937_64& rng)
{
    using K = MK<T>;
    const unsigned oh = h / k, ow = w / k;
    const size_t xn = size_t(n) * c * h * w, yn = size_t(n) * c * oh * ow;
    auto xi = [&](size_t b, size_t ch, size_t r, size_t col) {
        return nhwc ? ((b * h + r) * w + col) * c + ch : ((b * c + ch) * h + r) * w + col;
    };
    auto yi = [&](size_t b, size_t ch, size_t r, size_t col) {
        return nhwc ? ((b * oh + r) * ow + col) * c + ch : ((b * c + ch) * oh + r) * ow + col;
    };
    std::uniform_int_distribution<int> small(-3, 3);
    std::normal_distribution<double> normal;
    std::vector<T> x(xn), dy(yn);
    for (size_t i = 0; i < xn; ++i) {
        const auto pick = rng() % 16;
        // ties from small integers, NaNs now and then, the rest normal
        x[i] = K::make(pick == 0 ? std::nan("") : pick < 8 ? double(small(rng)) : normal(rng));
    }
    for (auto& v : dy) v = K::make(normal(rng) + 0.5);
    // the reference: NCHW loops over windows, the CPU rule of ops/src/max_pool.rs
    std::vector<T> want(xn, K::make(0.0)), want_y(yn);
    std::vector<uint8_t> want_idx(yn);  // position p*k + q of each window's first maximum, in y's order
    for (size_t b = 0; b < n; ++b)
        for (size_t ch = 0; ch < c; ++ch)
            for (size_t i = 0; i < oh; ++i)
                for (size_t j = 0; j < ow; ++j) {
                    size_t best = xi(b, ch, i * k, j * k), best_pos = 0;
                    for (size_t p = 0; p < k; ++p)
                        for (size_t q = 0; q < k; ++q) {
                            const size_t at = xi(b, ch, i * k + p, j * k + q);
                            const double v = K::value(x[at]), bv = K::value(x[best]);
                            if (v > bv || (std::isnan(v) && !std::isnan(bv))) {
                                best = at;
                                best_pos = p * k + q;
                            }
                        }
                    want[best] = dy[yi(b, ch, i, j)];
                    want_y[yi(b, ch, i, j)] = x[best];
                    want_idx[yi(b, ch, i, j)] = uint8_t(best_pos);
                }
    const bool whole = h % k == 0 && w % k == 0;
    char L[160];
    std::snprintf(L, sizeof L, "max_pool_backward %s %s [%u,%u,%u,%u] k=%u", K::name, nhwc ? "NHWC" : "NCHW", n, c, h, w, k);
    const auto cfg = emu::for_num_elems(unsigned(yn));
    for (int small_grid = 0; small_grid < 2; ++small_grid) {
        // poison what the kernel must write; zero first only where the Rust side does
        std::vector<T> dx(xn, whole ? K::make(std::nan("")) : K::make(0.0));
        if (small_grid)
            emu::launch_seq(K::kernel, dim3(std::min(2u, cfg.grid.x)), dim3(32), (const T*)x.data(), (const T*)dy.data(),
                            dx.data(), n, c, h, w, k, unsigned(nhwc));
        else
            emu::launch_seq(K::kernel, cfg.grid, cfg.block, (const T*)x.data(), (const T*)dy.data(), dx.data(), n, c, h, w, k,
                            unsigned(nhwc));
        std::vector<typename K::U> g(xn), r(xn);
        std::memcpy(g.data(), dx.data(), xn * sizeof(T));
        std::memcpy(r.data(), want.data(), xn * sizeof(T));
        chk::equal(std::string(L) + (small_grid ? " (2x32 threads, grid-stride)" : ""), g, r);
    }
    if constexpr (K::lanes > 0) {
        if (nhwc && c % K::lanes == 0) {
            // The vectorised forward, then the backward from its index bytes, on the same inputs
            // (std::vector's buffers are 16-byte aligned here, as the Rust side requires);
            // 16-byte units, one thread per window and group.
            static_assert(sizeof(uint4) == 16 && sizeof(uint2) == 8);
            const unsigned groups = unsigned(yn / K::lanes);
            const emu::Config vcfg{dim3(std::max(1u, (groups + 255) / 256)), dim3(256)};
            for (int small_grid = 0; small_grid < 2; ++small_grid) {
                const dim3 grid = small_grid ? dim3(std::min(2u, vcfg.grid.x)) : vcfg.grid, block = small_grid ? dim3(32) : vcfg.block;
                const std::string tag = std::string(" vectorised") + (small_grid ? " (2x32 threads, grid-stride)" : "");
                // The forward: y and idx poisoned, then the first maxima's bits and positions.
                std::vector<T> y(yn, K::make(std::nan("1")));
                std::vector<uint8_t> idx(yn, 0xee);
                emu::launch_seq(K::vec_forward, grid, block, reinterpret_cast<const uint4*>(x.data()), reinterpret_cast<uint4*>(y.data()),
                                idx.data(), n, c, h, w, k);
                std::vector<typename K::U> gy(yn), ry(yn);
                std::memcpy(gy.data(), y.data(), yn * sizeof(T));
                std::memcpy(ry.data(), want_y.data(), yn * sizeof(T));
                std::string Lf = L;
                Lf.replace(0, std::string("max_pool_backward").size(), "max_pool_forward");
                chk::equal(Lf + tag, gy, ry);
                chk::equal(Lf + tag + ": idx", idx, want_idx);
                // The backward from the forward's idx (x is not an argument).
                std::vector<T> dx(xn, whole ? K::make(std::nan("")) : K::make(0.0));
                emu::launch_seq(K::idx_backward, grid, block, (const unsigned char*)idx.data(), reinterpret_cast<const uint4*>(dy.data()),
                                reinterpret_cast<uint4*>(dx.data()), n, c, h, w, k);
                std::vector<typename K::U> g(xn), r(xn);
                std::memcpy(g.data(), dx.data(), xn * sizeof(T));
                std::memcpy(r.data(), want.data(), xn * sizeof(T));
                chk::equal(std::string(L) + tag + " (from idx)", g, r);
            }
        }
    }
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-v") chk::verbose = true;
    std::mt19937_64 rng(11);
    // the network's pools (scaled down), trailing rows/columns, a 1x1 output, one channel;
    // vectorised (NHWC): 8 and 16 channels (both widths), 4 and 12 (f32 only), with trailing
    // rows/columns, k = 3
    const unsigned shapes[][5] = {{2, 8, 8, 8, 2},  {3, 5, 9, 11, 2}, {2, 16, 4, 4, 4}, {1, 3, 11, 10, 4}, {2, 1, 6, 6, 3},
                                  {1, 4, 2, 2, 2},  {3, 8, 9, 11, 2}, {1, 16, 11, 10, 4}, {2, 12, 7, 6, 3}, {2, 24, 6, 6, 2}};
    for (const auto& s : shapes)
        for (bool nhwc : {false, true}) {
            case_pool<float>(s[0], s[1], s[2], s[3], s[4], nhwc, rng);
            case_pool<double>(s[0], s[1], s[2], s[3], s[4], nhwc, rng);
            case_pool<unsigned short>(s[0], s[1], s[2], s[3], s[4], nhwc, rng);
        }
    return chk::finish("max_pool");
}
