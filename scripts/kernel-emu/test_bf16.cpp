// ptx/bf16.cu on the CPU: f32_to_bf16 / bf16_to_f32 as ops/src/cast.rs launches them (x, y, n),
// relu_forward_bf16, relu_backward_bf16 and add_bf16 (and add_bf16_x8) as ops/src/cuda.rs bf16_map
// launches them (inputs..., out, n), accumulate_bf16(a, b, n) (and _x8) as engine/src/tensor.rs
// does; the one-value-per-thread kernels on
// grid(n) = for_num_elems(max(n, 1)). Compared bit for bit with references written here from
// the VALUES, not the kernel's bit trick:
//  - f32 -> bf16: the nearer of the two bf16 neighbours of |x| (found by truncation and +1),
//    ties to the even one, 2^128 standing for the neighbour above the largest finite bf16
//    (IEEE overflow: |x| >= 0x7f7f8000 rounds to inf); NaN -> (bits >> 16) | 0x40 (sign kept,
//    quiet, as half::bf16::from_f32). Every bf16 pattern with the low halves 0, 1, 0x7fff,
//    0x8000 (the ties), 0x8001 and 0xffff, plus random patterns;
//  - bf16 -> f32: decoded from sign, exponent and fraction (exhaustive; NaN payload kept);
//  - relu: +x where x > 0 else +0 (NaN, -0, negatives -> +0); backward dy where y > 0;
//  - add/accumulate: the f32 sum of the widened values, then the rounding above (a NaN sum
//    must give a NaN; its payload is not compared: x86 and the GPU make different NaNs);
//  - weights_to_bf16_krsc{,_tiled} / weight_grads_to_f32_kcrs (ops/src/weight_copy.rs): the KCRS <-> KRSC
//    permutation with the rounding above, and exact widening back (see case_weight_copy).
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/bf16.cu"
#endif
#include "check.h"

#include <string>

using u16 = uint16_t;
using u32 = uint32_t;

double bf16_value(u16 h)  // from the fields
{
    const int sign = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v;
    if (e == 0) {
        v = std::ldexp(double(m), -126 - 7);
    } else if (e == 255) {
        v = m ? NAN : INFINITY;
    } else {
        v = std::ldexp(1.0 + m / 128.0, e - 127);
    }
    return sign ? -v : v;
}

float f32_of_bits(u32 u)
{
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
u32 bits_of(float f)
{
    u32 u;
    std::memcpy(&u, &f, 4);
    return u;
}

u16 ref_to_bf16(float x)
{
    const u32 u = bits_of(x);
    if (std::isnan(x)) return u16((u >> 16) | 0x40);
    const u16 t = u16(u >> 16);  // truncation: the neighbour at or below |x|
    if ((t & 0x7fff) == 0x7f80) return t;  // inf
    const double v = std::fabs(double(x)), lo = std::fabs(bf16_value(t));
    const double hi = (t & 0x7fff) == 0x7f7f ? std::ldexp(1.0, 128) : std::fabs(bf16_value(u16(t + 1)));
    if (v == lo) return t;
    const double dlo = v - lo, dhi = hi - v;  // exact: neighbours within one bf16 ulp
    if (dlo < dhi) return t;
    if (dlo > dhi) return u16(t + 1);
    return (t & 1) ? u16(t + 1) : t;
}

bool bf16_nan(u16 h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f); }

// bits equal, except that two NaNs are equal whatever their payloads
void same16(const std::string& what, std::vector<u16> got, const std::vector<u16>& want)
{
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i)
        if (bf16_nan(got[i]) && bf16_nan(want[i])) got[i] = want[i];
    chk::equal(what, got, want);
}

