// check.h: random inputs and tolerant comparisons for the harness programs (host-side only;
// nothing here is taken from the kernels).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace chk {

inline int failures = 0;
inline int checks = 0;
inline bool verbose = false;

// f32 -> bf16 bits, round to nearest even (NaN kept quiet): the host's own conversion.
inline uint16_t to_bf16(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) {
        return uint16_t((u >> 16) | 0x40);
    }
    // Exact RNE via the rounding of a double sum would be obscure; do it on the bits.
    const uint32_t lower = u & 0xffff, upper = u >> 16;
    uint32_t r = upper;
    if (lower > 0x8000 || (lower == 0x8000 && (upper & 1))) {
        r += 1;
    }
    return uint16_t(r);
}
inline double from_bf16(uint16_t h)
{
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline const uint16_t BF16_NAN = 0x7fc1;

// Compare `got` with `ref`: the largest |got - ref| over max(|ref|) (or over `norm` when given)
// must be at most `tol`; NaN anywhere in got is a failure. `skip[i]` excludes element i.
inline bool close(const std::string& what, const std::vector<double>& got, const std::vector<double>& ref, double tol,
                  double norm = 0.0, const std::vector<char>* skip = nullptr)
{
    ++checks;
    if (got.size() != ref.size()) {
        std::printf("  FAIL %-40s size %zu vs %zu\n", what.c_str(), got.size(), ref.size());
        ++failures;
        return false;
    }
    double mx = 0;
    for (double r : ref) {
        mx = std::max(mx, std::fabs(r));
    }
    if (norm <= 0) {
        norm = mx > 0 ? mx : 1.0;
    }
    double worst = 0;
    size_t wi = 0, nan = 0, skipped = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (skip && (*skip)[i]) {
            ++skipped;
            continue;
        }
        if (std::isnan(got[i]) != std::isnan(ref[i])) {
            if (nan == 0) {
                wi = i;
            }
            ++nan;
            continue;
        }
        const double e = std::fabs(got[i] - ref[i]) / norm;
        if (e > worst) {
            worst = e;
            if (nan == 0) {
                wi = i;
            }
        }
    }
    const bool ok = nan == 0 && worst <= tol;
    if (!ok) {
        ++failures;
    }
    if (!ok || verbose) {
        std::printf("  %s %-40s n=%zu err=%.3g (tol %.1g, norm %.3g)", ok ? "ok  " : "FAIL", what.c_str(), got.size(), worst,
                    tol, norm);
        if (skipped) {
            std::printf(" skipped=%zu", skipped);
        }
        if (nan) {
            std::printf(" NaN-mismatch=%zu", nan);
        }
        if (!ok && !got.empty()) {
            std::printf(" first/worst at [%zu]: got %.9g ref %.9g", wi, got[wi], ref[wi]);
        }
        std::printf("\n");
    }
    return ok;
}

template <typename U>
inline bool equal(const std::string& what, const std::vector<U>& got, const std::vector<U>& ref)
{
    ++checks;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < std::min(got.size(), ref.size()); ++i) {
        if (got[i] != ref[i]) {
            if (bad == 0) {
                first = i;
            }
            ++bad;
        }
    }
    const bool ok = bad == 0 && got.size() == ref.size();
    if (!ok) {
        ++failures;
    }
    if (!ok || verbose) {
        std::printf("  %s %-40s n=%zu mismatches=%zu", ok ? "ok  " : "FAIL", what.c_str(), got.size(), bad);
        if (bad) {
            std::printf(" first at [%zu]: got %llu ref %llu", first, (unsigned long long)got[first], (unsigned long long)ref[first]);
        }
        std::printf("\n");
    }
    return ok;
}

inline int finish(const char* prog)
{
    std::printf("%s: %d checks, %d failed\n", prog, checks, failures);
    return failures == 0 ? 0 : 1;
}

}  // namespace chk
