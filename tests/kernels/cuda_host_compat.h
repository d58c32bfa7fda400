// Lets g++ compile the CUDA sources in kernels/ unchanged and run them on the CPU, so CI
// without a GPU exercises their arithmetic, indexing and synchronisation.
//
// Model: a launch runs its blocks one after another; the threads of a block are real
// std::threads (one pool per launch, reused for every block) that meet at a std::barrier for
// __syncthreads().  Because only one block is alive at a time, `__shared__` can simply be
// `static`: one copy shared by the block's threads.  threadIdx/blockIdx are thread_local.
// Not modelled: warps (kernels must not rely on warp-synchronous code, and do not), memory
// spaces, concurrency between blocks (atomics are still real atomics).
#ifndef GPUMLP_CUDA_HOST_COMPAT_H
#define GPUMLP_CUDA_HOST_COMPAT_H

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* compat_block_barrier = nullptr;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

inline void __syncthreads() { compat_block_barrier->arrive_and_wait(); }

inline unsigned int __umulhi(unsigned int a, unsigned int b)
{
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}

template <typename T>
inline T atomicAdd(T* address, T value)
{
    return std::atomic_ref<T>(*address).fetch_add(value);
}

// Run kernel<<<grid, block>>>(args...) to completion.
template <typename... P, typename... A>
void compat_launch(dim3 grid, dim3 block, void (*kernel)(P...), A... args)
{
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || grid.x * grid.y * grid.z == 0) {
        std::fprintf(stderr, "compat_launch: invalid launch geometry\n");
        std::abort();
    }
    gridDim = grid;
    blockDim = block;
    std::barrier<> barrier(threads);
    compat_block_barrier = &barrier;
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        blockIdx = dim3{bx, by, bz};
                        kernel(args...);
                        barrier.arrive_and_wait();  // the next block reuses __shared__ storage
                    }
        });
    }
    for (auto& thread : pool) thread.join();
    compat_block_barrier = nullptr;
}

#endif
