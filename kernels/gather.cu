// Minibatch gather on the device, so a captured CUDA graph can form each batch itself.
// Launch: block (256, 1, 1), grid min(ceil(rows * cols / 256), 65535).
#include "common.cuh"

// out[i, :] = src[perm[start[0] + i], :] for i < rows (start may be null: 0).
// src has cols columns and any number of rows; perm holds row indices into src.
template <typename T>
__global__ void gather_rows(T* out, const T* src, const long long* perm,
                            const long long* start, long long rows, long long cols)
{
    const long long first = start ? start[0] : 0LL, size = rows * cols;
    for (long long i = global_thread_id(); i < size; i += grid_threads()) {
        const long long r = i / cols;
        out[i] = src[perm[first + r] * cols + (i - r * cols)];
    }
}
