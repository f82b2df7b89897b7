// Softmax cross-entropy with label smoothing over logits z [N, K] (row-major)
// and integer labels y [N] in 0..K.
//
//   p_k    = softmax(z)_k = exp(z_k - lse),  lse = m + log(sum_j exp(z_j - m)),  m = max_j z_j
//   q_k    = (1 - s) * [k == y] + s / K                  (smoothed target, sum_k q_k = 1)
//   loss_n = -sum_k q_k log p_k = sum_k q_k (lse - z_k)
//   d loss_n / d z_k = p_k - q_k
//
// The mean over the batch, L = (1/N) sum_n loss_n, is formed by the caller
// (reduce.cu: sum_reduce with scale = 1/N); its gradient is
// dL/dz_{n,k} = (p_{n,k} - q_{n,k}) / N, times the upstream gradient dL_up:
// cross_entropy_backward reads dL_up from device memory (no host round trip) and
// takes inv_n = 1/N.
//
// ONE THREAD handles ONE ROW (grid-stride loop over the N rows; any grid/block
// shape works). K is small (10 for CIFAR-10), so a row is a handful of
// registers-worth of work; a warp-per-row version is a later speed-up.
//
// A label outside 0..K-1 yields NaN for that row (loss and gradient), so a bad
// label cannot silently train; the host validates labels before this point.

// Row max and log-sum-exp of one row of k logits.
__device__ __forceinline__ float row_lse(const float* z, unsigned int k)
{
    float m = z[0];
    for (unsigned int j = 1; j < k; ++j) {
        m = fmaxf(m, z[j]);
    }
    float sum = 0.0f;
    for (unsigned int j = 0; j < k; ++j) {
        sum += expf(z[j] - m);
    }
    return m + logf(sum);
}

// cross_entropy_forward: ONE THREAD computes loss[n] for ONE ROW n:
//   loss[n] = sum_k q_k (lse - z[n,k])
//           = (1 - s) (lse - z[n,y_n]) + (s / K) sum_k (lse - z[n,k])
extern "C" __global__ void cross_entropy_forward(
    const float* logits,          // [n, k]
    const unsigned int* labels,   // [n]
    float* loss,                  // [n] per-row loss
    unsigned int n,               // rows (batch size)
    unsigned int k,               // classes
    float smoothing)              // s in [0, 1]
{
    const unsigned int stride = blockDim.x * gridDim.x;
    for (unsigned int row = blockIdx.x * blockDim.x + threadIdx.x; row < n; row += stride) {
        const float* z = logits + (unsigned long long)row * k;
        const unsigned int y = labels[row];
        if (y >= k) {
            loss[row] = __int_as_float(0x7fc00000);  // NaN: invalid label
            continue;
        }
        const float lse = row_lse(z, k);
        float sum_all = 0.0f;
        for (unsigned int j = 0; j < k; ++j) {
            sum_all += lse - z[j];
        }
        loss[row] = (1.0f - smoothing) * (lse - z[y]) + (smoothing / (float)k) * sum_all;
    }
}

// cross_entropy_backward: ONE THREAD computes the K gradients of ONE ROW n:
//   dlogits[n,k] = (exp(z[n,k] - lse) - q_k) * scale,   q_k = (1 - s)[k == y_n] + s/K
// with scale = dloss[0] * inv_n = dL_up / N for the batch-mean loss. Overwrites dlogits (no +=).
extern "C" __global__ void cross_entropy_backward(
    const float* logits,          // [n, k]
    const unsigned int* labels,   // [n]
    float* dlogits,               // [n, k] output
    unsigned int n,               // rows (batch size)
    unsigned int k,               // classes
    float smoothing,              // s in [0, 1]
    const float* dloss,           // [1] upstream gradient dL_up
    float inv_n)                  // 1 / n
{
    const float scale = dloss[0] * inv_n;
    const unsigned int stride = blockDim.x * gridDim.x;
    for (unsigned int row = blockIdx.x * blockDim.x + threadIdx.x; row < n; row += stride) {
        const float* z = logits + (unsigned long long)row * k;
        float* dz = dlogits + (unsigned long long)row * k;
        const unsigned int y = labels[row];
        if (y >= k) {
            for (unsigned int j = 0; j < k; ++j) {
                dz[j] = __int_as_float(0x7fc00000);  // NaN: invalid label
            }
            continue;
        }
        const float lse = row_lse(z, k);
        const float off = smoothing / (float)k;
        for (unsigned int j = 0; j < k; ++j) {
            const float q = (j == y ? 1.0f - smoothing : 0.0f) + off;
            dz[j] = (expf(z[j] - lse) - q) * scale;
        }
    }
}
