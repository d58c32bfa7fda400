// Tiled shared-memory GEMM core shared by the three fused GEMM kernels.
//
// Why own a GEMM at all: CuPy refuses cuBLAS calls during CUDA-graph capture, and a training
// step made only of our kernels can be captured once and replayed (DESIGN.md section 5).
//
// Tile shape: a 64x64 output tile per block of 256 threads, each thread holding a 4x4
// register block, K streamed through shared memory 16 at a time.  4x4 register blocking
// halves the shared-memory loads per FMA compared with 2x2 (8 loads per 16 FMAs), a 64x64
// tile keeps the two staging buffers at 8.3 KB (float) / 16.6 KB (double) so several blocks
// fit per SM, and BK=16 gives 16 k-steps between the two barriers of each stage.  Each thread
// owns rows ty + 16 i and columns tx + 16 j (strided, not a contiguous 4x4 patch): the 16
// threads of a half-warp then read 16 consecutive shared words of B (no bank conflicts), read
// one broadcast word of A, and store 16 consecutive output columns (coalesced), with no
// vector loads, so the same code runs for float and double and on the CPU test layer.
// This is a portable baseline, not cuBLAS-class: no double buffering, no tensor cores.
#ifndef GPUMLP_GEMM_TILE_CUH
#define GPUMLP_GEMM_TILE_CUH

#include "common.cuh"

#define GPUMLP_GEMM_BM 64
#define GPUMLP_GEMM_BN 64
#define GPUMLP_GEMM_BK 16
#define GPUMLP_GEMM_THREADS 256

namespace gemm {

constexpr int BM = GPUMLP_GEMM_BM, BN = GPUMLP_GEMM_BN, BK = GPUMLP_GEMM_BK;
constexpr int THREADS = GPUMLP_GEMM_THREADS;
constexpr int TX = 16, TY = THREADS / TX;  // thread grid over the output tile
constexpr int TM = BM / TY, TN = BN / TX;  // register block per thread (4 x 4)
constexpr int PAD = 1;                     // breaks bank conflicts of the transposing stores
static_assert(TM * TY == BM && TN * TX == BN, "tile must divide evenly among threads");

// Stage a BK x W slice of an operand into S[kk][w], zero-filling outside the matrix so
// partial tiles need no special case in the inner loop.  Element (k, w) of the operand is
// p[w * ld + k] when K_CONTIG (k varies fastest in memory) else p[k * ld + w]; consecutive
// threads walk the contiguous dimension so global loads coalesce either way.
template <typename T, int W, bool K_CONTIG>
__device__ __forceinline__ void stage(T (*S)[W + PAD], const T* p, long long ld,
                                      long long w0, long long w_end, long long k0,
                                      long long k_end, int tid)
{
    for (int e = tid; e < BK * W; e += THREADS) {
        const int kk = K_CONTIG ? e % BK : e / W;
        const int w = K_CONTIG ? e / BK : e % W;
        const long long gw = w0 + w, gk = k0 + kk;
        T value = T(0);
        if (gw < w_end && gk < k_end) value = K_CONTIG ? p[gw * ld + gk] : p[gk * ld + gw];
        S[kk][w] = value;
    }
}

// acc += opA[row0:row0+BM, :] @ opB[:, col0:col0+BN] over the whole K dimension, where
// opA is M x K (element (r, k) at a[r*lda + k] if A_K_CONTIG else a[k*lda + r]) and
// opB is K x N (element (k, c) at b[c*ldb + k] if B_K_CONTIG else b[k*ldb + c]).
// With b_col_sum non-null, threads tid < BN also add column tid of opB (over all K) to it:
// the weight-gradient kernel gets the bias gradient from the H tiles it already staged.
// Every thread of the block must call this (it synchronises).
template <typename T, bool A_K_CONTIG, bool B_K_CONTIG>
__device__ __forceinline__ void multiply_tile(T (&acc)[TM][TN], const T* a, long long lda,
                                              const T* b, long long ldb, long long M,
                                              long long N, long long K, long long row0,
                                              long long col0, T* b_col_sum)
{
    __shared__ T As[BK][BM + PAD];
    __shared__ T Bs[BK][BN + PAD];
    const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
    for (long long k0 = 0; k0 < K; k0 += BK) {
        stage<T, BM, A_K_CONTIG>(As, a, lda, row0, M, k0, K, tid);
        stage<T, BN, B_K_CONTIG>(Bs, b, ldb, col0, N, k0, K, tid);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T ra[TM], rb[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) ra[i] = As[kk][ty + i * TY];
#pragma unroll
            for (int j = 0; j < TN; ++j) rb[j] = Bs[kk][tx + j * TX];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += ra[i] * rb[j];
        }
        if (b_col_sum != nullptr && tid < BN) {
            for (int kk = 0; kk < BK; ++kk) *b_col_sum += Bs[kk][tid];
        }
        __syncthreads();  // the next stage overwrites As/Bs
    }
}

}  // namespace gemm

#endif
