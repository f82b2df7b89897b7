// ptx/cross_entropy.cu on the CPU, as ops/src/cross_entropy.rs launches it:
//  forward_cuda_t:  cross_entropy_forward{,_f64}(logits, labels, rows, n, k, smoothing) on
//                   grid(n) (1024-thread blocks), then sum_reduce{,_f64}(rows, loss, n, 1/N, 0)
//                   of ptx/reduce.cu as one block of 256: the batch mean;
//  backward_cuda_t: cross_entropy_backward{,_f64}(logits, labels, dz, n, k, smoothing, dL, 1/N)
//                   on grid(n), dL read from a [1] device buffer.
// Labels come from a DeviceLabels view: `len` values at `offset` of a larger buffer (the
// buffer ends right after the view, so a read past it is an ASan report). f32 runs get the
// smoothing as `s as f32`. References in double precision (log-sum-exp, q = (1-s)onehot + s/K,
// loss = sum_k q_k (lse - z_k), dz = (softmax - q) dL / N), written here; also a label >= K
// (the kernel's documented NaN row) and the larger block counts of a grid-stride launch.
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/cross_entropy.cu"
#endif
#include "../../ptx/reduce.cu"
#include "check.h"

#include <string>

template <typename T>
struct CE;
template <>
struct CE<float> {
    static constexpr auto fwd = cross_entropy_forward;
    static constexpr auto bwd = cross_entropy_backward;
    static constexpr auto sum = sum_reduce;
    static constexpr const char* name = "f32";
    static constexpr double tol = 1e-6;
};
template <>
struct CE<double> {
    static constexpr auto fwd = cross_entropy_forward_f64;
    static constexpr auto bwd = cross_entropy_backward_f64;
    static constexpr auto sum = sum_reduce_f64;
    static constexpr const char* name = "f64";
    static constexpr double tol = 1e-14;
};

