// The per-batch values of a training step captured once as a CUDA graph and replayed
// for every batch of every epoch. A replay cannot be given new kernel arguments, so
// the batch number s lives in device memory (`step`): stage_batch turns it into the
// batch's inputs before the captured step, and finish_step files the step's
// statistics in slot s and advances s after it. The host sets `step` to 0 at the start
// of each epoch (and to b before the first replay of an epoch that began without one).
//
// Shapes: the epoch's arrays idx_all [total], params_all [5*total] (crop_x, crop_y,
// flip, cutout_x, cutout_y per image), labels_all [total], lrs [steps]; the staged
// batch idx_out [n], params_out [5*n], labels_out [n], lr_out [1].

// ONE THREAD copies the record index, the 5 augmentation values and the label of ONE
// image i of batch s (position j = s*n + i of the epoch's arrays) into the fixed batch
// buffers that the captured step reads; thread 0 also copies the LR of step s.
// Positions past the end are clamped to the last one (only a host bug can ask for
// them; the result is a wrong batch, never a read outside the arrays).
extern "C" __global__ void stage_batch(
    const unsigned int* step,
    const unsigned int* idx_all,
    const int* params_all,
    const unsigned int* labels_all,
    const float* lrs,
    unsigned int n,           // images per batch
    unsigned int total,       // images in the epoch (>= 1)
    unsigned int steps,       // entries of lrs (>= 1)
    unsigned int* idx_out,
    int* params_out,
    unsigned int* labels_out,
    float* lr_out)
{
    const unsigned int s = *step;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        unsigned long long j = (unsigned long long)s * n + i;
        if (j >= total) {
            j = total - 1;
        }
        idx_out[i] = idx_all[j];
        labels_out[i] = labels_all[j];
        for (int k = 0; k < 5; ++k) {
            params_out[5 * i + k] = params_all[5 * j + k];
        }
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        *lr_out = lrs[s < steps ? s : steps - 1];
    }
}

// ONE THREAD (the launch is a single thread): losses[s] = *loss and correct[s] =
// *correct_in for s = *step (if s < steps), then *step = s + 1.
extern "C" __global__ void finish_step(
    unsigned int* step,
    const float* loss,
    const unsigned int* correct_in,
    float* losses,
    unsigned int* correct,
    unsigned int steps)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) {
        return;
    }
    const unsigned int s = *step;
    if (s < steps) {
        losses[s] = *loss;
        correct[s] = *correct_in;
    }
    *step = s + 1;
}
