// Reductions that keep epoch statistics on the device, so that a training
// epoch needs no host synchronisation per batch: the sum of per-row losses and
// the count of correctly classified rows.
//
// Both kernels are ONE-BLOCK kernels: launch them with gridDim.x = 1 and any
// blockDim.x up to 1024 (256 is a good choice); blocks other than block 0 do
// nothing. ONE THREAD t first folds rows t, t + blockDim.x, t + 2*blockDim.x,
// ... in that order into a private partial; the block then combines the
// partials pairwise in shared memory (thread t adds partial t + w into partial
// t for w = 1, 2, 4, ..., on threads t that are multiples of 2w). The order of
// additions therefore depends only on n and blockDim.x: the result is
// deterministic from run to run (unlike atomicAdd), though not necessarily
// bit-identical to a sequential CPU sum.
//
// `accumulate` = 0 overwrites *out; 1 adds to it (e.g. an epoch total that is
// zeroed once per epoch and read back once at the end). *out may also be one
// slot of a per-batch array.

#define REDUCE_MAX_THREADS 1024

// sum_reduce: *out (=|+=) scale * sum_{i<n} x[i]
// e.g. the batch-mean loss with scale = 1/N, or an epoch loss sum with scale = 1.
// Instantiated in f32 and f64 (`sum_reduce_f64`).
template <typename T>
__device__ void sum_reduce_t(const T* x, T* out, unsigned int n, T scale, int accumulate)
{
    __shared__ T partial[REDUCE_MAX_THREADS];
    if (blockIdx.x != 0) {
        return;
    }
    const unsigned int t = threadIdx.x;
    T s = T(0);
    for (unsigned int i = t; i < n; i += blockDim.x) {
        s += x[i];
    }
    partial[t] = s;
    __syncthreads();
    for (unsigned int w = 1; w < blockDim.x; w *= 2) {
        if (t % (2 * w) == 0 && t + w < blockDim.x) {
            partial[t] += partial[t + w];
        }
        __syncthreads();
    }
    if (t == 0) {
        const T total = scale * partial[0];
        *out = accumulate ? *out + total : total;
    }
}
extern "C" __global__ void sum_reduce(const float* x, float* out, unsigned int n, float scale, int accumulate)
{
    sum_reduce_t(x, out, n, scale, accumulate);
}
extern "C" __global__ void sum_reduce_f64(const double* x, double* out, unsigned int n, double scale, int accumulate)
{
    sum_reduce_t(x, out, n, scale, accumulate);
}

// count_correct: *out (=|+=) #{ rows r < n : argmax_k logits[r, k] == labels[r] }
// argmax takes the FIRST maximal index on ties (as torch.argmax). A NaN logit
// never wins a comparison (a row with NaN in column 0 has argmax 0); such rows
// are a diverged run's symptom, not a case to count precisely.
extern "C" __global__ void count_correct(
    const float* logits,          // [n, k]
    const unsigned int* labels,   // [n]
    unsigned int* out,            // [1]
    unsigned int n,
    unsigned int k,
    int accumulate)
{
    __shared__ unsigned int partial[REDUCE_MAX_THREADS];
    if (blockIdx.x != 0) {
        return;
    }
    const unsigned int t = threadIdx.x;
    unsigned int c = 0;
    for (unsigned int r = t; r < n; r += blockDim.x) {
        const float* z = logits + (unsigned long long)r * k;
        unsigned int best = 0;
        float best_v = z[0];
        for (unsigned int j = 1; j < k; ++j) {
            if (z[j] > best_v) {
                best_v = z[j];
                best = j;
            }
        }
        c += (best == labels[r]) ? 1u : 0u;
    }
    partial[t] = c;
    __syncthreads();
    for (unsigned int w = 1; w < blockDim.x; w *= 2) {
        if (t % (2 * w) == 0 && t + w < blockDim.x) {
            partial[t] += partial[t + w];
        }
        __syncthreads();
    }
    if (t == 0) {
        *out = accumulate ? *out + partial[0] : partial[0];
    }
}
