// Shared helpers for every gpumlp kernel: dtype-generic math, grid-stride indexing and
// block reductions.  Portable CUDA C++ only (no warp shuffles, no cooperative groups), so
// tests/kernels/cuda_host_compat.h can run the same code on the CPU.
#ifndef GPUMLP_COMMON_CUH
#define GPUMLP_COMMON_CUH

// Block size of every 1-D kernel and the upper bound on threads per block of the row kernels;
// block reductions use one shared slot per thread.
#define GPUMLP_BLOCK 256

// Overloads instead of relying on CUDA's C++ math overloads, so float never silently goes
// through a double function (and the host build picks the same libm routine).
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }
__device__ __forceinline__ float m_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double m_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return fabs(x); }

// 64-bit grid-stride loop bounds: element counts may exceed 2^31.
__device__ __forceinline__ long long global_thread_id()
{
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long grid_threads()
{
    return (long long)gridDim.x * blockDim.x;
}

// Sum of v over every thread of the block (at most GPUMLP_BLOCK threads, any count); the
// result is valid in thread 0.  Shared-memory tree with __syncthreads: every thread must call.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red)
{
    const int tid = threadIdx.x + threadIdx.y * blockDim.x;
    const int count = blockDim.x * blockDim.y;
    red[tid] = v;
    __syncthreads();
    for (int s = GPUMLP_BLOCK / 2; s > 0; s >>= 1) {
        if (tid < s && tid + s < count) red[tid] += red[tid + s];
        __syncthreads();
    }
    const T total = red[0];
    __syncthreads();  // red may be reused right after
    return total;
}

#endif