void case_cast(std::mt19937_64& rng)
{
    std::vector<u32> xs;
    for (u32 hi = 0; hi < 0x10000; ++hi)
        for (u32 lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) xs.push_back(hi << 16 | lo);
    for (int i = 0; i < 200000; ++i) xs.push_back(u32(rng()));
    const unsigned n = (unsigned)xs.size();
    std::vector<u16> y(n, 0xdead), want(n);
    const auto cfg = emu::for_num_elems(n);
    // launch_cast::<u32, u16>: the f32 elements passed as their bits
    std::vector<float> xf(n);
    std::memcpy(xf.data(), xs.data(), n * 4);
    emu::launch_seq(f32_to_bf16, cfg.grid, cfg.block, (const float*)xf.data(), y.data(), n);
    for (unsigned i = 0; i < n; ++i) want[i] = ref_to_bf16(xf[i]);
    chk::equal("f32_to_bf16: every bf16 x 6 low halves (ties, overflow, NaN, subnormals) + random", y, want);
    // spot checks of the reference itself (so a wrong reference cannot agree with a wrong kernel)
    std::vector<u16> spot = {ref_to_bf16(1.0f + 1.0f / 256), ref_to_bf16(1.0f + 3.0f / 256), ref_to_bf16(f32_of_bits(0x7f7f8000u)),
                             ref_to_bf16(f32_of_bits(0x7f7f7fffu)), ref_to_bf16(f32_of_bits(0xff800001u)),
                             ref_to_bf16(f32_of_bits(0x00008000u)), ref_to_bf16(f32_of_bits(0x00018000u)), ref_to_bf16(-0.0f)};
    chk::equal("f32->bf16 reference spot values", spot, std::vector<u16>{0x3f80, 0x3f82, 0x7f80, 0x7f7f, 0xffc0, 0x0000, 0x0002, 0x8000});

    // bf16 -> f32, all 65536 patterns
    std::vector<u16> hs(0x10000);
    for (u32 h = 0; h < 0x10000; ++h) hs[h] = u16(h);
    std::vector<float> w(0x10000, 0.0f);
    const auto c2 = emu::for_num_elems(0x10000);
    emu::launch_seq(bf16_to_f32, c2.grid, c2.block, (const u16*)hs.data(), w.data(), 0x10000u);
    std::vector<u32> wb(0x10000), wr(0x10000);
    for (u32 h = 0; h < 0x10000; ++h) {
        wb[h] = bits_of(w[h]);
        const double v = bf16_value(u16(h));
        wr[h] = std::isnan(v) ? h << 16 : bits_of(float(v));  // NaN: the payload kept
    }
    chk::equal("bf16_to_f32: all 65536 patterns", wb, wr);
    // round trip
    std::vector<u16> back(0x10000, 0xdead);
    emu::launch_seq(f32_to_bf16, c2.grid, c2.block, (const float*)w.data(), back.data(), 0x10000u);
    std::vector<u16> rt = hs;
    for (u32 h = 0; h < 0x10000; ++h)
        if (bf16_nan(u16(h))) rt[h] = u16(h | 0x40);  // a signalling NaN comes back quiet
    chk::equal("f32_to_bf16(bf16_to_f32(h)) == h", back, rt);
}

std::vector<u16> random_bf16(size_t n, std::mt19937_64& rng)
{
    std::vector<u16> v(n);
    const u16 special[] = {0x0000, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0xffc1, 0x7f81, 0x0001, 0x8001, 0x7f7f, 0xff7f, 0x3f80, 0xbf80};
    std::normal_distribution<float> N(0.0f, 2.0f);
    for (auto& h : v) {
        const unsigned r = unsigned(rng() % 8);
        h = r == 0 ? special[rng() % (sizeof special / sizeof special[0])] : r == 1 ? u16(rng()) : ref_to_bf16(N(rng));
    }
    return v;
}

