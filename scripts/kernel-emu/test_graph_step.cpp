// ptx/graph_step.cu on the CPU: stage_batch as ops/src/graph_step.rs launches it (grid(n):
// 1024-thread blocks), finish_step as DeviceMeter::record_at_device_step in
// ops/src/metrics.rs launches it (one thread, after count_correct of ptx/reduce.cu into a
// fixed slot with accumulate = 0), replayed over an epoch the way model/src/graph.rs does
// (the host writes the step counter only when it does not already hold b).
#include "emu.h"
#ifdef KERNEL_SRC
#include KERNEL_SRC
#else
#include "../../ptx/graph_step.cu"
#endif
#include "../../ptx/reduce.cu"
#include "check.h"

#include <string>

struct Epoch {
    unsigned total, steps;
    std::vector<unsigned> idx, labels;
    std::vector<int> params;
    std::vector<float> lrs;
};

Epoch make_epoch(unsigned total, unsigned steps, std::mt19937_64& rng)
{
    Epoch e{total, steps, std::vector<unsigned>(total), std::vector<unsigned>(total), std::vector<int>(5 * (size_t)total),
            std::vector<float>(steps)};
    for (unsigned i = 0; i < total; ++i) {
        e.idx[i] = unsigned(rng() % 50000);
        e.labels[i] = unsigned(rng() % 10);
    }
    for (auto& p : e.params) p = int(rng() % 41) - 20;
    for (unsigned s = 0; s < steps; ++s) e.lrs[s] = 0.4f * float(s + 1) / float(steps);
    return e;
}

// stage_batch of batch s, checked against its definition (j = s*n + i clamped to total - 1,
// lr = lrs[min(s, steps - 1)]); `threaded` runs the block's threads as std::threads.
void check_stage(const Epoch& e, unsigned n, unsigned s, bool threaded)
{
    std::vector<unsigned> step{s}, idx_out(n, 0xdeadbeef), labels_out(n, 0xdeadbeef);
    std::vector<int> params_out(5 * (size_t)n, 0x7eadbeef);
    std::vector<float> lr_out(1, std::numeric_limits<float>::quiet_NaN());
    const auto cfg = emu::for_num_elems(n);
    auto run = [&](auto launcher) {
        launcher(stage_batch, cfg.grid, cfg.block, (const unsigned*)step.data(), e.idx.data(), e.params.data(), e.labels.data(),
                 e.lrs.data(), n, e.total, e.steps, idx_out.data(), params_out.data(), labels_out.data(), lr_out.data());
    };
    if (threaded) {
        run([](auto... a) { emu::launch(a...); });
    } else {
        run([](auto... a) { emu::launch_seq(a...); });
    }
    std::vector<unsigned> r_idx(n), r_lab(n);
    std::vector<int> r_par(5 * (size_t)n);
    for (unsigned i = 0; i < n; ++i) {
        unsigned long long j = (unsigned long long)s * n + i;
        if (j >= e.total) j = e.total - 1;
        r_idx[i] = e.idx[j];
        r_lab[i] = e.labels[j];
        for (int k = 0; k < 5; ++k) r_par[5 * i + k] = e.params[5 * j + k];
    }
    const std::vector<float> r_lr{e.lrs[std::min(s, e.steps - 1)]};
    char L[128];
    std::snprintf(L, sizeof L, "stage_batch total=%u n=%u steps=%u s=%u%s: ", e.total, n, e.steps, s, threaded ? " (threads)" : "");
    chk::equal(std::string(L) + "idx", idx_out, r_idx);
    chk::equal(std::string(L) + "labels", labels_out, r_lab);
    chk::equal(std::string(L) + "params", params_out, r_par);
    chk::equal(std::string(L) + "lr", lr_out, r_lr);
    chk::equal(std::string(L) + "step unchanged", step, std::vector<unsigned>{s});
}

// One block of 256 threads, as metrics.rs launches count_correct.
void count_correct_into(const std::vector<float>& logits, const std::vector<unsigned>& labels, unsigned* out, unsigned n, unsigned k)
{
    emu::launch(count_correct, dim3(1), dim3(256), logits.data(), labels.data(), out, n, k, 0);
}

