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
// label cannot silently train. Labels given from the host are checked before the
// upload (ops/src/cross_entropy.rs); labels already on the device are not checked
// again (the data crate checks every label byte when it opens the files).
//
// Each kernel is written once as a template and instantiated in f32 (training)
// and f64 (`_f64`, gradient checks on the GPU).

// exp and log in the precision of T.
__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }
__device__ __forceinline__ float log_t(float x) { return logf(x); }
__device__ __forceinline__ double log_t(double x) { return log(x); }

// A quiet NaN of T (marks rows with an invalid label).
__device__ __forceinline__ float nan_t(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double nan_t(double) { return __longlong_as_double(0x7ff8000000000000LL); }

// Row max and log-sum-exp of one row of k logits.
template <typename T>
__device__ __forceinline__ T row_lse(const T* z, unsigned int k)
{
    T m = z[0];
    for (unsigned int j = 1; j < k; ++j) {
        m = z[j] > m ? z[j] : m;
    }
    T sum = T(0);
    for (unsigned int j = 0; j < k; ++j) {
        sum += exp_t(z[j] - m);
    }
    return m + log_t(sum);
}

// cross_entropy_forward: ONE THREAD computes loss[n] for ONE ROW n:
//   loss[n] = sum_k q_k (lse - z[n,k])
//           = (1 - s) (lse - z[n,y_n]) + (s / K) sum_k (lse - z[n,k])
template <typename T>
__device__ void cross_entropy_forward_t(
    const T* logits,              // [n, k]
    const unsigned int* labels,   // [n]
    T* loss,                      // [n] per-row loss
    unsigned int n,               // rows (batch size)
    unsigned int k,               // classes
    T smoothing)                  // s in [0, 1]
{
    const unsigned int stride = blockDim.x * gridDim.x;
    for (unsigned int row = blockIdx.x * blockDim.x + threadIdx.x; row < n; row += stride) {
        const T* z = logits + (unsigned long long)row * k;
        const unsigned int y = labels[row];
        if (y >= k) {
            loss[row] = nan_t(T(0));  // NaN: invalid label
            continue;
        }
        const T lse = row_lse(z, k);
        T sum_all = T(0);
        for (unsigned int j = 0; j < k; ++j) {
            sum_all += lse - z[j];
        }
        loss[row] = (T(1) - smoothing) * (lse - z[y]) + (smoothing / (T)k) * sum_all;
    }
}
extern "C" __global__ void cross_entropy_forward(const float* logits, const unsigned int* labels, float* loss,
                                                 unsigned int n, unsigned int k, float smoothing)
{
    cross_entropy_forward_t(logits, labels, loss, n, k, smoothing);
}
extern "C" __global__ void cross_entropy_forward_f64(const double* logits, const unsigned int* labels, double* loss,
                                                     unsigned int n, unsigned int k, double smoothing)
{
    cross_entropy_forward_t(logits, labels, loss, n, k, smoothing);
}

// cross_entropy_backward: ONE THREAD computes the K gradients of ONE ROW n:
//   dlogits[n,k] = (exp(z[n,k] - lse) - q_k) * scale,   q_k = (1 - s)[k == y_n] + s/K
// with scale = dloss[0] * inv_n = dL_up / N for the batch-mean loss. Overwrites dlogits (no +=).
template <typename T>
__device__ void cross_entropy_backward_t(
    const T* logits,              // [n, k]
    const unsigned int* labels,   // [n]
    T* dlogits,                   // [n, k] output
    unsigned int n,               // rows (batch size)
    unsigned int k,               // classes
    T smoothing,                  // s in [0, 1]
    const T* dloss,               // [1] upstream gradient dL_up
    T inv_n)                      // 1 / n
{
    const T scale = dloss[0] * inv_n;
    const unsigned int stride = blockDim.x * gridDim.x;
    for (unsigned int row = blockIdx.x * blockDim.x + threadIdx.x; row < n; row += stride) {
        const T* z = logits + (unsigned long long)row * k;
        T* dz = dlogits + (unsigned long long)row * k;
        const unsigned int y = labels[row];
        if (y >= k) {
            for (unsigned int j = 0; j < k; ++j) {
                dz[j] = nan_t(T(0));  // NaN: invalid label
            }
            continue;
        }
        const T lse = row_lse(z, k);
        const T off = smoothing / (T)k;
        for (unsigned int j = 0; j < k; ++j) {
            const T q = (j == y ? T(1) - smoothing : T(0)) + off;
            dz[j] = (exp_t(z[j] - lse) - q) * scale;
        }
    }
}
extern "C" __global__ void cross_entropy_backward(const float* logits, const unsigned int* labels, float* dlogits,
                                                  unsigned int n, unsigned int k, float smoothing,
                                                  const float* dloss, float inv_n)
{
    cross_entropy_backward_t(logits, labels, dlogits, n, k, smoothing, dloss, inv_n);
}
extern "C" __global__ void cross_entropy_backward_f64(const double* logits, const unsigned int* labels, double* dlogits,
                                                      unsigned int n, unsigned int k, double smoothing,
                                                      const double* dloss, double inv_n)
{
    cross_entropy_backward_t(logits, labels, dlogits, n, k, smoothing, dloss, inv_n);
}
