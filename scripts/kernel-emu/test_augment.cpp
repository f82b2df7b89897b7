// ptx/augment.cu on the CPU: augment_batch(data, idx, params, out, labels, n, mean0..2, std0..2)
// and normalize_batch(data, idx, out, labels, n, flip, mean0..2, std0..2) as ops/src/augment.rs
// launches them (grid(n * 3072): 1024-thread blocks; idx, params and labels views at an
// offset into the epoch's arrays, as model/src/pipeline.rs passes them), compared BIT FOR BIT
// with data/src/augment.rs's CPU reference (`augment_into`, `normalize_into`) re-implemented
// here in f32: v = (byte as f32 / 255.0 - mean[c]) / std[c], then cutout -> 0.0. The reflect
// padding is built here as an explicit 40x40 image (edge not repeated), not with the kernel's
// index formula. Labels: the record's first byte. Every crop corner, both flips, cutouts at
// and beyond the borders (clipped) and none (-100, AugParams::identity). normalize_batch with
// flip = 1 (flip test-time augmentation) against the plain reference with each row reversed.
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/augment.cu"
#endif
#include "check.h"

#include <string>

constexpr size_t RECORD = 3073;

struct Aug {
    int crop_x, crop_y, flip, cutout_x, cutout_y;  // data::augment::AugParams, #[repr(C)]
};
static_assert(sizeof(Aug) == 5 * sizeof(int), "AugParams is 5 i32");

// The 40x40 reflect-padded plane c of a record (PyTorch padding_mode="reflect": the border
// pixel is not repeated): rows/columns -4..-1 are 4,3,2,1 and 32..35 are 30,29,28,27.
void padded(const uint8_t* img, int c, uint8_t out[40][40])
{
    int src[40];
    for (int p = 0; p < 40; ++p) src[p] = p - 4;
    for (int p = 0; p < 4; ++p) src[p] = 4 - p;           // 4, 3, 2, 1
    for (int p = 36; p < 40; ++p) src[p] = 30 - (p - 36); // 30, 29, 28, 27
    for (int y = 0; y < 40; ++y)
        for (int x = 0; x < 40; ++x) out[y][x] = img[c * 1024 + src[y] * 32 + src[x]];
}

// data/src/augment.rs augment_into, in f32 (no contraction: built with -ffp-contract=off)
void ref_augment(const uint8_t* img, const Aug& p, const float mean[3], const float sd[3], float* out)
{
    for (int c = 0; c < 3; ++c) {
        uint8_t pad[40][40];
        padded(img, c, pad);
        for (int y = 0; y < 32; ++y)
            for (int x = 0; x < 32; ++x) {
                const int wx = p.flip != 0 ? 31 - x : x;
                const uint8_t b = pad[y + p.crop_y][wx + p.crop_x];
                const bool cut = p.cutout_y - 4 <= y && y < p.cutout_y + 4 && p.cutout_x - 4 <= x && x < p.cutout_x + 4;
                out[c * 1024 + y * 32 + x] = cut ? 0.0f : ((float)b / 255.0f - mean[c]) / sd[c];
            }
    }
}

// data/src/augment.rs normalize_into
void ref_normalize(const uint8_t* img, const float mean[3], const float sd[3], float* out)
{
    for (int i = 0; i < 3072; ++i) out[i] = ((float)img[i] / 255.0f - mean[i / 1024]) / sd[i / 1024];
}

std::vector<uint32_t> bits(const float* v, size_t n)
{
    std::vector<uint32_t> b(n);
    std::memcpy(b.data(), v, n * 4);
    return b;
}

struct Split {
    std::vector<uint8_t> bytes;
    unsigned records;
};