template <typename T>
void case_ce(unsigned n, unsigned k, double s, double dl, unsigned offset, double spread, std::mt19937_64& rng,
             unsigned bad_rows = 0, bool grid_stride = false, double big = 0.0)
{
    std::normal_distribution<double> Nrm(0.0, spread);
    std::vector<T> z((size_t)n * k);
    for (size_t r = 0; r < n; ++r) {
        const double shift = (r % 7 == 3) ? big : (r % 7 == 5 ? -0.8 * big : 0.0);  // stability: exp would overflow
        for (size_t j = 0; j < k; ++j) z[r * k + j] = T(Nrm(rng) + shift);
        if (r % 7 == 6 && big != 0) z[r * k + (r % 2 ? k - 1 : rng() % k)] += T(big);  // one logit far above the rest
    }
    // the epoch's labels; the batch is `n` of them from `offset` (the buffer ends there)
    std::vector<unsigned> all(offset + n);
    for (auto& l : all) l = unsigned(rng() % k);
    std::vector<char> bad(n, 0);
    for (unsigned b = 0; b < bad_rows; ++b) {
        const unsigned r = unsigned(rng() % n);
        all[offset + r] = k + unsigned(rng() % 3);
        bad[r] = 1;
    }
    const unsigned* labels = all.data() + offset;
    const T smoothing = T(s);  // `s as f32` for f32

    // forward: per-row losses, then their mean
    std::vector<T> rows(n, std::numeric_limits<T>::quiet_NaN()), loss(1, T(-7));
    const auto cfg = grid_stride ? emu::Config{dim3(2), dim3(64)} : emu::for_num_elems(n);
    emu::launch_seq(CE<T>::fwd, cfg.grid, cfg.block, (const T*)z.data(), labels, rows.data(), n, k, smoothing);
    const T scale = T(1) / T(double(n));
    emu::launch(CE<T>::sum, dim3(1), dim3(256), (const T*)rows.data(), loss.data(), n, scale, 0);
    // backward
    std::vector<T> dlv{T(dl)}, dz((size_t)n * k, std::numeric_limits<T>::quiet_NaN());
    const T inv_n = T(1) / T(double(n));
    emu::launch_seq(CE<T>::bwd, cfg.grid, cfg.block, (const T*)z.data(), labels, dz.data(), n, k, smoothing,
                    (const T*)dlv.data(), inv_n);

    // double-precision reference
    const double sd = double(smoothing);
    std::vector<double> r_rows(n), r_dz((size_t)n * k), g_rows(n), g_dz((size_t)n * k);
    double total = 0;
    for (size_t r = 0; r < n; ++r) {
        const T* zr = z.data() + r * k;
        double m = -INFINITY;
        for (size_t j = 0; j < k; ++j) m = std::max(m, double(zr[j]));
        double se = 0;
        for (size_t j = 0; j < k; ++j) se += std::exp(double(zr[j]) - m);
        const double lse = m + std::log(se);
        double l = 0;
        for (size_t j = 0; j < k; ++j) {
            const double q = (j == labels[r] ? 1.0 - sd : 0.0) + sd / k;
            l += q * (lse - double(zr[j]));
            r_dz[r * k + j] = bad[r] ? NAN : (std::exp(double(zr[j]) - lse) - q) * double(dlv[0]) / n;
        }
        r_rows[r] = bad[r] ? NAN : l;
        total += r_rows[r];
        g_rows[r] = double(rows[r]);
        for (size_t j = 0; j < k; ++j) g_dz[r * k + j] = double(dz[r * k + j]);
    }
    char L[200];
    std::snprintf(L, sizeof L, "ce %s n=%u k=%u s=%g dL=%g off=%u%s%s%s: ", CE<T>::name, n, k, s, dl, offset,
                  bad_rows ? " bad labels" : "", grid_stride ? " grid 2x64" : "", big != 0 ? " rows shifted/spiked by 1e3" : "");
    const std::string P = L;
    // Rounding scale: the logits' size (lse - z_k cancels; |z| up to big + a few spreads).
    const double zs = 1.0 + big + 6.0 * spread;
    chk::close(P + "row losses", g_rows, r_rows, CE<T>::tol, zs);
    if (bad_rows) {
        chk::close(P + "batch mean is NaN", {double(loss[0])}, {NAN}, 0);
    } else {
        chk::close(P + "batch mean (sum_reduce 1/N)", {double(loss[0])}, {total / n}, CE<T>::tol, zs);
    }
    // dz entries are at most |dL|/N in size, with the relative error of exp(z - lse)
    chk::close(P + "dlogits", g_dz, r_dz, CE<T>::tol, zs * std::fabs(dl) / n);
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-v") chk::verbose = true;
    std::mt19937_64 rng(31);
    for (double s : {0.0, 0.2, 1.0}) {
        // training batches (512, last batch of 50000 = 336), offsets into the epoch's labels
        case_ce<float>(512, 10, s, 1.0, 49152, 2.0, rng);
        case_ce<float>(336, 10, s, 1.0, 49664, 2.0, rng);
        case_ce<double>(512, 10, s, 1.0, 1024, 2.0, rng);
        // edge shapes: one row, one class, many classes, more rows than a block
        case_ce<float>(1, 10, s, 0.37, 0, 1.0, rng);
        case_ce<double>(1, 1, s, 1.0, 3, 1.0, rng);
        case_ce<float>(7, 1, s, 2.0, 0, 1.0, rng);
        case_ce<float>(33, 100, s, -0.5, 5, 4.0, rng);
        case_ce<double>(2500, 3, s, 3.0, 17, 3.0, rng);
        case_ce<float>(1025, 10, s, 1.0, 0, 8.0, rng, 0, /*grid_stride=*/true);
        case_ce<double>(1025, 10, s, 1.0, 0, 8.0, rng, 0, /*grid_stride=*/true);
        case_ce<float>(300, 10, s, 1.0, 0, 2.0, rng, 0, false, 1000.0);
        case_ce<double>(300, 10, s, 1.0, 0, 2.0, rng, 0, false, 1000.0);
    }
    case_ce<float>(20, 10, 0.1, 1.0, 2, 1.0, rng, 3);  // label >= K: NaN rows
    case_ce<double>(20, 4, 0.0, 1.0, 0, 1.0, rng, 2);
    std::printf("(%llu emulated threads)\n", emu::threads_started);
    return chk::finish("cross_entropy");
}