unsigned ref_correct(const std::vector<float>& logits, const std::vector<unsigned>& labels, unsigned n, unsigned k)
{
    unsigned c = 0;
    for (unsigned r = 0; r < n; ++r) {
        unsigned best = 0;
        for (unsigned j = 1; j < k; ++j)
            if (logits[(size_t)r * k + j] > logits[(size_t)r * k + best]) best = j;
        c += best == labels[r];
    }
    return c;
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-v") chk::verbose = true;
    std::mt19937_64 rng(7);

    // ---- stage_batch alone: first, middle, last (partial) and past-the-end batches ----
    {
        const unsigned total = 50000, n = 512, steps = (total + n - 1) / n;  // 98 steps, the last of 336 images
        const Epoch e = make_epoch(total, steps, rng);
        for (unsigned s : {0u, 1u, 50u, 96u, 97u, 98u, 1000u}) check_stage(e, n, s, false);
        check_stage(e, n, 97, true);
        // n > 1024: two blocks, grid-stride
        const Epoch e2 = make_epoch(5000, 3, rng);
        for (unsigned s : {0u, 1u, 2u, 3u}) check_stage(e2, 1500, s, false);
        check_stage(e2, 1500, 2, true);
        // one image, one step
        const Epoch e3 = make_epoch(1, 1, rng);
        for (unsigned s : {0u, 5u}) check_stage(e3, 1, s, false);
        // steps smaller than the batches (lr clamped)
        const Epoch e4 = make_epoch(700, 2, rng);
        for (unsigned s : {0u, 1u, 2u, 6u}) check_stage(e4, 100, s, false);
    }

    // ---- an epoch of captured steps: stage_batch, count_correct -> slot, finish_step ----
    {
        const unsigned total = 1000, n = 96, K = 10, steps = (total + n - 1) / n;  // 11 batches
        const Epoch e = make_epoch(total, steps, rng);
        std::vector<unsigned> step{0}, correct_slot{0xdeadbeef}, correct(steps, 0xdeadbeef);
        std::vector<float> losses(steps, std::numeric_limits<float>::quiet_NaN());
        std::vector<unsigned> r_correct(steps);
        std::vector<float> r_losses(steps);
        std::vector<unsigned> idx_out(n), labels_out(n);
        std::vector<int> params_out(5 * n);
        std::vector<float> lr_out(1);
        long step_host = -1;
        bool staged_ok = true;
        for (unsigned b = 0; b < steps + 2; ++b) {  // two replays past the meter's slots: no write, counter still advances
            if (step_host != long(b)) {
                step[0] = b;  // set_counter
            }
            const auto cfg = emu::for_num_elems(n);
            emu::launch_seq(stage_batch, cfg.grid, cfg.block, step.data(), e.idx.data(), e.params.data(), e.labels.data(),
                            e.lrs.data(), n, total, steps, idx_out.data(), params_out.data(), labels_out.data(), lr_out.data());
            for (unsigned i = 0; i < n; ++i) {
                const unsigned long long j = std::min<unsigned long long>((unsigned long long)b * n + i, total - 1);
                staged_ok &= idx_out[i] == e.idx[j] && labels_out[i] == e.labels[j];
            }
            staged_ok &= lr_out[0] == e.lrs[std::min(b, steps - 1)];
            // the "step": logits that get some rows right, a loss
            std::vector<float> logits((size_t)n * K);
            for (auto& z : logits) z = float(int(rng() % 7)) * 0.5f;  // ties on purpose
            for (unsigned i = 0; i < n; ++i)
                if (rng() % 2) logits[(size_t)i * K + labels_out[i]] = 10.0f;
            const float loss = 2.3f / float(b + 1);
            count_correct_into(logits, labels_out, correct_slot.data(), n, K);
            const unsigned rc = ref_correct(logits, labels_out, n, K);
            staged_ok &= correct_slot[0] == rc;
            emu::launch(finish_step, dim3(1), dim3(1), step.data(), &loss, (const unsigned*)correct_slot.data(), losses.data(),
                        correct.data(), steps);
            if (b < steps) {
                r_correct[b] = rc;
                r_losses[b] = loss;
            }
            staged_ok &= step[0] == b + 1;
            step_host = b + 1;  // launch(): the host now knows the counter holds b + 1
        }
        ++chk::checks;
        if (!staged_ok) {
            ++chk::failures;
            std::printf("  FAIL epoch replay: staged batch, correct slot or step counter wrong\n");
        }
        chk::equal("epoch replay: losses[b]", losses, r_losses);
        chk::equal("epoch replay: correct[b]", correct, r_correct);
        chk::equal("epoch replay: final step", step, std::vector<unsigned>{steps + 2});
        // finish_step launched with more threads than one: only thread 0 of block 0 acts
        std::vector<unsigned> st{3}, cor(5, 0);
        std::vector<float> los(5, 0);
        const unsigned one = 42;
        const float l = 1.5f;
        emu::launch(finish_step, dim3(2), dim3(64), st.data(), &l, &one, los.data(), cor.data(), 5u);
        chk::equal("finish_step 2x64 threads: step", st, std::vector<unsigned>{4});
        chk::equal("finish_step 2x64 threads: correct", cor, std::vector<unsigned>{0, 0, 0, 42, 0});
    }
    std::printf("(%llu emulated threads in std::thread launches)\n", emu::threads_started);
    return chk::finish("graph_step");
}
