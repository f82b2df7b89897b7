// ptx/batch_norm_relu.cu on the CPU: the launch sequence of ops/src/batch_norm_relu.rs
// (forward: bnr_stats_<reduce> -> bnr_finalize -> bnr_apply; backward: bnr_bwd_sums_<reduce>
// -> bnr_bwd_finalize -> bnr_bwd_apply) for f32, f64 and bf16 data in NCHW and NHWC (with
// the one-value and, where the channels allow, the 16-byte-load reductions), against a
// double-precision reference of relu(batch_norm(x)) and its gradient written here; and the
// output pass with the residual join fused in (bnr_apply's skip), against the output pass
// followed by the residual add's rounding, bit for bit.
#include "emu.h"
#ifdef KERNEL_SRC  // run.sh --selftest builds deliberately broken copies of the kernel file
#include KERNEL_SRC
#else
#include "../../ptx/batch_norm_relu.cu"
#endif
#include "check.h"

#include <string>

using chk::from_bf16;
using chk::to_bf16;

// ---- kernel tables: the names ops/src/batch_norm_relu.rs composes (types()) ----

template <typename T>
struct K;
template <>
struct K<float> {
    using A = float;
    static constexpr const char* name = "f32";
    static constexpr unsigned vec = 4;  // the vectorised passes: 4 f32 per 16-byte access
    static constexpr auto apply_vec = bnr_apply_vec;
    static constexpr auto bwd_apply_vec = bnr_bwd_apply_vec;
    static constexpr auto stats_nhwc_vec = bnr_stats_nhwc_vec;
    static constexpr auto bwd_sums_nhwc_vec = bnr_bwd_sums_nhwc_vec;
    static constexpr auto stats_nchw = bnr_stats_nchw;
    static constexpr auto stats_nhwc = bnr_stats_nhwc;
    static constexpr auto finalize = bnr_finalize;
    static constexpr auto eval_stats = bnr_eval_stats;
    static constexpr auto apply = bnr_apply;
    static constexpr auto bwd_sums_nchw = bnr_bwd_sums_nchw;
    static constexpr auto bwd_sums_nhwc = bnr_bwd_sums_nhwc;
    static constexpr auto bwd_finalize = bnr_bwd_finalize;
    static constexpr auto bwd_apply = bnr_bwd_apply;
    static float of(double v) { return float(v); }
    static double val(float v) { return v; }
    static float nan() { return std::numeric_limits<float>::quiet_NaN(); }
};
template <>
struct K<double> {
    using A = double;
    static constexpr const char* name = "f64";
    static constexpr unsigned vec = 0;  // no vectorised passes for f64
    static constexpr auto stats_nchw = bnr_stats_nchw_f64;
    static constexpr auto stats_nhwc = bnr_stats_nhwc_f64;
    static constexpr auto finalize = bnr_finalize_f64;
    static constexpr auto eval_stats = bnr_eval_stats_f64;
    static constexpr auto apply = bnr_apply_f64;
    static constexpr auto bwd_sums_nchw = bnr_bwd_sums_nchw_f64;
    static constexpr auto bwd_sums_nhwc = bnr_bwd_sums_nhwc_f64;
    static constexpr auto bwd_finalize = bnr_bwd_finalize_f64;
    static constexpr auto bwd_apply = bnr_bwd_apply_f64;
    static double of(double v) { return v; }
    static double val(double v) { return v; }
    static double nan() { return std::numeric_limits<double>::quiet_NaN(); }
};
template <>
struct K<bf16> {
    using A = float;  // bf16 data: f32 statistics and parameters, the f32 finalize kernels
    static constexpr const char* name = "bf16";
    static constexpr unsigned vec = 8;  // 8 bf16 per 16-byte access
    static constexpr auto apply_vec = bnr_apply_vec_bf16;
    static constexpr auto bwd_apply_vec = bnr_bwd_apply_vec_bf16;
    static constexpr auto stats_nhwc_vec = bnr_stats_nhwc_vec_bf16;
    static constexpr auto bwd_sums_nhwc_vec = bnr_bwd_sums_nhwc_vec_bf16;
    static constexpr auto stats_nchw = bnr_stats_nchw_bf16;
    static constexpr auto stats_nhwc = bnr_stats_nhwc_bf16;
    static constexpr auto finalize = bnr_finalize;
    static constexpr auto eval_stats = bnr_eval_stats;
    static constexpr auto apply = bnr_apply_bf16;
    static constexpr auto bwd_sums_nchw = bnr_bwd_sums_nchw_bf16;
    static constexpr auto bwd_sums_nhwc = bnr_bwd_sums_nhwc_bf16;
    static constexpr auto bwd_finalize = bnr_bwd_finalize;
    static constexpr auto bwd_apply = bnr_bwd_apply_bf16;
    static bf16 of(double v) { return to_bf16(float(v)); }
    static double val(bf16 v) { return from_bf16(v); }
    static bf16 nan() { return chk::BF16_NAN; }
};

