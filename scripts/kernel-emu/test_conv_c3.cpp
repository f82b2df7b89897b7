// ptx/conv_c3.cu on the CPU: the 3-channel first convolution (3x3, stride 1, padding 1, bf16
// channels-last) as ops/src/conv2d_c3.rs launches it: conv3x3_c3_forward_bf16 and
// conv3x3_c3_wgrad_partial_bf16 in blocks of 256, one block per tile of 8 rows x 32 columns of
// output at a time (grid-stride over the tiles; Rust launches at most one wave, here every tile's
// block, fewer blocks than tiles, a single block, and more blocks than tiles), then
// conv3x3_c3_wgrad_finish_bf16 (27 blocks of 64 x 8).
//
// Checks:
// - y bit for bit against a reference written here: per output, the 27 products added in
//   (r, s, c) order by fused multiply-adds from 0 in f32, taps over the padding multiplying a zero
//   input, then rounded to bf16 (the kernel's promise); and within bf16 rounding (2^-8 relative to
//   the output's sum of |products|) of the same sum in double, so the f32 reference is not
//   the only judge;
// - dw within 1e-4 of each weight's sum of |products| plus bf16 rounding (f32 sums of a few hundred terms,
//   then the bf16 rounding of the result: up to 2^-8 of |dw|, so the tolerance is that plus 1e-4
//   of the sum of |terms|, which an error of one wrong tap or channel exceeds many times over)
//   against a double sum; the same bits from two runs of one grid (deterministic), and within
//   the same tolerance from the other grids;
// - outputs and the partial sums poisoned with NaN before each launch (an element not written shows up).
// Shapes: the network's 64 output channels, 16, 8, 6 and 2 (lanes past O/2 idle); images with odd
// sides, fewer than 8 rows (idle warps) and rows in a partial last tile, a 1x1 image (every tap
// but the centre padded), a 1-pixel-wide one; rows wider than a tile (70 = 32 + 32 + 6, 33 = 32 + 1,
// 34, 35), so a warp's walk ends at every step of its three-step loop and at a tile edge inside the
// image; more than 64 tiles (more than one round of the finish's 8 lanes x 8 loads); and, not with
// --quick, the network's 32x32 images.
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/conv_c3.cu"
#endif
#include "check.h"

#include <random>
#include <string>

static double bf(uint16_t h) { return chk::from_bf16(h); }

