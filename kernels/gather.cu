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

// One launch forms a captured step's batch and moves the step on: xb[i, :] = x[perm[s + i], :]
// and tb[i, :] = t[perm[s + i], :] for i < rows, with s = start[0]; then the last block to
// finish sets start = s + rows, counter_base += counters_per_step and step += 1 (what the
// advance_step kernel did as a node of its own).  Every block reads start before it counts
// itself in blocks_done, so the last block writes it after all reads; it also puts
// blocks_done back to 0 for the next launch.  Later kernels of the step read the advanced
// counter_base and step (their captured offsets allow for it).
template <typename T>
__global__ void gather_batch(T* xb, T* tb, const T* x, const T* t, const long long* perm,
                             long long* start, long long rows, long long x_cols,
                             long long t_cols, long long* counter_base,
                             long long counters_per_step, int* step, int* blocks_done)
{
    const long long first = start[0], x_size = rows * x_cols, size = x_size + rows * t_cols;
    for (long long i = global_thread_id(); i < size; i += grid_threads()) {
        if (i < x_size) {
            const long long r = i / x_cols;
            xb[i] = x[perm[first + r] * x_cols + (i - r * x_cols)];
        } else {
            const long long j = i - x_size, r = j / t_cols;
            tb[j] = t[perm[first + r] * t_cols + (j - r * t_cols)];
        }
    }
    __shared__ bool last_block;
    __syncthreads();  // every thread of this block has read start
    if (threadIdx.x == 0) {
        __threadfence();
        last_block = atomicAdd(blocks_done, 1) == int(gridDim.x) - 1;
    }
    __syncthreads();
    if (last_block && threadIdx.x == 0) {
        start[0] = first + rows;
        counter_base[0] += counters_per_step;
        step[0] += 1;
        blocks_done[0] = 0;
    }
}
