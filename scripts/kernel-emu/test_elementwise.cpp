// ptx/elementwise.cu on the CPU: relu_forward(x, y, n), relu_backward(y, dy, dx, n), add(a, b, y, n),
// scale(x, y, n, alpha) as ops/src/{relu,add,scale}.rs launch them and accumulate(a, b, n) as
// engine/src/tensor.rs does (grid(n) = for_num_elems(max(n, 1)): 1024-thread blocks), each in f32
// and f64, and ema_update(avg, x, n, keep, take) as
// ops/src/ema.rs launches it (avg = keep * avg + take * x, each operation rounded in T). Compared bit for bit with the CPU
// references of ops/src (relu: v > 0 ? v : +0, so NaN and -0 give +0; dx = y > 0 ? dy : +0;
// a + b; alpha * x with alpha = `alpha as f32` in f32) on values that include +-0, +-inf,
// NaN, subnormals and the largest finite values; a NaN result must be a NaN, its payload is
// not compared (x86 and the GPU make different NaNs). Also in place (y = a) and a grid
// smaller than the data (grid-stride loop).
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/elementwise.cu"
#endif
#include "check.h"

#include <string>

template <typename T>
struct EK;
template <>
struct EK<float> {
    using U = uint32_t;
    static constexpr auto relu_f = relu_forward;
    static constexpr auto relu_b = relu_backward;
    static constexpr auto add_k = add;
    static constexpr auto scale_k = scale;
    static constexpr auto acc_k = accumulate;
    static constexpr auto ema_k = ema_update;
    static constexpr const char* name = "f32";
};
template <>
struct EK<double> {
    using U = uint64_t;
    static constexpr auto relu_f = relu_forward_f64;
    static constexpr auto relu_b = relu_backward_f64;
    static constexpr auto add_k = add_f64;
    static constexpr auto scale_k = scale_f64;
    static constexpr auto acc_k = accumulate_f64;
    static constexpr auto ema_k = ema_update_f64;
    static constexpr const char* name = "f64";
};

// got == want bit for bit, except that two NaNs are equal whatever their payloads.
template <typename T>
void same(const std::string& what, const std::vector<T>& got, const std::vector<T>& want)
{
    using U = typename EK<T>::U;
    std::vector<U> g(got.size()), w(want.size());
    if (!got.empty()) std::memcpy(g.data(), got.data(), got.size() * sizeof(T));
    if (!want.empty()) std::memcpy(w.data(), want.data(), want.size() * sizeof(T));
    for (size_t i = 0; i < std::min(g.size(), w.size()); ++i)
        if (std::isnan(got[i]) && std::isnan(want[i])) g[i] = w[i];
    chk::equal(what, g, w);
}

template <typename T>
std::vector<T> values(size_t n, std::mt19937_64& rng)
{
    using L = std::numeric_limits<T>;
    const T special[] = {T(0), -T(0), L::infinity(), -L::infinity(), L::quiet_NaN(), -L::quiet_NaN(), L::denorm_min(),
                         -L::denorm_min(), L::min(), -L::min(), L::max(), -L::max(), T(1), T(-1), L::min() / T(4)};
    std::normal_distribution<double> N(0.0, 3.0);
    std::vector<T> v(n);
    for (size_t i = 0; i < n; ++i) {
        const unsigned r = unsigned(rng() % 16);
        v[i] = r < 4 ? special[rng() % (sizeof special / sizeof special[0])] : T(N(rng));
    }
    return v;
}

template <typename T>
void case_ew(unsigned n, std::mt19937_64& rng, bool small_grid = false)
{
    using K = EK<T>;
    const T NaN = std::numeric_limits<T>::quiet_NaN();
    const auto cfg = small_grid ? emu::Config{dim3(2), dim3(96)} : emu::for_num_elems(n);
    const std::vector<T> a = values<T>(n, rng), b = values<T>(n, rng);
    char L[128];
    std::snprintf(L, sizeof L, "%s n=%u%s: ", K::name, n, small_grid ? " grid 2x96" : "");
    const std::string P = L;

    std::vector<T> y(n, NaN), want(n);
    emu::launch_seq(K::relu_f, cfg.grid, cfg.block, (const T*)a.data(), y.data(), n);
    for (unsigned i = 0; i < n; ++i) want[i] = a[i] > T(0) ? a[i] : T(0);
    same(P + "relu_forward", y, want);

    std::vector<T> dx(n, NaN);
    emu::launch_seq(K::relu_b, cfg.grid, cfg.block, (const T*)y.data(), (const T*)b.data(), dx.data(), n);
    for (unsigned i = 0; i < n; ++i) want[i] = y[i] > T(0) ? b[i] : T(0);
    same(P + "relu_backward", dx, want);

    std::vector<T> s(n, NaN);
    emu::launch_seq(K::add_k, cfg.grid, cfg.block, (const T*)a.data(), (const T*)b.data(), s.data(), n);
    for (unsigned i = 0; i < n; ++i) want[i] = a[i] + b[i];
    same(P + "add", s, want);
    std::vector<T> inplace = a;  // y aliasing a
    emu::launch_seq(K::add_k, cfg.grid, cfg.block, (const T*)inplace.data(), (const T*)b.data(), inplace.data(), n);
    same(P + "add in place (y = a)", inplace, want);

    for (double alpha : {0.125, -0.37, 1e-3, 3.0}) {
        const T al = T(alpha);  // `alpha as f32`
        std::vector<T> z(n, NaN);
        emu::launch_seq(K::scale_k, cfg.grid, cfg.block, (const T*)a.data(), z.data(), n, al);
        for (unsigned i = 0; i < n; ++i) want[i] = al * a[i];
        same(P + "scale alpha=" + std::to_string(alpha), z, want);
    }

    std::vector<T> acc = a;
    emu::launch_seq(K::acc_k, cfg.grid, cfg.block, acc.data(), (const T*)b.data(), n);
    for (unsigned i = 0; i < n; ++i) want[i] = a[i] + b[i];
    same(P + "accumulate", acc, want);

    // ema_update in place, keep = rho and take = 1 - rho (in double, then rounded to T) as
    // ops/src/ema.rs passes them; the reference rounds each product and the sum in T
    // (-ffp-contract=off: no fused multiply-add here either).
    for (double rho : {std::pow(0.99, 5), 0.5, 0.0, 1.0}) {
        const T keep = T(rho), take = T(1.0 - rho);
        std::vector<T> avg = a;
        emu::launch_seq(K::ema_k, cfg.grid, cfg.block, avg.data(), (const T*)b.data(), n, keep, take);
        for (unsigned i = 0; i < n; ++i) {
            const T kept = keep * a[i], taken = take * b[i];
            want[i] = kept + taken;
        }
        same(P + "ema_update rho=" + std::to_string(rho), avg, want);
    }
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-v") chk::verbose = true;
    std::mt19937_64 rng(51);
    for (unsigned n : {0u, 1u, 1023u, 1024u, 1025u, 3077u, 65536u + 7u}) {
        case_ew<float>(n, rng);
        case_ew<double>(n, rng);
    }
    case_ew<float>(1000, rng, true);
    case_ew<double>(1000, rng, true);
    return chk::finish("elementwise");
}