// A batch of n images: entries [start, start + n) of the epoch's idx/params/labels arrays.
void case_batch(const Split& d, const std::vector<unsigned>& idx_all, const std::vector<Aug>& par_all, unsigned start, unsigned n,
                const float mean[3], const float sd[3], const char* what, bool grid_stride = false)
{
    // The views as separate exact-size buffers, so a read or write past a view is an ASan report.
    std::vector<unsigned> idx(idx_all.begin() + start, idx_all.begin() + start + n);
    std::vector<int> params(5 * (size_t)n);
    std::memcpy(params.data(), par_all.data() + start, params.size() * sizeof(int));
    std::vector<float> out((size_t)n * 3072, std::numeric_limits<float>::quiet_NaN());
    std::vector<unsigned> labels(n, 99u);
    const auto cfg = grid_stride ? emu::Config{dim3(3), dim3(100)} : emu::for_num_elems(n * 3072);
    emu::launch_seq(augment_batch, cfg.grid, cfg.block, (const unsigned char*)d.bytes.data(), (const unsigned*)idx.data(),
                    (const int*)params.data(), out.data(), labels.data(), n, mean[0], mean[1], mean[2], sd[0], sd[1], sd[2]);
    std::vector<float> want((size_t)n * 3072), want_eval((size_t)n * 3072);
    std::vector<unsigned> want_labels(n);
    for (unsigned i = 0; i < n; ++i) {
        const uint8_t* rec = d.bytes.data() + (size_t)idx[i] * RECORD;
        ref_augment(rec + 1, par_all[start + i], mean, sd, want.data() + (size_t)i * 3072);
        ref_normalize(rec + 1, mean, sd, want_eval.data() + (size_t)i * 3072);
        want_labels[i] = rec[0];
    }
    char L[160];
    std::snprintf(L, sizeof L, "%s n=%u from %u%s: ", what, n, start, grid_stride ? " grid 3x100" : "");
    const std::string P = L;
    chk::equal(P + "augment_batch bits", bits(out.data(), out.size()), bits(want.data(), want.size()));
    chk::equal(P + "augment_batch labels", labels, want_labels);

    // The flipped test batch: every row of the plain reference reversed.
    std::vector<float> want_flip((size_t)n * 3072);
    for (size_t row = 0; row < (size_t)n * 96; ++row)
        for (int x = 0; x < 32; ++x) want_flip[row * 32 + x] = want_eval[row * 32 + (31 - x)];
    for (unsigned flip : {0u, 1u}) {
        std::vector<float> out_eval((size_t)n * 3072, std::numeric_limits<float>::quiet_NaN());
        std::vector<unsigned> labels_eval(n, 99u);
        emu::launch_seq(normalize_batch, cfg.grid, cfg.block, (const unsigned char*)d.bytes.data(), (const unsigned*)idx.data(),
                        out_eval.data(), labels_eval.data(), n, flip, mean[0], mean[1], mean[2], sd[0], sd[1], sd[2]);
        const std::vector<float>& want_n = flip ? want_flip : want_eval;
        const std::string Q = P + (flip ? "normalize_batch flipped" : "normalize_batch");
        chk::equal(Q + " bits", bits(out_eval.data(), out_eval.size()), bits(want_n.data(), want_n.size()));
        chk::equal(Q + " labels", labels_eval, want_labels);
    }
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-v") chk::verbose = true;
    std::mt19937_64 rng(41);
    Split d;
    d.records = 300;
    d.bytes.resize((size_t)d.records * RECORD);
    for (auto& b : d.bytes) b = uint8_t(rng());
    for (unsigned r = 0; r < d.records; ++r) d.bytes[r * RECORD] = uint8_t(r % 10);
    // every byte value appears in the first record's planes, for the normalisation
    for (int v = 0; v < 256; ++v) d.bytes[1 + v] = uint8_t(v);

    const unsigned total = 600;
    std::vector<unsigned> idx(total);
    std::vector<Aug> par(total);
    for (unsigned i = 0; i < total; ++i) {
        idx[i] = unsigned(rng() % d.records);
        // AugParams::sample's ranges
        par[i] = Aug{int(rng() % 9), int(rng() % 9), int(rng() % 2), int(rng() % 32), int(rng() % 32)};
    }
    idx[0] = 0;                 // the record with every byte value
    idx[total - 1] = d.records - 1;  // the last record (ends the buffer)
    // every crop corner with both flips, cutouts at, beyond and away from the borders
    const int cx[] = {0, 31, 3, 28, -3, 35, 16, -100};
    const int cy[] = {31, 0, 28, 3, 34, -4, 16, -100};
    for (unsigned i = 0; i < 162; ++i) {
        par[i].crop_x = int(i % 9);
        par[i].crop_y = int((i / 9) % 9);
        par[i].flip = int(i / 81);
        par[i].cutout_x = cx[i % 8];
        par[i].cutout_y = cy[(i / 8) % 8];
    }
    par[200] = Aug{4, 4, 0, -100, -100};  // AugParams::identity()

    const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, sd[3] = {0.2470f, 0.2435f, 0.2616f};
    const float mean2[3] = {0.49f, 0.48f, 0.45f}, sd2[3] = {0.25f, 0.24f, 0.26f};  // tests/cuda_ops.rs
    case_batch(d, idx, par, 0, 256, mean, sd, "cifar norm");
    case_batch(d, idx, par, 0, 256, mean2, sd2, "cuda_ops norm");
    case_batch(d, idx, par, 16, 8, mean, sd, "view");         // tests/cuda_ops.rs's offset batch
    case_batch(d, idx, par, 512, 88, mean, sd, "last batch");  // ends at the array's end
    case_batch(d, idx, par, 199, 1, mean2, sd2, "one image");
    case_batch(d, idx, par, 100, 70, mean, sd, "any grid", true);
    return chk::finish("augment");
}