void case_ops(unsigned n, std::mt19937_64& rng)
{
    const auto cfg = emu::for_num_elems(n);
    const std::vector<u16> a = random_bf16(n, rng), b = random_bf16(n, rng);
    char L[64];
    std::snprintf(L, sizeof L, "bf16 n=%u: ", n);
    const std::string P = L;
    std::vector<u16> y(n, 0xdead), want(n);
    emu::launch_seq(relu_forward_bf16, cfg.grid, cfg.block, (const u16*)a.data(), y.data(), n);
    for (unsigned i = 0; i < n; ++i) want[i] = bf16_value(a[i]) > 0 ? a[i] : u16(0);
    chk::equal(P + "relu_forward_bf16", y, want);

    std::vector<u16> dx(n, 0xdead);
    emu::launch_seq(relu_backward_bf16, cfg.grid, cfg.block, (const u16*)y.data(), (const u16*)b.data(), dx.data(), n);
    for (unsigned i = 0; i < n; ++i) want[i] = bf16_value(y[i]) > 0 ? b[i] : u16(0);
    chk::equal(P + "relu_backward_bf16", dx, want);

    std::vector<u16> s(n, 0xdead);
    emu::launch_seq(add_bf16, cfg.grid, cfg.block, (const u16*)a.data(), (const u16*)b.data(), s.data(), n);
    for (unsigned i = 0; i < n; ++i) want[i] = ref_to_bf16(float(bf16_value(a[i])) + float(bf16_value(b[i])));
    same16(P + "add_bf16", s, want);

    std::vector<u16> acc = a;
    emu::launch_seq(accumulate_bf16, cfg.grid, cfg.block, acc.data(), (const u16*)b.data(), n);
    same16(P + "accumulate_bf16", acc, want);

    // The 8-per-thread twins, launched for n/8 + n%8 threads as ops/src/cuda.rs and
    // engine/src/tensor.rs do (std::vector's buffers are 16-byte aligned here), and with a
    // small grid (both grid-stride loops): the same bits.
    const auto c8 = emu::for_num_elems(std::max(1u, n / 8 + n % 8));
    for (int small = 0; small < 2; ++small) {
        const dim3 grid = small ? dim3(2) : c8.grid, block = small ? dim3(32) : c8.block;
        const std::string how = small ? " (2x32 threads)" : "";
        std::vector<u16> s8(n, 0xdead);
        emu::launch_seq(add_bf16_x8, grid, block, (const u16*)a.data(), (const u16*)b.data(), s8.data(), n);
        same16(P + "add_bf16_x8" + how, s8, want);
        std::vector<u16> acc8 = a;
        emu::launch_seq(accumulate_bf16_x8, grid, block, acc8.data(), (const u16*)b.data(), n);
        same16(P + "accumulate_bf16_x8" + how, acc8, want);
    }
}

