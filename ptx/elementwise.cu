// Elementwise kernels over n f32 elements (flat buffers; shapes are the
// caller's business). Each kernel is a grid-stride loop: ONE THREAD computes
// element i, then i + gridDim.x*blockDim.x, ... so any grid/block shape covers
// all n elements. Output buffers may alias inputs of the same index (in-place
// use is fine) because each element is read and written by the same thread.
//
// Every result is one IEEE f32 operation on its inputs (no contraction is
// possible), so it equals the CPU reference bit for bit.

// The loop index is 64-bit so that i + stride cannot wrap around near 2^32.
#define GRID_STRIDE_LOOP(i, n) \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (unsigned long long)(n); i += (unsigned long long)blockDim.x * gridDim.x)

// relu_forward: y[i] = x[i] > 0 ? x[i] : 0      (NaN -> 0, as the CPU reference)
extern "C" __global__ void relu_forward(const float* x, float* y, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

// relu_backward: dx[i] = y[i] > 0 ? dy[i] : 0    (y is the forward OUTPUT;
// y > 0 exactly where x > 0). Overwrites dx (no +=).
extern "C" __global__ void relu_backward(const float* y, const float* dy, float* dx, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}

// add: y[i] = a[i] + b[i]
extern "C" __global__ void add(const float* a, const float* b, float* y, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = a[i] + b[i];
    }
}

// add_relu: y[i] = relu(a[i] + b[i]) = s > 0 ? s : 0 with s = a[i] + b[i]
// (the residual join; its backward is relu_backward on y, passed to both a and b).
extern "C" __global__ void add_relu(const float* a, const float* b, float* y, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        const float s = a[i] + b[i];
        y[i] = s > 0.0f ? s : 0.0f;
    }
}

// scale: y[i] = alpha * x[i]
extern "C" __global__ void scale(const float* x, float* y, unsigned int n, float alpha)
{
    GRID_STRIDE_LOOP(i, n) {
        y[i] = alpha * x[i];
    }
}

// accumulate: a[i] += b[i]   (gradient accumulation on the tape)
extern "C" __global__ void accumulate(float* a, const float* b, unsigned int n)
{
    GRID_STRIDE_LOOP(i, n) {
        a[i] = a[i] + b[i];
    }
}
