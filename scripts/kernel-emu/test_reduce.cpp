// ptx/reduce.cu on the CPU: count_correct as ops/src/metrics.rs launches it and sum_reduce
// as ops/src/cross_entropy.rs launches it (one block of 256 threads, accumulate = 0,
// sum_reduce with scale = 1/N), plus other block sizes and accumulate = 1 (the kernel
// file's documented contract), against references written here.
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/reduce.cu"
#endif
#include "check.h"

#include <string>

// First maximum on ties, NaN never wins (model/src/batches.rs argmax_first).
unsigned ref_correct(const std::vector<float>& z, const std::vector<unsigned>& labels, unsigned n, unsigned k)
{
    unsigned c = 0;
    for (unsigned r = 0; r < n; ++r) {
        unsigned best = 0;
        for (unsigned j = 1; j < k; ++j)
            if (z[(size_t)r * k + j] > z[(size_t)r * k + best]) best = j;
        c += best == labels[r];
    }
    return c;
}

void case_count(unsigned n, unsigned k, unsigned threads, int accumulate, std::mt19937_64& rng)
{
    std::vector<float> z((size_t)n * k);
    std::vector<unsigned> labels(n);
    for (auto& v : z) v = float(int(rng() % 5));  // many ties
    for (unsigned r = 0; r < n; ++r) {
        labels[r] = unsigned(rng() % k);
        const unsigned roll = unsigned(rng() % 8);
        if (roll == 0) z[(size_t)r * k + rng() % k] = std::numeric_limits<float>::quiet_NaN();
        if (roll == 1) z[(size_t)r * k] = std::numeric_limits<float>::quiet_NaN();  // NaN in column 0: argmax 0
        if (roll == 2) z[(size_t)r * k + labels[r]] = 9.0f;
    }
    const unsigned prior = 1000;
    std::vector<unsigned> out{accumulate ? prior : 0xdeadbeefu};
    emu::launch(count_correct, dim3(1), dim3(threads), (const float*)z.data(), (const unsigned*)labels.data(), out.data(), n, k,
                accumulate);
    const unsigned want = ref_correct(z, labels, n, k) + (accumulate ? prior : 0);
    char L[128];
    std::snprintf(L, sizeof L, "count_correct n=%u k=%u block=%u accumulate=%d", n, k, threads, accumulate);
    chk::equal(L, out, std::vector<unsigned>{want});
}

template <typename T>
void case_sum(unsigned n, unsigned threads, int accumulate, std::mt19937_64& rng)
{
    std::normal_distribution<double> Nrm(1.0, 1.0);
    std::vector<T> x(n);
    double s = 0, sabs = 0;
    for (auto& v : x) {
        v = T(Nrm(rng));
        s += double(v);
        sabs += std::fabs(double(v));
    }
    const T scale = T(1) / T(n == 0 ? 1 : n);
    const T prior = T(0.25);
    std::vector<T> out{accumulate ? prior : std::numeric_limits<T>::quiet_NaN()};
    auto kernel = [] {
        if constexpr (sizeof(T) == 4) return sum_reduce; else return sum_reduce_f64;
    }();
    emu::launch(kernel, dim3(1), dim3(threads), (const T*)x.data(), out.data(), n, scale, accumulate);
    const double want = double(scale) * s + (accumulate ? double(prior) : 0.0);
    char L[128];
    std::snprintf(L, sizeof L, "sum_reduce%s n=%u block=%u accumulate=%d", sizeof(T) == 4 ? "" : "_f64", n, threads, accumulate);
    // error relative to scale * sum|x| (the sum's rounding scale)
    chk::close(L, {double(out[0])}, {want}, sizeof(T) == 4 ? 1e-6 : 1e-14, std::max(1e-30, double(scale) * sabs + 0.25));
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-v") chk::verbose = true;
    std::mt19937_64 rng(11);
    // As metrics.rs: one block of 256, accumulate = 0; batch sizes of a CIFAR-10 run, and edges.
    for (unsigned n : {0u, 1u, 7u, 255u, 256u, 257u, 512u, 1000u, 1024u})
        case_count(n, 10, 256, 0, rng);
    case_count(300, 1, 256, 0, rng);
    case_count(300, 3, 256, 1, rng);
    // other block sizes, including ones that are not powers of two
    for (unsigned t : {1u, 32u, 100u, 1024u}) case_count(777, 10, t, 0, rng);
    // As cross_entropy.rs: one block of 256, scale = 1/N, accumulate = 0.
    for (unsigned n : {1u, 7u, 255u, 256u, 257u, 1000u, 5000u}) {
        case_sum<float>(n, 256, 0, rng);
        case_sum<double>(n, 256, 0, rng);
    }
    for (unsigned t : {1u, 33u, 100u, 1024u}) {
        case_sum<float>(3001, t, 1, rng);
        case_sum<double>(3001, t, 0, rng);
    }
    std::printf("(%llu emulated threads)\n", emu::threads_started);
    return chk::finish("reduce");
}
