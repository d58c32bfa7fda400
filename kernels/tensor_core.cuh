// TF32 tensor-core matrix operations (sm_80+) for the TF32 GEMM tile of gemm_tile.cuh: warp-wide
// wmma on 16 x 16 x 8 tiles, written as the PTX wmma instructions so that no CUDA header is
// needed (NVRTC has no include path for <mma.h> unless given the toolkit's).  The same five
// functions as nvcuda::wmma, with the TF32 rounding of the inputs folded into the loads:
//
//   tc::FragA / FragB / FragC       a 16x8 tile of A, an 8x16 tile of B, a 16x16 accumulator
//   tc::fill_zero(c)                c = 0
//   tc::load_a_tf32(a, p, ld)       A (16 x 8): element (m, k) at p[k * ld + m] (column-major,
//                                   as the k-major shared tiles hold it), rounded to TF32
//   tc::load_b_tf32(b, p, ld)       B (8 x 16): element (k, n) at p[k * ld + n] (row-major), rounded
//   tc::mma(c, a, b)                c += a @ b  (TF32 products, FP32 accumulation)
//   tc::store_c(p, c, ld)           C (16 x 16) to p[m * ld + n] (row-major)
//
// Every lane of a warp must call each of them with the same arguments (warp-synchronous).
// Pointers are to shared memory (the .shared state space is used), 32-byte aligned; ld is a
// multiple of 4 elements.  How a
// fragment's elements are spread over the lanes is unspecified (as in wmma), so callers
// never index fragments: they store the accumulator to shared memory and read it back.
//
// Rounding: cvt.rna.tf32.f32, round to nearest with ties away from zero to 10 mantissa bits
// (the tensor cores otherwise ignore the low 13 bits).  The CPU harness
// (tests/kernels/cuda_host_compat.h, GPUMLP_HOST_COMPAT) provides its own versions in which a
// fragment holds the whole tile in every thread and rounds the same way.
#ifndef GPUMLP_TENSOR_CORE_CUH
#define GPUMLP_TENSOR_CORE_CUH

#if !defined(GPUMLP_HOST_COMPAT)

namespace tc {

struct FragA {
    unsigned int x[4];
};
struct FragB {
    unsigned int x[4];
};
struct FragC {
    float x[8];
};

__device__ __forceinline__ void fill_zero(FragC& c)
{
#pragma unroll
    for (int i = 0; i < 8; ++i) c.x[i] = 0.0f;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

// The .shared state space with 32-bit addresses: LDS/STS, no 64-bit generic address maths.
__device__ __forceinline__ unsigned int shared_address(const float* p)
{
    return (unsigned int)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ unsigned int to_tf32(unsigned int bits)
{
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(bits)));
    return r;
}

__device__ __forceinline__ void load_a_tf32(FragA& a, const float* p, int ld)
{
    asm volatile("wmma.load.a.sync.aligned.col.m16n16k8.shared.tf32 {%0, %1, %2, %3}, [%4], %5;\n"
                 : "=r"(a.x[0]), "=r"(a.x[1]), "=r"(a.x[2]), "=r"(a.x[3])
                 : "r"(shared_address(p)), "r"(ld)
                 : "memory");  // reads shared memory: not moved across other accesses
#pragma unroll
    for (int i = 0; i < 4; ++i) a.x[i] = to_tf32(a.x[i]);
}

__device__ __forceinline__ void load_b_tf32(FragB& b, const float* p, int ld)
{
    asm volatile("wmma.load.b.sync.aligned.row.m16n16k8.shared.tf32 {%0, %1, %2, %3}, [%4], %5;\n"
                 : "=r"(b.x[0]), "=r"(b.x[1]), "=r"(b.x[2]), "=r"(b.x[3])
                 : "r"(shared_address(p)), "r"(ld)
                 : "memory");
#pragma unroll
    for (int i = 0; i < 4; ++i) b.x[i] = to_tf32(b.x[i]);
}

__device__ __forceinline__ void mma(FragC& c, const FragA& a, const FragB& b)
{
    asm volatile(
        "wmma.mma.sync.aligned.col.row.m16n16k8.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, {%12, %13, %14, %15}, "
        "{%0, %1, %2, %3, %4, %5, %6, %7};\n"
        : "+f"(c.x[0]), "+f"(c.x[1]), "+f"(c.x[2]), "+f"(c.x[3]), "+f"(c.x[4]), "+f"(c.x[5]),
          "+f"(c.x[6]), "+f"(c.x[7])
        : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]),
          "r"(b.x[2]), "r"(b.x[3]));
}

__device__ __forceinline__ void store_c(float* p, const FragC& c, int ld)
{
    asm volatile(
        "wmma.store.d.sync.aligned.row.m16n16k8.shared.f32 [%0], {%1, %2, %3, %4, %5, %6, "
        "%7, %8}, %9;\n" ::"r"(shared_address(p)), "f"(c.x[0]), "f"(c.x[1]), "f"(c.x[2]), "f"(c.x[3]), "f"(c.x[4]), "f"(c.x[5]),
        "f"(c.x[6]), "f"(c.x[7]), "r"(ld)
        : "memory");
}

#else  // before sm_80 (and nvcc's host pass): no TF32 tensor cores; never launched there

__device__ __forceinline__ void load_a_tf32(FragA&, const float*, int) { __trap(); }
__device__ __forceinline__ void load_b_tf32(FragB&, const float*, int) { __trap(); }
__device__ __forceinline__ void mma(FragC&, const FragA&, const FragB&) { __trap(); }
__device__ __forceinline__ void store_c(float*, const FragC&, int) { __trap(); }

#endif
}  // namespace tc

#endif  // GPUMLP_HOST_COMPAT
#endif