// The residual add on the host, rounded as add / add_f64 / add_bf16 round it: the sum of the
// two stored values, rounded once to the data type.
float host_plus(float a, float b) { return a + b; }
double host_plus(double a, double b) { return a + b; }
bf16 host_plus(bf16 a, bf16 b) { return to_bf16(float(from_bf16(a)) + float(from_bf16(b))); }

// The bit patterns of a vector (bf16 already is one; f32 and f64 as integers of their size).
template <typename T>
auto bits(const std::vector<T>& v)
{
    using U = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
    std::vector<U> b(v.size());
    std::memcpy(b.data(), v.data(), v.size() * sizeof(T));
    return b;
}

// ---- Geometry of ops/src/batch_norm_relu.rs ----

enum class Reduce { nchw, nhwc, nhwc_vec };

struct Geo {
    unsigned n, c, hw, total, splits, m;
    bool nhwc;
    Reduce reduce;
    dim3 rgrid, rblock, fgrid, fblock;
};

// Whether vec_reduce_fits would choose the 16-byte-load reductions (the buffers here are
// std::vectors, 16-byte aligned).
bool vec_reduce_fits(unsigned c, unsigned vec)
{
    if (vec == 0 || c % vec != 0) return false;
    const unsigned groups = c / vec;
    return (groups & (groups - 1)) == 0 && 256 % groups == 0;
}

Geo geometry(unsigned n, unsigned c, unsigned h, unsigned w, bool nhwc, bool vec_ok)
{
    const unsigned long long PER_BLOCK = 16384, MAX_SPLITS = 256, MAX_SPLITS_VEC = 512, MIN_ROWS_VEC = 64;
    const unsigned long long m = (unsigned long long)n * h * w, total = m * c;
    const Reduce reduce = !nhwc ? Reduce::nchw : vec_ok ? Reduce::nhwc_vec : Reduce::nhwc;
    unsigned long long splits;
    switch (reduce) {
        case Reduce::nchw: splits = std::clamp((m + PER_BLOCK - 1) / PER_BLOCK, 1ull, MAX_SPLITS); break;
        case Reduce::nhwc: splits = std::clamp((m + PER_BLOCK / 32 - 1) / (PER_BLOCK / 32), 1ull, MAX_SPLITS); break;
        default:
            splits = std::min((total + PER_BLOCK - 1) / PER_BLOCK, (m + MIN_ROWS_VEC - 1) / MIN_ROWS_VEC);
            splits = std::clamp(splits, 1ull, MAX_SPLITS_VEC);
    }
    Geo g{n, c, h * w, n * c * h * w, (unsigned)splits, (unsigned)m, nhwc, reduce, dim3(), dim3(), dim3((c + 7) / 8), dim3(8, 32)};
    switch (reduce) {
        case Reduce::nchw: g.rgrid = dim3(c, g.splits, 1); g.rblock = dim3(256, 1, 1); break;
        case Reduce::nhwc: g.rgrid = dim3((c + 31) / 32, g.splits, 1); g.rblock = dim3(32, 8, 1); break;
        default: g.rgrid = dim3(1, g.splits, 1); g.rblock = dim3(256, 1, 1);
    }
    return g;
}

struct Tol {
    double stats, y, dx, sums, zband;
};

