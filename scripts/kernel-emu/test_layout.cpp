// ptx/layout.cu on the CPU: nchw_to_nhwc_{u16,u32,u64} and nhwc_to_nchw_* as
// ops/src/layout.rs launches them (kernel(x, y, n, c, hw), grid(total): 1024-thread blocks),
// compared bit for bit with a permutation written here; also both directions in a row.
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/layout.cu"
#endif
#include "check.h"

#include <string>

template <typename U>
struct LK;
template <>
struct LK<unsigned short> {
    static constexpr auto to_nhwc = nchw_to_nhwc_u16;
    static constexpr auto to_nchw = nhwc_to_nchw_u16;
    static constexpr const char* name = "u16";
};
template <>
struct LK<unsigned int> {
    static constexpr auto to_nhwc = nchw_to_nhwc_u32;
    static constexpr auto to_nchw = nhwc_to_nchw_u32;
    static constexpr const char* name = "u32";
};
template <>
struct LK<unsigned long long> {
    static constexpr auto to_nhwc = nchw_to_nhwc_u64;
    static constexpr auto to_nchw = nhwc_to_nchw_u64;
    static constexpr const char* name = "u64";
};

template <typename U>
void case_layout(unsigned n, unsigned c, unsigned h, unsigned w, std::mt19937_64& rng)
{
    const unsigned hw = h * w, total = n * c * hw;
    auto nchw = [&](unsigned b, unsigned ch, unsigned p) { return ((size_t)b * c + ch) * hw + p; };
    auto nhwc = [&](unsigned b, unsigned ch, unsigned p) { return ((size_t)b * hw + p) * c + ch; };
    std::vector<U> x(total), y(total, U(~U(0))), back(total, U(~U(0))), r_y(total);
    for (auto& v : x) v = U(rng());
    for (unsigned b = 0; b < n; ++b)
        for (unsigned ch = 0; ch < c; ++ch)
            for (unsigned p = 0; p < hw; ++p) r_y[nhwc(b, ch, p)] = x[nchw(b, ch, p)];
    const auto cfg = emu::for_num_elems(total);
    emu::launch_seq(LK<U>::to_nhwc, cfg.grid, cfg.block, (const U*)x.data(), y.data(), n, c, hw);
    emu::launch_seq(LK<U>::to_nchw, cfg.grid, cfg.block, (const U*)y.data(), back.data(), n, c, hw);
    char L[128];
    std::snprintf(L, sizeof L, "layout %s [%u,%u,%u,%u]: ", LK<U>::name, n, c, h, w);
    chk::equal(std::string(L) + "nchw_to_nhwc", y, r_y);
    chk::equal(std::string(L) + "nhwc_to_nchw(nchw_to_nhwc(x)) == x", back, x);
    // nhwc_to_nchw on its own: its input is r_y's layout, so its output must be x
    std::vector<U> z(total, U(~U(0)));
    emu::launch(LK<U>::to_nchw, dim3(std::min(3u, cfg.grid.x)), dim3(64), (const U*)r_y.data(), z.data(), n, c, hw);
    chk::equal(std::string(L) + "nhwc_to_nchw (3x64 threads, grid-stride)", z, x);
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-v") chk::verbose = true;
    std::mt19937_64 rng(5);
    const unsigned shapes[][4] = {{2, 3, 5, 7}, {3, 37, 15, 15}, {1, 1, 1, 1}, {4, 64, 8, 8}, {5, 3, 32, 32}, {2, 1, 3, 3}, {1, 7, 1, 1}};
    for (const auto& s : shapes) {
        case_layout<unsigned short>(s[0], s[1], s[2], s[3], rng);
        case_layout<unsigned int>(s[0], s[1], s[2], s[3], rng);
        case_layout<unsigned long long>(s[0], s[1], s[2], s[3], rng);
    }
    return chk::finish("layout");
}
