// Asynchronous global -> shared copies (cp.async, sm_80+) behind three small functions, so the
// GEMM main loop has one code path on every target:
//
//   cp_async<BYTES>(smem, gmem, src_bytes)  copy BYTES (4, 8 or 16), taking src_bytes of them
//                                           from gmem and zero-filling the rest (0 = all zeros)
//   cp_async_commit()                       close the group of copies issued since the last one
//   cp_async_wait<N>()                      wait until at most N groups are still in flight
//
// sm_80 and later: the PTX instructions (16-byte copies bypass L1 with .cg; 4/8-byte copies
// must use .ca).  Older GPUs: plain synchronous loads and stores (the same results, without
// the overlap).  The CPU harness (tests/kernels/cuda_host_compat.h defines
// GPUMLP_HOST_COMPAT) provides its own versions that defer each copy until the wait, so a
// kernel that reads a stage before waiting for it computes garbage in CI too.
#ifndef GPUMLP_ASYNC_COPY_CUH
#define GPUMLP_ASYNC_COPY_CUH

#if !defined(GPUMLP_HOST_COMPAT)

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem, int src_bytes)
{
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
    const unsigned int s = (unsigned int)__cvta_generic_to_shared(smem);
    if constexpr (BYTES == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                     "r"(src_bytes));
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gmem),
                     "n"(BYTES), "r"(src_bytes));
    }
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#else  // before sm_80 (and the host pass of nvcc): synchronous copies

template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem, int src_bytes)
{
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
    // Word by word: src_bytes is a multiple of the element size the callers use (4 or 8).
    unsigned int* d = (unsigned int*)smem;
    const unsigned int* s = (const unsigned int*)gmem;
    for (int i = 0; i < BYTES / 4; ++i) d[i] = 4 * i < src_bytes ? s[i] : 0u;
}

__device__ __forceinline__ void cp_async_commit() {}

template <int N>
__device__ __forceinline__ void cp_async_wait()
{
}

#endif
#endif  // GPUMLP_HOST_COMPAT
#endif