static void case_conv(unsigned n, unsigned h, unsigned w, unsigned o, std::mt19937_64& rng)
{
    const size_t pixels = size_t(n) * h * w;
    std::normal_distribution<double> normal;
    std::vector<uint16_t> x(pixels * 3), wt(size_t(o) * 27), dy(pixels * o);
    for (auto& v : x) v = chk::to_bf16(float(normal(rng)));
    for (auto& v : wt) v = chk::to_bf16(float(0.3 * normal(rng)));
    for (auto& v : dy) v = chk::to_bf16(float(normal(rng)));
    // x[b, i, j, c] (channels-last), outside the image 0.
    auto xat = [&](size_t b, int i, int j, int c) -> uint16_t {
        if (i < 0 || j < 0 || i >= int(h) || j >= int(w)) return 0;
        return x[((b * h + size_t(i)) * w + size_t(j)) * 3 + size_t(c)];
    };
    char L[120];
    std::snprintf(L, sizeof L, "conv3x3_c3 [%u, 3, %u, %u] -> O=%u", n, h, w, o);

    // ---- forward ----
    std::vector<uint16_t> want_y(pixels * o);
    std::vector<double> want_y64(pixels * o), y_norm(pixels * o);
    for (size_t b = 0; b < n; ++b)
        for (int i = 0; i < int(h); ++i)
            for (int j = 0; j < int(w); ++j)
                for (size_t k = 0; k < o; ++k) {
                    float acc = 0.0f;
                    double acc64 = 0.0, mag = 0.0;
                    for (int r = 0; r < 3; ++r)
                        for (int s = 0; s < 3; ++s) {
                            for (int c = 0; c < 3; ++c) {  // xat: 0 over the padding, still a product
                                const float xv = float(bf(xat(b, i + r - 1, j + s - 1, c)));
                                const float wv = float(bf(wt[k * 27 + size_t((r * 3 + s) * 3 + c)]));
                                acc = std::fma(xv, wv, acc);
                                acc64 += double(xv) * double(wv);
                                mag += std::fabs(double(xv) * double(wv));
                            }
                        }
                    const size_t at = ((b * h + size_t(i)) * w + size_t(j)) * o + k;
                    want_y[at] = chk::to_bf16(acc);
                    want_y64[at] = acc64;
                    y_norm[at] = mag;
                }
    // tiles of 8 rows x 32 columns of one image: one block each, or fewer blocks walking several
    const unsigned tiles = n * ((h + 7) / 8) * ((w + 31) / 32);
    for (unsigned grid : {tiles, std::min(tiles, 2u), 1u, tiles + 1}) {
        std::vector<uint16_t> y(pixels * o, chk::BF16_NAN);
        emu::launch(conv3x3_c3_forward_bf16, dim3(grid), dim3(256), (const bf16*)x.data(), (const bf16*)wt.data(),
                    reinterpret_cast<unsigned int*>(y.data()), n, h, w, o);
        const std::string tag = std::string(L) + " forward, " + std::to_string(grid) + " blocks";
        chk::equal(tag + ": y (bits)", y, want_y);
        // within bf16 rounding of the exact sum, relative to each output's sum of |products|
        std::vector<double> got(y.size()), ref(y.size());
        for (size_t e = 0; e < y.size(); ++e) {
            const double nrm = y_norm[e] > 0 ? y_norm[e] : 1.0;
            got[e] = bf(y[e]) / nrm;
            ref[e] = want_y64[e] / nrm;
        }
        chk::close(tag + ": y (double)", got, ref, 1.0 / 256, 1.0);
    }

    // ---- weight gradient ----
    std::vector<double> want_dw(size_t(o) * 27, 0.0), dw_norm(size_t(o) * 27, 0.0);
    for (size_t b = 0; b < n; ++b)
        for (int i = 0; i < int(h); ++i)
            for (int j = 0; j < int(w); ++j)
                for (size_t k = 0; k < o; ++k) {
                    const double d = bf(dy[((b * h + size_t(i)) * w + size_t(j)) * o + k]);
                    for (int r = 0; r < 3; ++r)
                        for (int s = 0; s < 3; ++s)
                            for (int c = 0; c < 3; ++c) {
                                const double t = d * bf(xat(b, i + r - 1, j + s - 1, c));
                                want_dw[k * 27 + size_t((r * 3 + s) * 3 + c)] += t;
                                dw_norm[k * 27 + size_t((r * 3 + s) * 3 + c)] += std::fabs(t);
                            }
                }
    std::vector<uint16_t> first;
    for (unsigned blocks : {tiles, tiles, std::min(tiles, 3u), 1u, tiles + 2}) {
        std::vector<float> partial(size_t(blocks) * 27 * 64, std::nanf(""));
        emu::launch(conv3x3_c3_wgrad_partial_bf16, dim3(blocks), dim3(256), (const bf16*)x.data(),
                    reinterpret_cast<const unsigned int*>(dy.data()), partial.data(), n, h, w, o);
        std::vector<uint16_t> dw(size_t(o) * 27, chk::BF16_NAN);
        emu::launch(conv3x3_c3_wgrad_finish_bf16, dim3(27), dim3(64, 8), (const float*)partial.data(),
                    (bf16*)dw.data(), blocks, o);
        const std::string tag = std::string(L) + " weight gradient, " + std::to_string(blocks) + " blocks";
        std::vector<double> got(dw.size()), ref(dw.size());
        for (size_t e = 0; e < dw.size(); ++e) {
            // |got - ref| <= 2^-8·|ref| (the bf16 rounding) + 1e-4·Σ|terms|, as one ratio ≤ 1
            const double tol = std::ldexp(std::fabs(want_dw[e]), -8) + 1e-4 * dw_norm[e] + 1e-30;
            got[e] = bf(dw[e]) / tol;
            ref[e] = want_dw[e] / tol;
        }
        chk::close(tag + ": dw", got, ref, 1.0, 1.0);
        if (first.empty()) {
            first = dw;
        } else if (blocks == tiles) {
            chk::equal(tag + ": the same bits as the first run", dw, first);
        }
    }
}

int main(int argc, char** argv)
{
    bool quick = false;
    for (int i = 1; i < argc; ++i) {
        if (std::string(argv[i]) == "-v") chk::verbose = true;
        if (std::string(argv[i]) == "--quick") quick = true;
    }
    std::mt19937_64 rng(31);
    // n, h, w, o: the network's 64 channels on small images (odd sides, fewer rows than a tile),
    // 8, 16, 6 and 2 channels, a 1x1 image, a 1-pixel-wide one, rows of 70 (tiles of 32, 32, 6) and
    // 33, 34, 35 columns (a last tile of 1, 2, 3), 9 and 10 rows (a second tile of 1 and 2 rows),
    // and 72 tiles (more than one round of the finish's 8 lanes x 8 loads)
    const unsigned shapes[][4] = {{2, 6, 5, 64}, {1, 7, 9, 8},  {3, 4, 4, 16},  {2, 1, 1, 64},  {1, 3, 1, 8},
                                  {2, 16, 17, 8}, {1, 9, 70, 64}, {2, 10, 33, 6}, {1, 8, 34, 2}, {1, 3, 35, 64},
                                  {72, 3, 2, 8}};
    for (const auto& s : shapes) case_conv(s[0], s[1], s[2], s[3], rng);
    if (!quick) {
        case_conv(4, 12, 12, 64, rng);
        case_conv(2, 32, 32, 64, rng);  // the network's images
    }
    return chk::finish("conv_c3");
}
