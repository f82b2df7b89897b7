// ptx/sgd.cu on the CPU: sgd_update_multi as ops/src/sgd.rs `update_cuda` launches it: the
// table built as the #[repr(C)] Rust `SgdTable` (u64 addresses, u32 counts, i32 flags) and
// handed over as its bytes, one launch per 32 tensors, grid (sum of ceil(n/1024), 1) x 256
// with each tensor's first block in the table (block_starts), arguments (table, count, lr,
// lr_ptr as a u64 address: 0 or the device LR, momentum, dampening, wd, nesterov). Compared
//  - bit for bit with an f32 reference written here that evaluates torch.optim.SGD's
//    formulas (ops/src/sgd.rs doc and CPU `update`) left to right, one rounding per
//    operation, (1 - dampening) in f32: what the kernel's __f*_rn promise;
//  - with a double-precision torch.optim.SGD reference (tolerance), over three steps.
// First steps (buf = d), mixed first_step within a launch, nesterov, dampening, wd = 0
// (no decay term at all: an infinite parameter must not poison the buffer), momentum = 0
// (buffer untouched, also null), lr from lr_ptr (the lr argument then holds NaN).
// Gradients of bf16 channels-last compute copies (g16, a [K, C, R, S] weight's gradient
// stored [K, R, S, C] in bf16): the same bits as the f32 gradient the separate conversion
// would make (the reference widens each copy element into the weight's order).
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/sgd.cu"
#endif
#include "check.h"

#include <cstddef>
#include <string>

// ops/src/sgd.rs: `#[repr(C)] struct SgdTable { p: [u64; 32], g: [u64; 32], buf: [u64; 32],
// g16: [u64; 32], n: [u32; 32], first_step: [i32; 32], block0: [u32; 32], c16: [u32; 32],
// rs16: [u32; 32] }`, passed by value (cudarc copies its bytes).
constexpr size_t MAX_TENSORS = 32;
struct RustSgdTable {
    uint64_t p[MAX_TENSORS];
    uint64_t g[MAX_TENSORS];
    uint64_t buf[MAX_TENSORS];
    uint64_t g16[MAX_TENSORS];
    uint32_t n[MAX_TENSORS];
    int32_t first_step[MAX_TENSORS];
    uint32_t block0[MAX_TENSORS];
    uint32_t c16[MAX_TENSORS];
    uint32_t rs16[MAX_TENSORS];
};
static_assert(SGD_MAX_TENSORS == MAX_TENSORS, "SGD_MAX_TENSORS differs from ops/src/sgd.rs MAX_TENSORS");
static_assert(sizeof(RustSgdTable) == sizeof(SgdTable), "SgdTable size differs from the Rust struct");
static_assert(alignof(RustSgdTable) == alignof(SgdTable), "SgdTable alignment differs from the Rust struct");
static_assert(offsetof(RustSgdTable, g) == offsetof(SgdTable, g), "SgdTable.g offset");
static_assert(offsetof(RustSgdTable, buf) == offsetof(SgdTable, buf), "SgdTable.buf offset");
static_assert(offsetof(RustSgdTable, n) == offsetof(SgdTable, n), "SgdTable.n offset");
static_assert(offsetof(RustSgdTable, first_step) == offsetof(SgdTable, first_step), "SgdTable.first_step offset");
static_assert(offsetof(RustSgdTable, block0) == offsetof(SgdTable, block0), "SgdTable.block0 offset");
static_assert(offsetof(RustSgdTable, g16) == offsetof(SgdTable, g16), "SgdTable.g16 offset");
static_assert(offsetof(RustSgdTable, c16) == offsetof(SgdTable, c16), "SgdTable.c16 offset");
static_assert(offsetof(RustSgdTable, rs16) == offsetof(SgdTable, rs16), "SgdTable.rs16 offset");
static_assert(SGD_PER_THREAD == 4, "SGD_PER_THREAD differs from ops/src/sgd.rs PER_THREAD");

struct Cfg {
    float lr, momentum, dampening, wd;
    int nesterov;
    const char* name;
};

struct Param {
    std::vector<float> p, buf;
    bool has_buf = false;
    // A convolution weight [K, C, R, S] whose gradient arrives as its bf16 [K, R, S, C] copy's
    // (c16 = C, rs16 = R*S); c16 == 0: an f32 gradient.
    unsigned c16 = 0, rs16 = 0;
    // references
    std::vector<float> rp, rbuf;    // f32, left to right
    std::vector<double> dp, dbuf;   // f64 torch
    bool r_has_buf = false;
};