// weights_to_bf16_krsc / weight_grads_to_f32_kcrs as ops/src/weight_copy.rs launches them: a
// table of tensors [K, C, R*S] by value, a one-row grid of 256-thread blocks, tensor t owning
// ceil(K*C*RS / 256) blocks from block0[t] (an empty tensor none). Forward against the layout
// permutation written here and the value-based rounding above; backward bit for bit against the
// permutation of exactly widened values.
void case_weight_copy(std::mt19937_64& rng)
{
    struct Shape { unsigned k, c, rs; };
    // the network's kernels (3x3) at small widths, the first layer's 3 channels, an empty
    // tensor first and in the middle, a 1x1 kernel, one tensor larger than a block, and (for
    // the tiled copy) one whose rows fill its tile exactly (512 channels x 3x3)
    const std::vector<Shape> shapes = {{0, 4, 9}, {8, 3, 9}, {16, 8, 9}, {0, 8, 9}, {5, 7, 1}, {32, 16, 9}, {2, 1, 4}, {3, 512, 9}};
    const size_t T = shapes.size();
    std::vector<std::vector<float>> w(T), dwf(T);
    std::vector<std::vector<u16>> wc(T), dwc(T);
    WeightCopyTable fwd{}, bwd{};
    unsigned blocks = 0;
    std::normal_distribution<float> normal;
    for (size_t t = 0; t < T; ++t) {
        const size_t n = size_t(shapes[t].k) * shapes[t].c * shapes[t].rs;
        w[t].resize(n);
        for (auto& v : w[t]) {
            const auto pick = rng() % 32;
            // ties and specials now and then: an exact tie of two bf16 neighbours, NaN, inf, a subnormal
            v = pick == 0 ? f32_of_bits(u32(rng() % 0x7f7f) << 16 | 0x8000u) : pick == 1 ? std::nanf("") : pick == 2 ? -INFINITY : pick == 3 ? 1e-40f : normal(rng);
        }
        wc[t].assign(n, 0xdead);
        dwc[t] = random_bf16(n, rng);
        dwf[t].assign(n, f32_of_bits(0xdeadbeefu));
        fwd.src[t] = reinterpret_cast<unsigned long long>(w[t].data());
        fwd.dst[t] = reinterpret_cast<unsigned long long>(wc[t].data());
        bwd.src[t] = reinterpret_cast<unsigned long long>(dwc[t].data());
        bwd.dst[t] = reinterpret_cast<unsigned long long>(dwf[t].data());
        fwd.k[t] = bwd.k[t] = shapes[t].k;
        fwd.c[t] = bwd.c[t] = shapes[t].c;
        fwd.rs[t] = bwd.rs[t] = shapes[t].rs;
        fwd.block0[t] = bwd.block0[t] = blocks;
        blocks += unsigned((n + 255) / 256);
    }
    emu::launch_seq(weights_to_bf16_krsc, dim3(blocks), dim3(256), fwd, unsigned(T));
    emu::launch_seq(weight_grads_to_f32_kcrs, dim3(blocks), dim3(256), bwd, unsigned(T));
    // The tiled copy (weights_to_bf16_krsc_tiled) into separate outputs: one block per output
    // channel, block0 the prefix sums of K; it must give the same bits as the one above.
    std::vector<std::vector<u16>> wt(T);
    WeightCopyTable tiled = fwd;
    unsigned rows = 0;
    for (size_t t = 0; t < T; ++t) {
        wt[t].assign(wc[t].size(), 0xbeef);
        tiled.dst[t] = reinterpret_cast<unsigned long long>(wt[t].data());
        tiled.block0[t] = rows;
        rows += shapes[t].k;
    }
    emu::launch(weights_to_bf16_krsc_tiled, dim3(rows), dim3(256), tiled, unsigned(T));
    for (size_t t = 0; t < T; ++t) {
        const auto [K, C, RS] = shapes[t];
        std::vector<u16> want(wc[t].size());
        std::vector<u32> got_b(dwf[t].size()), want_b(dwf[t].size());
        for (unsigned k = 0; k < K; ++k)
            for (unsigned c = 0; c < C; ++c)
                for (unsigned p = 0; p < RS; ++p) {
                    const size_t kcrs = (size_t(k) * C + c) * RS + p, krsc = (size_t(k) * RS + p) * C + c;
                    want[krsc] = ref_to_bf16(w[t][kcrs]);
                    want_b[kcrs] = u32(dwc[t][krsc]) << 16;
                    got_b[kcrs] = bits_of(dwf[t][kcrs]);
                }
        char L[120];
        std::snprintf(L, sizeof L, "weights_to_bf16_krsc tensor %zu [%u,%u,%u]", t, K, C, RS);
        same16(L, wc[t], want);
        std::snprintf(L, sizeof L, "weights_to_bf16_krsc_tiled tensor %zu [%u,%u,%u]", t, K, C, RS);
        same16(L, wt[t], want);
        std::snprintf(L, sizeof L, "weight_grads_to_f32_kcrs tensor %zu [%u,%u,%u]", t, K, C, RS);
        chk::equal(L, got_b, want_b);
    }
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-v") chk::verbose = true;
    std::mt19937_64 rng(61);
    case_cast(rng);
    // relu on every pattern
    {
        std::vector<u16> hs(0x10000), y(0x10000, 0xdead), want(0x10000);
        for (u32 h = 0; h < 0x10000; ++h) hs[h] = u16(h);
        const auto c = emu::for_num_elems(0x10000);
        emu::launch_seq(relu_forward_bf16, c.grid, c.block, (const u16*)hs.data(), y.data(), 0x10000u);
        for (u32 h = 0; h < 0x10000; ++h) want[h] = bf16_value(u16(h)) > 0 ? u16(h) : u16(0);
        chk::equal("relu_forward_bf16: all 65536 patterns", y, want);
    }
    for (unsigned n : {0u, 1u, 7u, 8u, 1023u, 1025u, 4096u, 100003u}) case_ops(n, rng);
    case_weight_copy(rng);
    return chk::finish("bf16");
}
