// Batch assembly on the GPU: gather records from the u8 training (or test) set
// resident on the device, apply RandomCrop(32, padding=4, reflect) ->
// horizontal flip -> Cutout(8x8) and normalise, writing an f32 batch
// [N, 3, 32, 32] (NCHW) and the labels [N].
//
// The dataset buffer `data` is the raw CIFAR-10 binary files concatenated:
// records of 3073 bytes, 1 label byte then 3072 pixel bytes in CHW order
// (1024 R, 1024 G, 1024 B, each 32x32 row-major). Record `idx[i]` becomes
// batch image i.
//
// Arithmetic is written with the IEEE round-to-nearest intrinsics so that the
// result is bit-identical to the CPU reference computing, in f32,
//     v = ((float)pixel / 255.0f - mean[c]) / std[c]
// in exactly that order (no FMA contraction, no reciprocal approximation).
// Compile without --use_fast_math / --ftz=true (NVRTC's defaults are fine).

// Reflection padding of width 4 seen from the padded 40x40 image, mapped back
// to the 32x32 original: -1 -> 1, -4 -> 4, 32 -> 30, 35 -> 27 (PyTorch's
// padding_mode="reflect", which does not repeat the edge pixel).
__device__ __forceinline__ int reflect32(int i)
{
    return i < 0 ? -i : (i > 31 ? 62 - i : i);
}

// Normalise one pixel byte of channel c: ((p / 255) - mean) / std, each step
// rounded to nearest f32.
__device__ __forceinline__ float normalize_pixel(unsigned char p, float mean, float sd)
{
    return __fdiv_rn(__fsub_rn(__fdiv_rn((float)p, 255.0f), mean), sd);
}

// Select the channel's mean or std from three by-value arguments.
__device__ __forceinline__ float pick3(int c, float a, float b, float d)
{
    return c == 0 ? a : (c == 1 ? b : d);
}

// augment_batch: ONE THREAD computes ONE output element out[i, c, y, x]
// (grid-stride loop over n * 3072 elements; any grid/block shape works).
// The thread with (c, y, x) == (0, 0, 0) also writes labels[i].
//
//   img  = data + idx[i] * 3073 + 1          (the record's pixels)
//   crop_x, crop_y, flip, cutout_x, cutout_y = params[5*i .. 5*i+5]
//       crop_x, crop_y in 0..=8   (top-left corner of the 32x32 crop in the
//                                   40x40 reflect-padded image)
//       flip in {0, 1}            (1: mirror horizontally after the crop)
//       cutout_x, cutout_y        (centre of the 8x8 zeroed square, in output
//                                   coordinates; may lie partly outside)
//   sx = flip ? 31 - x : x
//   py = y + crop_y;  px = sx + crop_x           (coordinates in padded image)
//   r  = reflect32(py - 4);  q = reflect32(px - 4)  (coordinates in original)
//   v  = ((float)img[c*1024 + r*32 + q] / 255 - mean_c) / std_c
//   if (cutout_y - 4 <= y < cutout_y + 4 and cutout_x - 4 <= x < cutout_x + 4) v = 0
//   out[((i*3 + c)*32 + y)*32 + x] = v
//   labels[i] = data[idx[i] * 3073]
extern "C" __global__ void augment_batch(
    const unsigned char* data,   // the whole split, records of 3073 bytes
    const unsigned int* idx,     // [n] record indices of this batch
    const int* params,           // [n * 5] crop_x, crop_y, flip, cutout_x, cutout_y
    float* out,                  // [n, 3, 32, 32]
    unsigned int* labels,        // [n]
    unsigned int n,              // images in the batch
    float mean0, float mean1, float mean2,
    float std0, float std1, float std2)
{
    const unsigned long long total = (unsigned long long)n * 3072ULL;
    const unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const unsigned int i = (unsigned int)(e / 3072ULL);
        const int within = (int)(e % 3072ULL);
        const int c = within / 1024;
        const int y = (within / 32) % 32;
        const int x = within % 32;

        const unsigned char* rec = data + (unsigned long long)idx[i] * 3073ULL;
        const int* prm = params + 5ULL * i;
        const int crop_x = prm[0], crop_y = prm[1], flip = prm[2];
        const int cutout_x = prm[3], cutout_y = prm[4];

        const int sx = flip ? 31 - x : x;
        const int py = y + crop_y;
        const int px = sx + crop_x;
        const int r = reflect32(py - 4);
        const int q = reflect32(px - 4);

        float v = normalize_pixel(rec[1 + c * 1024 + r * 32 + q],
                                  pick3(c, mean0, mean1, mean2), pick3(c, std0, std1, std2));
        if (cutout_y - 4 <= y && y < cutout_y + 4 && cutout_x - 4 <= x && x < cutout_x + 4) {
            v = 0.0f;
        }
        out[e] = v;
        if (within == 0) {
            labels[i] = (unsigned int)rec[0];
        }
    }
}

// normalize_batch: the test-time path, no augmentation except an optional
// horizontal flip (for flip test-time augmentation). ONE THREAD computes ONE
// output element out[i, c, y, x] (grid-stride loop over n * 3072 elements);
// the thread with (c, y, x) == (0, 0, 0) also writes labels[i].
//
//   img = data + idx[i] * 3073 + 1
//   sx  = flip ? 31 - x : x
//   out[((i*3 + c)*32 + y)*32 + x] = ((float)img[c*1024 + y*32 + sx] / 255 - mean_c) / std_c
//   labels[i] = data[idx[i] * 3073]
//
// Same rounding as augment_batch: bit-identical to the CPU reference.
extern "C" __global__ void normalize_batch(
    const unsigned char* data,   // the whole split, records of 3073 bytes
    const unsigned int* idx,     // [n] record indices of this batch
    float* out,                  // [n, 3, 32, 32]
    unsigned int* labels,        // [n]
    unsigned int n,              // images in the batch
    unsigned int flip,           // 1: every image mirrored horizontally
    float mean0, float mean1, float mean2,
    float std0, float std1, float std2)
{
    const unsigned long long total = (unsigned long long)n * 3072ULL;
    const unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const unsigned int i = (unsigned int)(e / 3072ULL);
        const int within = (int)(e % 3072ULL);
        const int c = within / 1024;
        const int x = within % 32;
        const int src = flip ? within - x + (31 - x) : within;
        const unsigned char* rec = data + (unsigned long long)idx[i] * 3073ULL;
        out[e] = normalize_pixel(rec[1 + src], pick3(c, mean0, mean1, mean2), pick3(c, std0, std1, std2));
        if (within == 0) {
            labels[i] = (unsigned int)rec[0];
        }
    }
}