uint64_t addr(const void* q) { return (uint64_t)(uintptr_t)q; }

// One optimizer step of the tensors `active` (those with a gradient), as update_cuda:
// chunks of 32, one launch each. lr_dev: 0 or the address of the f32 LR.
void gpu_step(std::vector<Param>& ps, const std::vector<std::vector<float>>& grads,
              const std::vector<std::vector<uint16_t>>& grads16, const std::vector<size_t>& active, const Cfg& c, uint64_t lr_dev,
              bool null_buf)
{
    for (size_t start = 0; start < active.size(); start += MAX_TENSORS) {
        const size_t cnt = std::min(MAX_TENSORS, active.size() - start);
        RustSgdTable rt;
        std::memset(&rt, 0, sizeof rt);
        uint32_t blocks = 0;  // block_starts: each tensor's blocks after the previous one's
        for (size_t t = 0; t < cnt; ++t) {
            Param& q = ps[active[start + t]];
            rt.first_step[t] = q.has_buf ? 0 : 1;
            if (!q.has_buf) {
                // Rust makes a zero buffer here; NaN instead, so a first step that read it shows.
                q.buf.assign(q.p.size(), std::numeric_limits<float>::quiet_NaN());
                q.has_buf = true;
            }
            rt.n[t] = (uint32_t)q.p.size();
            rt.block0[t] = blocks;
            blocks += (rt.n[t] + 256 * 4 - 1) / (256 * 4);
            rt.p[t] = addr(q.p.data());
            if (q.c16) {
                // As update_cuda: g null, the copy's gradient and its C, R*S.
                rt.g16[t] = addr(grads16[active[start + t]].data());
                rt.c16[t] = q.c16;
                rt.rs16[t] = q.rs16;
            } else {
                rt.g[t] = addr(grads[active[start + t]].data());
            }
            rt.buf[t] = null_buf ? 0 : addr(q.buf.data());
        }
        SgdTable table;
        std::memcpy(&table, &rt, sizeof table);  // the argument's bytes, as cudarc passes them
        const float* lr_ptr;
        std::memcpy(&lr_ptr, &lr_dev, sizeof lr_ptr);  // `.arg(&lr_dev)`: a u64 for `const float*`
        const unsigned count = (unsigned)cnt;
        const float lr_arg = lr_dev ? std::numeric_limits<float>::quiet_NaN() : c.lr;
        if (blocks == 0) {
            continue;  // nothing to update (Rust launches nothing)
        }
        const dim3 grid(blocks, 1, 1), block(256);
        emu::launch_seq(sgd_update_multi, grid, block, table, count, lr_arg, lr_ptr, c.momentum, c.dampening, c.wd, c.nesterov);
    }
}

void ref_step(Param& q, const std::vector<float>& g, const Cfg& c, float lr)
{
    const bool first = !q.r_has_buf;
    if (c.momentum != 0.0f && first) {
        q.rbuf.assign(q.p.size(), 0.0f);
        q.dbuf.assign(q.p.size(), 0.0);
        q.r_has_buf = true;
    }
    const float keep = 1.0f - c.dampening;
    for (size_t i = 0; i < q.rp.size(); ++i) {
        // f32, left to right (ops/src/sgd.rs `update::<f32>`)
        float d = g[i];
        if (c.wd != 0.0f) d = d + c.wd * q.rp[i];
        if (c.momentum != 0.0f) {
            q.rbuf[i] = first ? d : c.momentum * q.rbuf[i] + keep * d;
            d = c.nesterov ? d + c.momentum * q.rbuf[i] : q.rbuf[i];
        }
        q.rp[i] = q.rp[i] - lr * d;
        // f64, torch.optim.SGD
        double e = g[i];
        if (c.wd != 0.0f) e += double(c.wd) * q.dp[i];
        if (c.momentum != 0.0f) {
            q.dbuf[i] = first ? e : double(c.momentum) * q.dbuf[i] + (1.0 - double(c.dampening)) * e;
            e = c.nesterov ? e + double(c.momentum) * q.dbuf[i] : q.dbuf[i];
        }
        q.dp[i] -= double(lr) * e;
    }
}

std::vector<uint32_t> bits(const std::vector<float>& v)
{
    std::vector<uint32_t> b(v.size());
    if (!v.empty()) std::memcpy(b.data(), v.data(), v.size() * 4);
    return b;
}

