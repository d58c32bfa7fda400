// Lets g++ compile the CUDA sources in kernels/ unchanged and run them on the CPU, so CI
// without a GPU exercises their arithmetic, indexing and synchronisation.
//
// Model: a launch runs its blocks one after another; the threads of a block are real
// std::threads (one pool per launch, reused for every block) that meet at a std::barrier for
// __syncthreads().  Because only one block is alive at a time, `__shared__` can simply be
// `static`: one copy shared by the block's threads.  threadIdx/blockIdx are thread_local.
// Not modelled: warps (kernels must not rely on warp-synchronous code, and do not), memory
// spaces, concurrency between blocks (atomics are still real atomics).
//
// cp.async (kernels/async_copy.cuh) is modelled strictly: a copy is only queued when issued
// and is carried out when a cp_async_wait<N> retires its group, reading global memory then;
// misaligned addresses and copies still in flight when a block ends abort the run, as the
// hardware would fault or the kernel would read stale shared memory.
//
// TF32 wmma (kernels/tensor_core.cuh) is emulated with fragments holding the whole tile in
// every thread, TF32 rounding as cvt.rna does it, and stores shared by the warp's lanes.
//
// Denormals: CuPy compiles every kernel with -ftz=true, so float32 denormal inputs and results
// are zero on the GPU.  With COMPAT_FLUSH_DENORMALS (set by tests/kernels/harness.py from that
// option) each thread running a kernel sets the CPU's flush-to-zero and denormals-are-zero
// modes (x86 MXCSR FTZ|DAZ, AArch64 FPCR.FZ).  The CPU flag also flushes float64, which the GPU
// does not; a float64 denormal (below 2.2e-308) does not arise in the tests' data, and a test
// that compared one would see 0 against ~1e-308.  Contraction of a*b+c into one FMA (NVRTC's
// default -fmad=true) is not modelled: g++ rounds the product, so results may differ from the
// GPU's in the last bit, within the tests' tolerances.
#ifndef GPUMLP_CUDA_HOST_COMPAT_H
#define GPUMLP_CUDA_HOST_COMPAT_H
#define GPUMLP_HOST_COMPAT 1

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

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
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { compat_block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// Vector types with CUDA's alignment (a misaligned vector access faults on a GPU).
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

// ld.global.cg: read around L1.  The host has one coherent memory: a plain read.
template <typename T>
inline T __ldcg(const T* p)
{
    return *p;
}

[[noreturn]] inline void compat_fault(const char* what)
{
    std::fprintf(stderr, "cuda_host_compat: %s\n", what);
    std::abort();
}

// ---- cp.async: copies queued per thread, performed group by group at cp_async_wait.
struct CompatAsyncCopy {
    void* dst;
    const void* src;
    int bytes, src_bytes;
};
inline thread_local std::vector<CompatAsyncCopy> compat_async_open;  // not yet committed
inline thread_local std::deque<std::vector<CompatAsyncCopy>> compat_async_groups;

template <int BYTES>
inline void cp_async(void* smem, const void* gmem, int src_bytes)
{
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
    if ((unsigned long long)smem % BYTES != 0 || (unsigned long long)gmem % BYTES != 0)
        compat_fault("misaligned cp.async address");
    if (src_bytes < 0 || src_bytes > BYTES) compat_fault("cp.async src-size out of range");
    compat_async_open.push_back(CompatAsyncCopy{smem, gmem, BYTES, src_bytes});
}

inline void cp_async_commit()
{
    compat_async_groups.push_back(std::move(compat_async_open));
    compat_async_open.clear();
}

template <int N>
inline void cp_async_wait()
{
    while (compat_async_groups.size() > (std::size_t)N) {
        for (const CompatAsyncCopy& c : compat_async_groups.front()) {
            std::memset(c.dst, 0, c.bytes);
            std::memcpy(c.dst, c.src, c.src_bytes);
        }
        compat_async_groups.pop_front();
    }
}

inline void compat_check_no_async_in_flight()
{
    if (!compat_async_open.empty() || !compat_async_groups.empty())
        compat_fault("cp.async copies still in flight at the end of a block");
}

// ---- TF32 tensor cores (kernels/tensor_core.cuh).  A wmma fragment's layout over the lanes
// is unspecified, so here a fragment holds the whole tile in every thread: each lane loads the
// full tile, multiplies it on its own copy, and the lanes of a warp share the store (lane l
// writes elements l, l + 32, ...), so a lane that skips a store leaves a hole a test sees.
// Loads check the 32-byte alignment and the leading dimension the hardware requires.
// Rounding is cvt.rna.tf32.f32: to nearest, ties away from zero, 10 mantissa bits kept;
// infinities and NaN pass unchanged.
inline float compat_tf32(float v)
{
    unsigned int u;
    std::memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) {
        u += 0x1000u;  // half of the lowest kept bit, added to the magnitude: ties away
        u &= 0xffffe000u;
    }
    std::memcpy(&v, &u, 4);
    return v;
}