// One shape through the whole sequence; `vec` asks for the 16-byte-load reductions, which
// run where Rust would choose them (NHWC, channels that fit), else the case is skipped.
template <typename T>
void run_case(unsigned N, unsigned C, unsigned H, unsigned W, bool nhwc, bool vec, unsigned seed, Tol tol)
{
    using A = typename K<T>::A;
    if (vec && !(nhwc && vec_reduce_fits(C, K<T>::vec))) {
        return;
    }
    const Geo g = geometry(N, C, H, W, nhwc, vec);
    const unsigned HW = g.hw, M = g.m;
    static const char* const reduce_names[] = {"nchw", "nhwc", "nhwc_vec"};
    char label[160];
    std::snprintf(label, sizeof label, "%s %s N=%u C=%u H=%u W=%u (M=%u splits=%u grid=%ux%u block=%ux%u)", K<T>::name,
                  reduce_names[int(g.reduce)], N, C, H, W, M, g.splits, g.rgrid.x, g.rgrid.y, g.rblock.x, g.rblock.y);
    const int fails_before = chk::failures;
    auto at = [&](unsigned b, unsigned c, unsigned s) -> size_t {
        return nhwc ? ((size_t)b * HW + s) * C + c : ((size_t)b * C + c) * HW + s;
    };

    // Inputs (per-channel offsets and spreads; channel 0 has a large offset, channel 1 a negative gamma).
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> U(0.0, 1.0);
    std::normal_distribution<double> Nrm(0.0, 1.0);
    std::vector<double> mu(C), sd(C);
    for (unsigned c = 0; c < C; ++c) {
        mu[c] = c == 0 ? 30.0 : 4 * U(rng) - 2;
        sd[c] = 0.5 + 1.5 * U(rng);
    }
    std::vector<T> x(g.total), dy(g.total);
    for (unsigned b = 0; b < N; ++b)
        for (unsigned c = 0; c < C; ++c)
            for (unsigned s = 0; s < HW; ++s) {
                x[at(b, c, s)] = K<T>::of(mu[c] + sd[c] * Nrm(rng));
                dy[at(b, c, s)] = K<T>::of(Nrm(rng));
            }
    std::vector<A> gamma(C), beta(C), rmean(C), rvar(C);
    for (unsigned c = 0; c < C; ++c) {
        gamma[c] = A((0.5 + U(rng)) * (c == 1 ? -1 : 1));
        beta[c] = A(U(rng) - 0.5);
        rmean[c] = A(2 * U(rng) - 1);
        rvar[c] = A(0.5 + 1.5 * U(rng));
    }
    const std::vector<A> rmean0 = rmean, rvar0 = rvar;
    const double momentum = 0.1, eps = 1e-5;

    // ---- the kernels, as ops/src/batch_norm_relu.rs launches them; outputs poisoned with NaN ----
    const A anan = std::numeric_limits<A>::quiet_NaN();
    std::vector<A> partial((size_t)g.splits * C * 3, anan), stats(4 * (size_t)C, anan);
    std::vector<T> y(g.total, K<T>::nan());
    if (g.reduce == Reduce::nhwc_vec) {
        if constexpr (K<T>::vec > 0) {
            emu::launch(K<T>::stats_nhwc_vec, g.rgrid, g.rblock, x.data(), partial.data(), g.n, g.c, g.hw, g.splits);
        }
    } else if (nhwc) {
        emu::launch(K<T>::stats_nhwc, g.rgrid, g.rblock, x.data(), partial.data(), g.n, g.c, g.hw, g.splits);
    } else {
        emu::launch(K<T>::stats_nchw, g.rgrid, g.rblock, x.data(), partial.data(), g.n, g.c, g.hw, g.splits);
    }
    emu::launch(K<T>::finalize, g.fgrid, g.fblock, partial.data(), g.c, g.splits, gamma.data(), beta.data(), rmean.data(),
                rvar.data(), A(momentum), A(eps), stats.data());
    auto ct = emu::for_num_elems(g.total);
    emu::launch_seq(K<T>::apply, ct.grid, ct.block, x.data(), stats.data(), (const T*)nullptr, y.data(), g.total, g.c, g.hw,
                    int(nhwc));
    // The residual join fused in: y + skip, as the separate add would round it.
    std::vector<T> skip(g.total), ys(g.total, K<T>::nan()), ys_ref(g.total);
    for (size_t i = 0; i < g.total; ++i) {
        skip[i] = K<T>::of(Nrm(rng));
        ys_ref[i] = host_plus(y[i], skip[i]);
    }
    emu::launch_seq(K<T>::apply, ct.grid, ct.block, x.data(), stats.data(), (const T*)skip.data(), ys.data(), g.total, g.c, g.hw,
                    int(nhwc));
    chk::equal(std::string(label) + ": y with skip == y, then the residual add", bits(ys), bits(ys_ref));

    std::vector<A> partial2((size_t)g.splits * C * 2, anan), dgamma(C, anan), dbeta(C, anan), coef(3 * (size_t)C, anan);
    std::vector<T> dx(g.total, K<T>::nan());
    if (g.reduce == Reduce::nhwc_vec) {
        if constexpr (K<T>::vec > 0) {
            emu::launch(K<T>::bwd_sums_nhwc_vec, g.rgrid, g.rblock, x.data(), dy.data(), stats.data(), partial2.data(), g.n, g.c,
                        g.hw, g.splits);
        }
    } else if (nhwc) {
        emu::launch(K<T>::bwd_sums_nhwc, g.rgrid, g.rblock, x.data(), dy.data(), stats.data(), partial2.data(), g.n, g.c, g.hw,
                    g.splits);
    } else {
        emu::launch(K<T>::bwd_sums_nchw, g.rgrid, g.rblock, x.data(), dy.data(), stats.data(), partial2.data(), g.n, g.c, g.hw,
                    g.splits);
    }
    emu::launch(K<T>::bwd_finalize, g.fgrid, g.fblock, partial2.data(), g.c, g.splits, g.m, gamma.data(), stats.data(),
                dgamma.data(), dbeta.data(), coef.data());
    emu::launch_seq(K<T>::bwd_apply, ct.grid, ct.block, x.data(), dy.data(), stats.data(), coef.data(), dx.data(), g.total, g.c,
                    g.hw, int(nhwc));

    // The vectorised passes, where ops/src/batch_norm_relu.rs launches them (vec_width: a
    // channel pattern shared by each group of `vec` elements; std::vector's buffers are
    // 16-byte aligned here): the scalar kernels' results bit for bit, with one thread per
    // group, with a small grid (grid-stride loop), with 33 threads (NHWC: a stride that is no
    // multiple of the C/vec groups of a row, so the kernels read each element's channel
    // values; with the others they keep one channel group per thread, `fixed_channels`), and
    // NHWC with the grid of elementwise_launch (256-thread blocks, at most 1024).
    if constexpr (K<T>::vec > 0) {
        if ((nhwc ? C : HW) % K<T>::vec == 0) {
            const unsigned groups = g.total / K<T>::vec;
            const auto cv = emu::for_num_elems(groups);
            struct Launch {
                dim3 grid, block;
                const char* what;
            };
            std::vector<Launch> launches{{cv.grid, cv.block, ": vectorised "},
                                         {dim3(std::min(3u, cv.grid.x)), dim3(32), ": vectorised (small grid) "},
                                         {dim3(1), dim3(33), ": vectorised (33 threads) "}};
            if (nhwc) {
                launches.push_back({dim3(std::clamp((groups + 255) / 256, 1u, 1024u)), dim3(256), ": vectorised (NHWC launch) "});
            }
            for (const Launch& l : launches) {
                const dim3 grid = l.grid, block = l.block;
                std::vector<T> yv(g.total, K<T>::nan()), ysv(g.total, K<T>::nan()), dxv(g.total, K<T>::nan());
                emu::launch_seq(K<T>::apply_vec, grid, block, x.data(), stats.data(), (const T*)nullptr, yv.data(), g.total, g.c,
                                g.hw, int(nhwc));
                emu::launch_seq(K<T>::apply_vec, grid, block, x.data(), stats.data(), (const T*)skip.data(), ysv.data(), g.total,
                                g.c, g.hw, int(nhwc));
                emu::launch_seq(K<T>::bwd_apply_vec, grid, block, x.data(), dy.data(), stats.data(), coef.data(), dxv.data(), g.total,
                                g.c, g.hw, int(nhwc));
                const std::string v = std::string(label) + l.what;
                chk::equal(v + "y == scalar y", bits(yv), bits(y));
                chk::equal(v + "y with skip == scalar y with skip", bits(ysv), bits(ys));
                chk::equal(v + "dx == scalar dx", bits(dxv), bits(dx));
            }
        }
    }

    // ---- evaluation (batch_norm_relu_eval): bnr_eval_stats from the running statistics as
    // they were before this step, then bnr_apply (and bnr_apply_vec where it runs) ----
    std::vector<A> stats_e(4 * (size_t)C, anan);
    emu::launch_seq(K<T>::eval_stats, emu::for_num_elems(g.c).grid, emu::for_num_elems(g.c).block, gamma.data(), beta.data(),
                    rmean0.data(), rvar0.data(), A(eps), g.c, stats_e.data());
    std::vector<T> ye(g.total, K<T>::nan());
    emu::launch_seq(K<T>::apply, ct.grid, ct.block, x.data(), stats_e.data(), (const T*)nullptr, ye.data(), g.total, g.c, g.hw,
                    int(nhwc));
    std::vector<T> ye_vec;
    if constexpr (K<T>::vec > 0) {
        if ((nhwc ? C : HW) % K<T>::vec == 0) {
            ye_vec.assign(g.total, K<T>::nan());
            const auto cv = emu::for_num_elems(g.total / K<T>::vec);
            emu::launch_seq(K<T>::apply_vec, cv.grid, cv.block, x.data(), stats_e.data(), (const T*)nullptr, ye_vec.data(), g.total,
                            g.c, g.hw, int(nhwc));
        }
    }

    // ---- reference, in double, from the same (widened) input values ----
    std::vector<double> r_stats(4 * (size_t)C), r_rm(C), r_rv(C), r_y(g.total), r_dx(g.total), r_dg(C), r_db(C);
    // The sums' scale before cancellation: the largest Σ|dz| and Σ|dz·xhat| of a channel (a sum
    // of M random-signed terms can nearly cancel; its rounding error scales with its terms).
    double db_terms = 0, dg_terms = 0;
    double dx_terms = 0;  // largest |gamma*invstd|*(|dz| + |dbeta/M| + |xhat*dgamma/M|): dx's scale before cancellation
    std::vector<char> band(g.total, 0);
    size_t ambiguous = 0;
    for (unsigned c = 0; c < C; ++c) {
        double s = 0;
        for (unsigned b = 0; b < N; ++b)
            for (unsigned p = 0; p < HW; ++p) s += K<T>::val(x[at(b, c, p)]);
        const double mean = s / M;
        double q = 0;
        for (unsigned b = 0; b < N; ++b)
            for (unsigned p = 0; p < HW; ++p) {
                const double d = K<T>::val(x[at(b, c, p)]) - mean;
                q += d * d;
            }
        const double var = q / M, invstd = 1.0 / std::sqrt(var + eps);
        const double ga = gamma[c], be = beta[c];
        r_stats[c] = mean;
        r_stats[C + c] = invstd;
        r_stats[2 * C + c] = ga * invstd;
        r_stats[3 * C + c] = be - mean * ga * invstd;
        r_rm[c] = (1 - momentum) * double(rmean0[c]) + momentum * mean;
        r_rv[c] = (1 - momentum) * double(rvar0[c]) + momentum * var * M / (M - 1.0);
        // forward and the ReLU mask; in the band |z| < zband, where rounding may decide the
        // mask, the kernel's own forward decision (y > 0) is taken (its backward must agree).
        std::vector<double> dz(g.total);
        double db = 0, dg = 0, db_abs = 0, dg_abs = 0;
        for (unsigned b = 0; b < N; ++b)
            for (unsigned p = 0; p < HW; ++p) {
                const size_t i = at(b, c, p);
                const double xhat = (K<T>::val(x[i]) - mean) * invstd;
                const double z = ga * xhat + be;
                r_y[i] = z > 0 ? z : 0;
                bool on = z > 0;
                if (std::fabs(z) < tol.zband) {
                    band[i] = 1;
                    ++ambiguous;
                    on = K<T>::val(y[i]) > 0;
                }
                dz[i] = on ? K<T>::val(dy[i]) : 0.0;
                db += dz[i];
                dg += dz[i] * xhat;
                db_abs += std::fabs(dz[i]);
                dg_abs += std::fabs(dz[i] * xhat);
            }
        r_db[c] = db;
        r_dg[c] = dg;
        db_terms = std::max(db_terms, db_abs);
        dg_terms = std::max(dg_terms, dg_abs);
        for (unsigned b = 0; b < N; ++b)
            for (unsigned p = 0; p < HW; ++p) {
                const size_t i = at(b, c, p);
                const double xhat = (K<T>::val(x[i]) - mean) * invstd;
                r_dx[i] = ga * invstd * (dz[i] - db / M - xhat * dg / M);
                dx_terms = std::max(dx_terms, std::fabs(ga * invstd) * (std::fabs(dz[i]) + std::fabs(db / M) + std::fabs(xhat * dg / M)));
            }
    }

    std::vector<double> r_ye(g.total), r_stats_e(4 * (size_t)C);
    for (unsigned c = 0; c < C; ++c) {
        const double invstd = 1.0 / std::sqrt(double(rvar0[c]) + eps), scale = double(gamma[c]) * invstd;
        r_stats_e[c] = rmean0[c];
        r_stats_e[C + c] = invstd;
        r_stats_e[2 * C + c] = scale;
        r_stats_e[3 * C + c] = double(beta[c]) - double(rmean0[c]) * scale;
        for (unsigned b = 0; b < N; ++b)
            for (unsigned p = 0; p < HW; ++p) {
                const size_t i = at(b, c, p);
                r_ye[i] = std::max(0.0, (K<T>::val(x[i]) - double(rmean0[c])) * scale + double(beta[c]));
            }
    }

    auto widen_v = [](const auto& v) {
        std::vector<double> o(v.size());
        for (size_t i = 0; i < v.size(); ++i) o[i] = K<T>::val(v[i]);
        return o;
    };
    auto widen_a = [](const std::vector<A>& v) { return std::vector<double>(v.begin(), v.end()); };
    auto slice = [&](const std::vector<double>& v, unsigned k) {
        return std::vector<double>(v.begin() + (size_t)k * C, v.begin() + (size_t)(k + 1) * C);
    };
    const std::vector<double> st = widen_a(stats);
    const std::string L = std::string(label) + ": ";
    chk::close(L + "stats.mean", slice(st, 0), slice(r_stats, 0), tol.stats);
    chk::close(L + "stats.invstd", slice(st, 1), slice(r_stats, 1), tol.stats);
    chk::close(L + "stats.scale", slice(st, 2), slice(r_stats, 2), tol.stats);
    chk::close(L + "stats.shift", slice(st, 3), slice(r_stats, 3), tol.stats);
    chk::close(L + "running_mean", widen_a(rmean), r_rm, tol.stats);
    chk::close(L + "running_var", widen_a(rvar), r_rv, tol.stats);
    chk::close(L + "y", widen_v(y), r_y, tol.y);
    chk::close(L + "eval stats", widen_a(stats_e), r_stats_e, tol.stats);
    chk::close(L + "eval y", widen_v(ye), r_ye, tol.y);
    if (!ye_vec.empty()) {
        chk::close(L + "eval y (vectorised)", widen_v(ye_vec), r_ye, tol.y);
    }
    chk::close(L + "dbeta", widen_a(dbeta), r_db, tol.sums, db_terms);
    chk::close(L + "dgamma", widen_a(dgamma), r_dg, tol.sums, dg_terms);
    // dx = k1*(dz - k2 - xhat*k3) cancels (completely for M = 2: dx is then of the order of eps);
    // its rounding error scales with the terms, so they are the norm.
    chk::close(L + "dx", widen_v(dx), r_dx, tol.dx, dx_terms);
    std::printf("%s %s  (%zu value(s) with |z| < %.0e took the kernel's mask)\n", chk::failures == fails_before ? "ok  " : "FAIL",
                label, ambiguous, tol.zband);
    std::fflush(stdout);
}

