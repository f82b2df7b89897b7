// Elementwise kernels over n elements (flat buffers; shapes are the caller's
// business), each in f32 (training) and f64 (`_f64`: gradient checks on the GPU),
// written once as a template. Each kernel is a grid-stride loop: ONE THREAD computes
// element i, then i + gridDim.x*blockDim.x, ... so any grid/block shape covers
// all n elements. Output buffers may alias inputs of the same index (in-place
// use is fine) because each element is read and written by the same thread.
//
// Every result is one IEEE operation on its inputs (no contraction is possible), or,
// in ema_update, three written with round-to-nearest intrinsics (no contraction either),
// so it equals the CPU reference bit for bit.

// The loop index is 64-bit so that i + stride cannot wrap around near 2^32.
#define GRID_STRIDE_LOOP(i, n) \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (unsigned long long)(n); i += (unsigned long long)blockDim.x * gridDim.x)

// relu_forward: y[i] = x[i] > 0 ? x[i] : 0      (NaN -> 0, as the CPU reference)
template <typename T>
__device__ void relu_forward_t(const T* x, T* y, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        const T v = x[i];
        y[i] = v > T(0) ? v : T(0);
    }
}
extern "C" __global__ void relu_forward(const float* x, float* y, unsigned int n) { relu_forward_t(x, y, n); }
extern "C" __global__ void relu_forward_f64(const double* x, double* y, unsigned int n) { relu_forward_t(x, y, n); }

// relu_backward: dx[i] = y[i] > 0 ? dy[i] : 0    (y is the forward OUTPUT;
// y > 0 exactly where x > 0). Overwrites dx (no +=).
template <typename T>
__device__ void relu_backward_t(const T* y, const T* dy, T* dx, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        dx[i] = y[i] > T(0) ? dy[i] : T(0);
    }
}
extern "C" __global__ void relu_backward(const float* y, const float* dy, float* dx, unsigned int n) { relu_backward_t(y, dy, dx, n); }
extern "C" __global__ void relu_backward_f64(const double* y, const double* dy, double* dx, unsigned int n) { relu_backward_t(y, dy, dx, n); }

// add: y[i] = a[i] + b[i]
template <typename T>
__device__ void add_t(const T* a, const T* b, T* y, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = a[i] + b[i];
    }
}
extern "C" __global__ void add(const float* a, const float* b, float* y, unsigned int n) { add_t(a, b, y, n); }
extern "C" __global__ void add_f64(const double* a, const double* b, double* y, unsigned int n) { add_t(a, b, y, n); }

// scale: y[i] = alpha * x[i]
template <typename T>
__device__ void scale_t(const T* x, T* y, unsigned int n, T alpha)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = alpha * x[i];
    }
}
extern "C" __global__ void scale(const float* x, float* y, unsigned int n, float alpha) { scale_t(x, y, n, alpha); }
extern "C" __global__ void scale_f64(const double* x, double* y, unsigned int n, double alpha) { scale_t(x, y, n, alpha); }

// accumulate: a[i] += b[i]   (gradient accumulation on the tape)
template <typename T>
__device__ void accumulate_t(T* a, const T* b, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        a[i] = a[i] + b[i];
    }
}
extern "C" __global__ void accumulate(float* a, const float* b, unsigned int n) { accumulate_t(a, b, n); }
extern "C" __global__ void accumulate_f64(double* a, const double* b, unsigned int n) { accumulate_t(a, b, n); }

// ema_update: avg[i] = keep * avg[i] + take * x[i]   (keep = rho, take = 1 - rho, from the
// caller: the moving average of the weights, ops/src/ema.rs). Three operations, each written
// with a round-to-nearest intrinsic so that the compiler cannot fuse a multiply and the add:
// the same bits as the CPU reference, which rounds each of the three in T.
extern "C" __global__ void ema_update(float* avg, const float* x, unsigned int n, float keep, float take)
{
    GRID_STRIDE_LOOP(i, n) {
        avg[i] = __fadd_rn(__fmul_rn(keep, avg[i]), __fmul_rn(take, x[i]));
    }
}
extern "C" __global__ void ema_update_f64(double* avg, const double* x, unsigned int n, double keep, double take)
{
    GRID_STRIDE_LOOP(i, n) {
        avg[i] = __dadd_rn(__dmul_rn(keep, avg[i]), __dmul_rn(take, x[i]));
    }
}