inline void compat_wmma_check(const float* p, int ld)
{
    if ((unsigned long long)p % 32 != 0) compat_fault("wmma pointer not 32-byte aligned");
    if (ld % 4 != 0 || ld < 16) compat_fault("wmma leading dimension not a multiple of 4 (>= 16)");
}

namespace tc {
struct FragA {
    float x[16 * 8];  // (m, k) at x[m * 8 + k]
};
struct FragB {
    float x[8 * 16];  // (k, n) at x[k * 16 + n]
};
struct FragC {
    float x[16 * 16];  // (m, n) at x[m * 16 + n]
};
inline void fill_zero(FragC& c)
{
    for (float& v : c.x) v = 0.0f;
}
inline void load_a_tf32(FragA& a, const float* p, int ld)
{
    compat_wmma_check(p, ld);
    for (int m = 0; m < 16; ++m)
        for (int k = 0; k < 8; ++k) a.x[m * 8 + k] = compat_tf32(p[k * ld + m]);
}
inline void load_b_tf32(FragB& b, const float* p, int ld)
{
    compat_wmma_check(p, ld);
    for (int k = 0; k < 8; ++k)
        for (int n = 0; n < 16; ++n) b.x[k * 16 + n] = compat_tf32(p[k * ld + n]);
}
inline void mma(FragC& c, const FragA& a, const FragB& b)
{
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 16; ++n) {
            float sum = c.x[m * 16 + n];
            for (int k = 0; k < 8; ++k) sum = std::fma(a.x[m * 8 + k], b.x[k * 16 + n], sum);
            c.x[m * 16 + n] = sum;
        }
}
inline void store_c(float* p, const FragC& c, int ld)
{
    compat_wmma_check(p, ld);
    for (int e = (int)(threadIdx.x % 32); e < 256; e += 32) p[(e / 16) * ld + e % 16] = c.x[e];
}
}  // namespace tc

inline unsigned int __umulhi(unsigned int a, unsigned int b)
{
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}

template <typename T>
inline T atomicAdd(T* address, T value)
{
    return std::atomic_ref<T>(*address).fetch_add(value);
}

// Flush denormals to zero on this thread, as a kernel compiled with -ftz=true does.
inline void compat_flush_denormals()
{
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(_mm_getcsr() | 0x8040u);  // FTZ (bit 15): results; DAZ (bit 6): inputs
#elif defined(__aarch64__)
    unsigned long fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr | (1ul << 24)));  // FZ
#else
#error "cuda_host_compat.h: no flush-to-zero mode known for this CPU (needed for -ftz=true)"
#endif
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
#if COMPAT_FLUSH_DENORMALS
            compat_flush_denormals();  // a fresh thread: the caller's mode is untouched
#endif
            threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        blockIdx = dim3{bx, by, bz};
                        kernel(args...);
                        compat_check_no_async_in_flight();
                        barrier.arrive_and_wait();  // the next block reuses __shared__ storage
                    }
        });
    }
    for (auto& thread : pool) thread.join();
    compat_block_barrier = nullptr;
}

#endif