struct Shape {
    unsigned n, c, h, w;
    bool nhwc;
};

int main(int argc, char** argv)
{
    bool big = false, quick = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-v") chk::verbose = true;
        if (a == "--big") big = true;      // also the NCHW case with 256 (clamped) splits: 4.2M values per dtype
        if (a == "--quick") quick = true;  // without the NHWC case with 256 splits
    }
    std::vector<Shape> shapes = {
        // NCHW: M > 16384 gives several splits (here 2, chunks of 15857 and 15856, not multiples of 256)
        {33, 3, 31, 31, false},
        // NCHW: 3 splits (chunks of 11253); C = 1
        {33, 1, 31, 33, false},
        // NCHW: one split, most threads of the block without a value (M = 105, and M = 2)
        {3, 4, 5, 7, false},
        {2, 5, 1, 1, false},
        // NHWC: M > 512 gives several splits; C = 37 is two channel groups, the second with 5 channels
        {3, 37, 15, 15, true},
        // NHWC: C a multiple of 32, 2 splits; C < 32
        {5, 64, 11, 11, true},
        {7, 5, 9, 9, true},
        // the vectorised passes: NCHW with H*W a multiple of 8; NHWC with C = 16 (both widths)
        // and C = 12 (f32's width 4 only; bf16 keeps the scalar kernels)
        {4, 6, 8, 8, false},
        {3, 16, 5, 5, true},
        {3, 12, 5, 5, true},
        // NHWC: tiny M (= 2): 6 of the 8 rows of each block idle
        {2, 33, 1, 1, true},
        // the vectorised reductions (as well as the one-value NHWC ones): 8 bf16 / 4 f32 channels
        // per load; C = 8: one load per row (256 rows at once, bf16), M = 1800 not a multiple of
        // 256*4; C = 512: 64 (bf16) or 128 (f32) loads per row, 4 or 2 rows at once; M = 2 (one
        // split, most rows idle); C = 24 (3 bf16 loads a row: not a power of two, the one-value
        // kernels; f32's 6 neither)
        {8, 8, 15, 15, true},
        {9, 512, 4, 4, true},
        {2, 64, 1, 1, true},
        {5, 24, 6, 6, true},
        // vectorised: 10 splits (153600 values), so each finalize lane merges one or none
        {24, 64, 10, 10, true},
        // NHWC: M = 69632, 136 splits: more than one round of the finalize's 4 x 32 loads
        {256, 3, 16, 17, true},
        // NHWC: M = 144000 > 256*512: the split count is clamped to 256
        {1000, 3, 12, 12, true},
        // vectorised: total = 9.4M > 512*16384 and M = 147456 > 512*64: clamped to 512 splits
        {1024, 64, 12, 12, true},
    };
    if (quick) {
        shapes.pop_back();
        shapes.pop_back();
    }
#ifdef __SANITIZE_THREAD__
    // The vectorised 512-split clamp needs 9.4M values, minutes under TSan; its barriers and
    // shared memory are the same as in the smaller vectorised cases above.
    shapes.pop_back();
#endif
    if (big) {
        // NCHW: M = 256*16384 + 4096 > 256*16384: 256 splits (clamped)
        shapes.push_back({4100, 1, 32, 32, false});
    }
    const Tol t64{1e-10, 1e-10, 1e-10, 1e-10, 1e-9};
    const Tol t32{1e-4, 1e-4, 1e-4, 1e-4, 1e-4};
    const Tol tb16{1e-4, 1e-2, 1e-2, 1e-4, 1e-4};
    unsigned seed = 1;
    for (const Shape& s : shapes) {
        for (bool vec : {false, true}) {
            run_case<double>(s.n, s.c, s.h, s.w, s.nhwc, vec, seed++, t64);
            run_case<float>(s.n, s.c, s.h, s.w, s.nhwc, vec, seed++, t32);
            run_case<bf16>(s.n, s.c, s.h, s.w, s.nhwc, vec, seed++, tb16);
        }
    }
    std::printf("(%llu emulated threads)\n", emu::threads_started);
    return chk::finish("batch_norm_relu");
}