// `steps` steps of config c over tensors of `sizes`; in step s, tensor t has a gradient
// unless skip(s, t). device_lr: steps after the first read their LR through lr_ptr.
// conv[t] = {C, R*S} makes tensor t a convolution weight whose gradient arrives as its bf16
// [K, R, S, C] copy's (sizes[t] a multiple of C*R*S); {0, 0}: an f32 gradient.
struct Conv {
    unsigned c, rs;
};

template <typename Skip>
void run_case(const std::vector<unsigned>& sizes, const Cfg& c, int steps, bool device_lr, bool null_buf, Skip skip,
              std::mt19937_64& rng, bool inf_params = false, const std::vector<Conv>& conv = {})
{
    std::normal_distribution<float> N(0.0f, 1.0f);
    std::vector<Param> ps(sizes.size());
    for (size_t t = 0; t < sizes.size(); ++t) {
        if (t < conv.size()) {
            ps[t].c16 = conv[t].c;
            ps[t].rs16 = conv[t].rs;
        }
        ps[t].p.resize(sizes[t]);
        for (auto& v : ps[t].p) v = N(rng);
        if (inf_params && sizes[t] > 3) {
            ps[t].p[1] = std::numeric_limits<float>::infinity();
            ps[t].p[2] = -std::numeric_limits<float>::infinity();
        }
        ps[t].rp = ps[t].p;
        ps[t].dp.assign(ps[t].p.begin(), ps[t].p.end());
    }
    const float lrs[] = {c.lr, c.lr * 0.7f, c.lr * 1.3f, c.lr * 0.25f};
    for (int s = 0; s < steps; ++s) {
        std::vector<std::vector<float>> grads(sizes.size());
        std::vector<std::vector<uint16_t>> grads16(sizes.size());
        std::vector<size_t> active;
        for (size_t t = 0; t < sizes.size(); ++t) {
            grads[t].resize(sizes[t]);
            for (auto& v : grads[t]) v = N(rng);
            if (ps[t].c16) {
                // The copy's gradient [K, R, S, C] in bf16; the reference's f32 gradient is each
                // element widened, in the weight's [K, C, R, S] order.
                const unsigned C = ps[t].c16, RS = ps[t].rs16, K = sizes[t] / (C * RS);
                grads16[t].resize(sizes[t]);
                for (unsigned k = 0; k < K; ++k)
                    for (unsigned ch = 0; ch < C; ++ch)
                        for (unsigned p = 0; p < RS; ++p) {
                            const uint16_t h = chk::to_bf16(grads[t][(k * C + ch) * RS + p]);
                            grads16[t][(k * RS + p) * C + ch] = h;
                            grads[t][(k * C + ch) * RS + p] = float(chk::from_bf16(h));
                        }
            }
            if (!skip(s, t)) active.push_back(t);
        }
        const float lr = lrs[s % 4];
        std::vector<float> dev_lr{lr};
        // A device LR needs buffers made by an earlier step (update_cuda refuses otherwise).
        bool any_first = false;
        for (size_t t : active) any_first |= !ps[t].has_buf;
        const bool use_dev = device_lr && !any_first;
        Cfg cc = c;
        cc.lr = lr;
        gpu_step(ps, grads, grads16, active, cc, use_dev ? addr(dev_lr.data()) : 0, null_buf);
        for (size_t t : active) ref_step(ps[t], grads[t], cc, lr);
        char L[200];
        for (size_t t = 0; t < sizes.size(); ++t) {
            std::snprintf(L, sizeof L, "sgd %s%s step %d tensor %zu (n=%u%s%s): p bits", c.name, use_dev ? " lr_ptr" : "", s, t,
                          sizes[t], skip(s, t) ? ", no grad" : "", null_buf ? ", buf null" : "");
            chk::equal(L, bits(ps[t].p), bits(ps[t].rp));
            if (c.momentum != 0.0f) {
                if (!skip(s, t)) {
                    std::snprintf(L, sizeof L, "sgd %s step %d tensor %zu: buf bits", c.name, s, t);
                    chk::equal(L, bits(ps[t].buf), bits(ps[t].rbuf));
                }
            } else if (!null_buf && !ps[t].buf.empty()) {
                // momentum 0: the buffer (made NaN-filled by gpu_step) is neither read nor written
                std::snprintf(L, sizeof L, "sgd %s step %d tensor %zu: buf untouched", c.name, s, t);
                chk::equal(L, bits(ps[t].buf), std::vector<uint32_t>(ps[t].buf.size(), 0x7fc00000u));
            }
        }
    }
    // torch.optim.SGD in f64: the f32 result is within rounding (inf entries excluded).
    for (size_t t = 0; t < sizes.size(); ++t) {
        std::vector<double> got(ps[t].p.begin(), ps[t].p.end()), want = ps[t].dp;
        std::vector<char> skipv(got.size(), 0);
        double norm = 1e-30;
        for (size_t i = 0; i < got.size(); ++i) {
            skipv[i] = std::isinf(want[i]);
            if (!skipv[i]) norm = std::max(norm, std::fabs(want[i]));
        }
        char L[160];
        std::snprintf(L, sizeof L, "sgd %s tensor %zu (n=%u) vs f64 torch.optim.SGD", c.name, t, sizes[t]);
        chk::close(L, got, want, 2e-6, norm, &skipv);
    }
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-v") chk::verbose = true;
    std::mt19937_64 rng(21);
    const Cfg cfgs[] = {
        {0.1f, 0.9f, 0.0f, 5e-4f, 1, "nesterov+wd"},
        {0.05f, 0.9f, 0.0f, 0.0f, 0, "momentum wd=0"},
        {0.2f, 0.8f, 0.3f, 1e-2f, 0, "dampening+wd"},
        {0.1f, 0.9f, 0.0f, 0.0f, 1, "nesterov wd=0"},
        {0.1f, 0.0f, 0.0f, 5e-4f, 0, "plain+wd"},
        {0.3f, 0.0f, 0.0f, 0.0f, 0, "plain wd=0"},
    };
    auto none = [](int, size_t) { return false; };
    // tensors whose first gradient arrives late: mixed first_step flags in one launch
    auto late = [](int s, size_t t) { return (t % 3 == 1 && s == 0) || (t % 5 == 2 && s < 2); };
    // sizes around the 256-thread block and its 1024 elements, empty tensors (first, middle,
    // last), and 40 tensors (two launches)
    std::vector<unsigned> small = {0, 1, 7, 255, 256, 257, 0, 64, 3000, 513, 1024, 1025, 10, 0};
    std::vector<unsigned> forty;
    for (unsigned t = 0; t < 40; ++t) forty.push_back(1 + (t * 97) % 700);
    // empty tensors at the 32-tensor chunk boundary and last; and a second chunk of empty
    // tensors only (Rust launches nothing for it)
    std::vector<unsigned> forty_gaps = forty;
    forty_gaps[31] = forty_gaps[32] = forty_gaps[39] = 0;
    std::vector<unsigned> empty_tail = forty;
    for (unsigned t = 32; t < 40; ++t) empty_tail[t] = 0;
    // large tensors: hundreds of blocks each
    std::vector<unsigned> big = {300000, 5, 70000};
    for (const Cfg& c : cfgs) {
        for (bool dev_lr : {false, true}) {
            run_case(small, c, 4, dev_lr, false, late, rng);
            run_case(forty, c, 3, dev_lr, false, late, rng);
            run_case(forty_gaps, c, 2, dev_lr, false, none, rng);
            run_case(empty_tail, c, 2, dev_lr, false, none, rng);
        }
        run_case(small, c, 3, false, false, none, rng, /*inf_params=*/c.wd == 0.0f);
    }
    // Convolution weights' gradients from their bf16 channels-last copies, beside f32 ones in
    // the same launch: 3 input channels (the first convolution), a 1x1 kernel, a tensor of
    // hundreds of blocks, and a late first gradient.
    const std::vector<unsigned> convs = {64 * 3 * 9, 100, 16 * 32 * 1, 128 * 64 * 9, 7, 256 * 128 * 9};
    const std::vector<Conv> conv_shapes = {{3, 9}, {0, 0}, {32, 1}, {64, 9}, {0, 0}, {128, 9}};
    for (const Cfg& c : {cfgs[0], cfgs[2], cfgs[4]}) {
        run_case(convs, c, 3, false, false, late, rng, false, conv_shapes);
        run_case(convs, c, 2, true, false, none, rng, false, conv_shapes);
    }
    run_case(big, cfgs[0], 3, true, false, none, rng);
    run_case(big, cfgs[2], 2, false, false, none, rng);
    // momentum 0: buf may be null (Rust passes null then) and is neither read nor written
    run_case(small, cfgs[4], 2, false, true, late, rng);
    run_case(small, cfgs[5], 2, true, true, none, rng);
    return chk::finish("sgd");
}
