// Tiled GEMM core shared by the three fused GEMM kernels of gemm.cu.
//
// Why own a GEMM at all: CuPy refuses cuBLAS calls during CUDA-graph capture, and a training
// step made only of our kernels can be captured once and replayed
// (gpumlp/backends/cuda/graphs.py).  It
// earns that place only by being fast, so the structure is the one of fast SGEMMs:
//
// * Register blocking: each thread owns TM x TN outputs as (TM/4) x (TN/4) quads of 4x4; the
//   quads of a thread are BM/(TM/4) rows and BN/(TN/4) columns apart, so the threads of a warp
//   read consecutive 16-byte words of shared memory (no bank conflicts) and write consecutive
//   16-byte words of the output.  Per k step a thread loads TM/4 + TN/4 vectors (LDS.128) from
//   shared memory for TM * TN FMAs: 4 loads per 64 FMAs at 8x8.
// * Shared memory holds both operands k-major (S[k][w], rows padded by 4 elements: 16-byte
//   aligned), whatever their layout in global memory, so the inner loop is the same for all
//   three GEMMs.  An operand contiguous along w is copied in 16-byte vectors; one contiguous
//   along k is transposed on the way in, element by element.
// * Double buffering with cp.async (async_copy.cuh): the copies of k-tile t+1 run while tile
//   t is multiplied; two barriers per tile.
// * Vector copies need a 16-byte aligned base and a leading dimension that is a multiple of
//   the vector: the kernels check both at run time (uniform branch) and otherwise copy element
//   by element, so unaligned user arrays stay correct.  Output quads are stored as 16-byte
//   vectors under the same condition on the output (and on the matrix the epilogue reads).
// * Dropout: a thread's output quad r*m + c .. +3 is one Philox group when m % 4 == 0 (one
//   Philox block per 4 outputs), else it straddles two groups and both are drawn.  Nothing
//   is indexed at run time, so no register array falls to local memory.
// * Split-K (gridDim.z > 1): the block of split z multiplies k-tiles [z * per, (z+1) * per),
//   writes its partial tile to a workspace, and the last block to arrive at the tile's
//   counter (a semaphore) adds the partials in the fixed order z = 0, 1, ... and runs the
//   epilogue once on the full sum: deterministic, one launch, capturable.  It resets the
//   counter, so the counters stay zero between launches and graph replays.
//
// Tiles (GPUMLP_GEMM_TILE_*): SQUARE 64x64 with 4x4 per thread, both dtypes (the float64
// kernels use only this one); LARGE 128x128 with 8x8 per thread (float32), compiled for one
// block per SM: capped at 128 registers for two, ptxas spills around the main loop; NARROW
// 64x16 with 4x4 per thread, 64 threads, for outputs about 10 wide; TF32 64x64 on tensor
// cores (float32 only, opt-in: precision="tf32"), 64 threads = 2 warps of 32x64, each warp
// 2x4 wmma tiles of 16x16x8 (tensor_core.cuh: 8 products per 6 fragment loads and
// roundings) fed from the same k-major shared tiles, the inputs rounded to TF32 as they are
// loaded into fragments.  Its accumulators are stored to a shared tile and read back into the
// 8x8 register block of the FP32 layout, so split-K and the epilogues are the same code for
// every tile.  The SASS counts are in
// benchmarks/README.md.  gpumlp/backends/cuda/kernels.py (GEMM_TILES) and
// gpumlp/backends/cuda/plan.py mirror the table; the plan chooses tile and split per shape.
#ifndef GPUMLP_GEMM_TILE_CUH
#define GPUMLP_GEMM_TILE_CUH

#include "async_copy.cuh"
#include "common.cuh"
#include "philox.cuh"
#include "tensor_core.cuh"

#define GPUMLP_GEMM_TILE_SQUARE 0
#define GPUMLP_GEMM_TILE_LARGE 1
#define GPUMLP_GEMM_TILE_NARROW 2
#define GPUMLP_GEMM_TILE_TF32 3

namespace gemm {

template <int BM_, int BN_, int BK_, int TM_, int TN_, int MIN_BLOCKS_>
struct ShapeOf {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
    static constexpr int TX = BN / TN, TY = BM / TM, THREADS = TX * TY;
    static constexpr int QM = TM / 4, QN = TN / 4;           // quads per thread
    static constexpr int QM_STEP = BM / QM, QN_STEP = BN / QN;  // distance between quads
    static constexpr int PAD = 4;  // 16-byte aligned rows; breaks conflicts of transposes
    static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
    static constexpr bool TF32 = false;  // tensor-core main loop (TF32 inputs)
    static_assert(TM % 4 == 0 && TN % 4 == 0, "register blocks are made of 4x4 quads");
    static_assert(TX * TN == BN && TY * TM == BM, "tile must divide evenly among threads");
};

template <int TILE>
struct Shape;
template <>
struct Shape<GPUMLP_GEMM_TILE_SQUARE> : ShapeOf<64, 64, 16, 4, 4, 2> {};
template <>
struct Shape<GPUMLP_GEMM_TILE_LARGE> : ShapeOf<128, 128, 16, 8, 8, 1> {};
template <>
struct Shape<GPUMLP_GEMM_TILE_NARROW> : ShapeOf<64, 16, 16, 4, 4, 8> {};
template <>
struct Shape<GPUMLP_GEMM_TILE_TF32> : ShapeOf<64, 64, 16, 8, 8, 4> {
    static constexpr bool TF32 = true;
    static constexpr int WARP_M = 32, WARP_N = 64;  // each warp's part of the tile
    static constexpr int WARPS_N = BN / WARP_N;
    static constexpr int FM = WARP_M / 16, FN = WARP_N / 16;  // 16x16 wmma tiles per warp
    static_assert((BM / WARP_M) * WARPS_N * 32 == THREADS, "one warp per warp tile");
    static_assert(BK % 8 == 0, "wmma k steps of 8");
};

// 4 consecutive elements of shared memory into registers: one LDS.128 for float, two for
// double.  The source is 16-byte aligned (PAD and the quad offsets are multiples of 4).
__device__ __forceinline__ void load4(float (&r)[4], const float* p)
{
    const float4 v = *reinterpret_cast<const float4*>(p);
    r[0] = v.x;
    r[1] = v.y;
    r[2] = v.z;
    r[3] = v.w;
}
__device__ __forceinline__ void load4(double (&r)[4], const double* p)
{
    const double2 u = reinterpret_cast<const double2*>(p)[0];
    const double2 v = reinterpret_cast<const double2*>(p)[1];
    r[0] = u.x;
    r[1] = u.y;
    r[2] = v.x;
    r[3] = v.y;
}
// 4 consecutive elements to global memory (16-byte aligned): STG.128 for float.
__device__ __forceinline__ void store4(float* p, const float (&r)[4])
{
    *reinterpret_cast<float4*>(p) = make_float4(r[0], r[1], r[2], r[3]);
}
__device__ __forceinline__ void store4(double* p, const double (&r)[4])
{
    reinterpret_cast<double2*>(p)[0] = make_double2(r[0], r[1]);
    reinterpret_cast<double2*>(p)[1] = make_double2(r[2], r[3]);
}
__device__ __forceinline__ void load4_global(float (&r)[4], const float* p)
{
    const float4 v = *reinterpret_cast<const float4*>(p);
    r[0] = v.x;
    r[1] = v.y;
    r[2] = v.z;
    r[3] = v.w;
}
__device__ __forceinline__ void load4_global(double (&r)[4], const double* p)
{
    load4(r, p);
}

// The accumulators of a warp on the TF32 tile: FM x FN wmma tiles, and the k-step that
// multiplies one stage of the shared tiles into them.  For FP32 shapes it is empty.
template <class S, bool = S::TF32>
struct WarpTiles {
    __device__ __forceinline__ void zero() {}
};
template <class S>
struct WarpTiles<S, true> {
    tc::FragC c[S::FM][S::FN];
    int row, col;  // the warp's first row and column in the block tile

    __device__ __forceinline__ void zero()
    {
        const int warp = threadIdx.x / 32;
        row = (warp / S::WARPS_N) * S::WARP_M;
        col = (warp % S::WARPS_N) * S::WARP_N;
#pragma unroll
        for (int i = 0; i < S::FM; ++i)
#pragma unroll
            for (int j = 0; j < S::FN; ++j) tc::fill_zero(c[i][j]);
    }

    // c += As[:, row:row+WARP_M]^T-slices @ Bs[:, col:col+WARP_N] over the BK rows of a stage.
    template <int LDA, int LDB>
    __device__ __forceinline__ void multiply(const float (*As)[LDA], const float (*Bs)[LDB])
    {
#pragma unroll
        for (int kk = 0; kk < S::BK; kk += 8) {
            tc::FragA a[S::FM];
            tc::FragB b[S::FN];
#pragma unroll
            for (int i = 0; i < S::FM; ++i) tc::load_a_tf32(a[i], &As[kk][row + 16 * i], LDA);
#pragma unroll
            for (int j = 0; j < S::FN; ++j) tc::load_b_tf32(b[j], &Bs[kk][col + 16 * j], LDB);
#pragma unroll
            for (int i = 0; i < S::FM; ++i)
#pragma unroll
                for (int j = 0; j < S::FN; ++j) tc::mma(c[i][j], a[i], b[j]);
        }
    }

    // The warp tiles to Cs, then each thread's register block (the FP32 layout) from it.
    template <int LDC>
    __device__ __forceinline__ void to_registers(float (&acc)[S::TM][S::TN], float (*Cs)[LDC])
    {
#pragma unroll
        for (int i = 0; i < S::FM; ++i)
#pragma unroll
            for (int j = 0; j < S::FN; ++j)
                tc::store_c(&Cs[row + 16 * i][col + 16 * j], c[i][j], LDC);
        __syncthreads();
        const int tx = threadIdx.x % S::TX, ty = threadIdx.x / S::TX;
#pragma unroll
        for (int i = 0; i < S::TM; ++i)
#pragma unroll
            for (int q = 0; q < S::QN; ++q) {
                float v[4];
                load4(v, &Cs[ty * 4 + (i / 4) * S::QM_STEP + i % 4][tx * 4 + q * S::QN_STEP]);
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][4 * q + j] += v[j];
            }
        __syncthreads();  // Cs is free again for the next tile of a grid-stride loop
    }
};

// A k extent as an int: k-tile offsets within one launch stay far below 2^31 elements
// (the compare only needs to know whether a copy is in range).
__device__ __forceinline__ int clamp_int(long long v)
{
    return v > 0x7fffffffLL ? 0x7fffffff : (v < 0 ? 0 : (int)v);
}

// Copies of one operand into shared memory, tile after tile.  A loader is built once per
// output tile: everything that does not change along k (row validity, the valid bytes of a
// column vector, base pointers) is worked out there, so that staging a tile inside the main
// loop costs one pointer step and one compare per copy.  Slots outside the matrix are
// zero-filled (src-size 0: nothing is read), so partial tiles need no special case in the
// inner loop.  Element (k, w) of the operand is p[w * ld + k] when K_CONTIG, else
// p[k * ld + w]; the copy of slice [k0, k0 + BK) lands in S[kk][w].
//
// K_CONTIG: consecutive threads walk k (contiguous in memory); each element is copied on
// its own (transposed).  Otherwise each thread copies V = 16 bytes / sizeof(T) consecutive
// elements along w: one 16-byte copy when `vec` (base and leading dimension allow it), else
// V element copies with the same thread layout (unaligned user arrays).  The choice is a
// uniform branch, so one main loop serves both.
template <typename T, int W, int BK, int THREADS, int LD, bool K_CONTIG, int V>
struct Loader {
    static constexpr int E = sizeof(T);
    // K_CONTIG: each thread copies one k column of rows w_first + i * STEP.
    // Otherwise: each thread copies one w vector of slices kk_first + i * STEP.
    static constexpr int PER_LINE = K_CONTIG ? BK : W / V;  // threads along the contiguous dim
    static constexpr int STEP = THREADS / PER_LINE;
    static constexpr int COPIES = (K_CONTIG ? W : BK) / STEP;
    static_assert(THREADS % PER_LINE == 0 && (K_CONTIG ? W : BK) % STEP == 0,
                  "staging layout: copies must divide evenly among threads");
    static_assert(COPIES <= 32, "row validity is a 32-bit mask");

    const T* ptr;         // this thread's first copy, at k0 = k_begin
    long long line_step;  // between this thread's copies (k-tiles: BK, or line_step * BK/STEP)
    int k_left;           // k extent left from k_begin, minus this thread's k offset
    unsigned int valid;   // K_CONTIG: rows in range (bit i); else bytes of the vector in range
    int slot;             // this thread's first shared slot, as an offset into S
    bool vec;             // 16-byte copies (not K_CONTIG)

    __device__ __forceinline__ Loader(const T* p, long long ld_, long long w0, long long w_end,
                                      long long k_begin, long long k_end, int tid, bool vec_)
    {
        vec = vec_;
        const int along = tid % PER_LINE, line = tid / PER_LINE;
        line_step = (long long)STEP * ld_;
        if constexpr (K_CONTIG) {
            slot = along * LD + line;
            ptr = p + (w0 + line) * ld_ + (k_begin + along);
            k_left = clamp_int(k_end - k_begin - along);
            valid = 0u;
#pragma unroll
            for (int i = 0; i < COPIES; ++i)
                if (w0 + line + i * STEP < w_end) valid |= 1u << i;
        } else {
            slot = line * LD + along * V;
            ptr = p + (k_begin + line) * ld_ + (w0 + along * V);
            k_left = clamp_int(k_end - k_begin - line);
            const long long left = w_end - (w0 + along * V);
            valid = (unsigned int)(left >= V ? V * E : (left > 0 ? left * E : 0));
        }
    }

    // Issue the copies of k-tile t (k0 = k_begin + t * BK) into S.
    __device__ __forceinline__ void issue(T (*S)[LD], int t) const
    {
        static_assert(K_CONTIG || BK % STEP == 0, "k-tiles are whole numbers of copy steps");
        const int k_rel = t * BK;
        T* dst = &S[0][0] + slot;
        const T* src = ptr + (K_CONTIG ? (long long)k_rel : (long long)t * (BK / STEP) * line_step);
        if constexpr (K_CONTIG) {
            const bool k_in = k_rel < k_left;
#pragma unroll
            for (int i = 0; i < COPIES; ++i) {
                const bool in = k_in && ((valid >> i) & 1u);
                cp_async<E>(dst + i * STEP, src, in ? E : 0);
                src += line_step;
            }
        } else {
#pragma unroll
            for (int i = 0; i < COPIES; ++i) {
                const int bytes = k_rel + i * STEP < k_left ? (int)valid : 0;
                if (vec) {
                    cp_async<V * E>(dst + i * STEP * LD, src, bytes);
                } else {
#pragma unroll
                    for (int e = 0; e < V; ++e)
                        cp_async<E>(dst + i * STEP * LD + e, src + e, bytes > e * E ? E : 0);
                }
                src += line_step;
            }
        }
    }
};

// Whether 16-byte vectors of p can be used for a matrix with leading dimension ld.
template <typename T>
__device__ __forceinline__ bool vector_ok(const T* p, long long ld)
{
    return ((unsigned long long)p % 16 == 0) && (ld % (16 / (long long)sizeof(T)) == 0);
}

// The double-buffered main loop.
template <typename T, class S, bool A_K_CONTIG, bool B_K_CONTIG>
__device__ __forceinline__ void main_loop(T (&acc)[S::TM][S::TN], const T* a, long long lda,
                                          const T* b, long long ldb, long long M, long long N,
                                          long long k_begin, long long k_end, long long row0,
                                          long long col0, bool sum_b_cols, T& b_col_sum,
                                          T (&As)[2][S::BK][S::BM + S::PAD],
                                          T (&Bs)[2][S::BK][S::BN + S::PAD])
{
    constexpr int BK = S::BK, LDA = S::BM + S::PAD, LDB = S::BN + S::PAD;
    constexpr int VA = A_K_CONTIG ? 1 : 16 / sizeof(T);
    constexpr int VB = B_K_CONTIG ? 1 : 16 / sizeof(T);
    const int tid = threadIdx.x;
    [[maybe_unused]] const int tx = tid % S::TX, ty = tid / S::TX;  // FP32 register blocks
    const Loader<T, S::BM, BK, S::THREADS, LDA, A_K_CONTIG, VA> load_a(
        a, lda, row0, M, k_begin, k_end, tid, !A_K_CONTIG && vector_ok(a, lda));
    const Loader<T, S::BN, BK, S::THREADS, LDB, B_K_CONTIG, VB> load_b(
        b, ldb, col0, N, k_begin, k_end, tid, !B_K_CONTIG && vector_ok(b, ldb));
    const int tiles = (int)((k_end - k_begin + BK - 1) / BK);
    WarpTiles<S> warp_tiles;  // TF32: the tensor-core accumulators (empty otherwise)
    warp_tiles.zero();
    load_a.issue(As[0], 0);
    load_b.issue(Bs[0], 0);
    cp_async_commit();
    for (int t = 0; t < tiles; ++t) {
        const int cur = t & 1;
        if (t + 1 < tiles) {  // the next tile's copies overlap this tile's FMAs
            load_a.issue(As[cur ^ 1], t + 1);
            load_b.issue(Bs[cur ^ 1], t + 1);
        }
        cp_async_commit();
        cp_async_wait<1>();  // this thread's copies of tile t have landed ...
        __syncthreads();     // ... and every other thread's too
        if constexpr (S::TF32) {
            warp_tiles.template multiply<LDA, LDB>(As[cur], Bs[cur]);
        } else {
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                T ra[S::TM], rb[S::TN];
#pragma unroll
                for (int q = 0; q < S::QM; ++q) {
                    T v[4];
                    load4(v, &As[cur][kk][ty * 4 + q * S::QM_STEP]);
#pragma unroll
                    for (int i = 0; i < 4; ++i) ra[q * 4 + i] = v[i];
                }
#pragma unroll
                for (int q = 0; q < S::QN; ++q) {
                    T v[4];
                    load4(v, &Bs[cur][kk][tx * 4 + q * S::QN_STEP]);
#pragma unroll
                    for (int j = 0; j < 4; ++j) rb[q * 4 + j] = v[j];
                }
#pragma unroll
                for (int i = 0; i < S::TM; ++i)
#pragma unroll
                    for (int j = 0; j < S::TN; ++j) acc[i][j] += ra[i] * rb[j];
            }
        }
        if (sum_b_cols && tid < S::BN) {
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) b_col_sum += Bs[cur][kk][tid];
        }
        __syncthreads();  // the copies issued next iteration overwrite this stage
    }
    cp_async_wait<0>();  // nothing may stay in flight past the main loop
    if constexpr (S::TF32) {
        __shared__ __align__(32) float Cs[S::BM][S::BN + S::PAD];
        warp_tiles.to_registers(acc, Cs);
    }
}

// acc += opA[row0:row0+BM, k_begin:k_end] @ opB[k_begin:k_end, col0:col0+BN], where opA is
// M x K (element (r, k) at a[r*lda + k] if A_K_CONTIG else a[k*lda + r]) and opB is K x N
// (element (k, c) at b[c*ldb + k] if B_K_CONTIG else b[k*ldb + c]).  With sum_b_cols,
// threads tid < BN also add column tid of opB over [k_begin, k_end) to b_col_sum: the
// weight-gradient kernel gets the bias gradient from the tiles it already staged.
// An operand contiguous along w is copied in 16-byte vectors when its base and leading
// dimension allow it, else element by element (Loader).
// Every thread of the block must call this (it synchronises).
template <typename T, class S, bool A_K_CONTIG, bool B_K_CONTIG>
__device__ __forceinline__ void multiply_tile(T (&acc)[S::TM][S::TN], const T* a,
                                              long long lda, const T* b, long long ldb,
                                              long long M, long long N, long long k_begin,
                                              long long k_end, long long row0, long long col0,
                                              bool sum_b_cols, T& b_col_sum)
{
    // 32-byte aligned: the TF32 tile's wmma loads need it (16 bytes suffice for the others).
    __shared__ __align__(32) T As[2][S::BK][S::BM + S::PAD];
    __shared__ __align__(32) T Bs[2][S::BK][S::BN + S::PAD];
    if (k_end <= k_begin) return;  // uniform over the block
    main_loop<T, S, A_K_CONTIG, B_K_CONTIG>(acc, a, lda, b, ldb, M, N, k_begin, k_end, row0,
                                            col0, sum_b_cols, b_col_sum, As, Bs);
}

// Row / column of element (i, j) of a thread's register block, relative to the tile.
template <class S>
__device__ __forceinline__ int block_row(int ty, int i)
{
    return ty * 4 + (i / 4) * S::QM_STEP + i % 4;
}
template <class S>
__device__ __forceinline__ int block_col(int tx, int j)
{
    return tx * 4 + (j / 4) * S::QN_STEP + j % 4;
}

// Split-K: exchange partial tiles through the workspace.  Returns true in the one block per
// tile that must run the epilogue; acc then holds the full sum, added in split order.  With
// b_col_sum (threads tid < BN of row-tile 0) the bias-gradient partials are reduced alike.
// Workspace layout: [split][tile][TM*TN][THREADS] (coalesced: consecutive threads, consecutive
// words), then [split][tiles_n][BN] for the column sums.
template <typename T, class S>
__device__ __forceinline__ bool split_k_reduce(T (&acc)[S::TM][S::TN], T* workspace,
                                               int* counters, long long tile,
                                               long long tiles, long long tile_col,
                                               long long tiles_n, bool sum_b_cols,
                                               T& b_col_sum)
{
    const int splits = (int)gridDim.z;
    if (splits == 1) return true;
    const int tid = threadIdx.x, z = (int)blockIdx.z;
    constexpr int PER = S::TM * S::TN;
    T* col_ws = workspace + (long long)splits * tiles * PER * S::THREADS;
    {
        T* mine = workspace + ((long long)z * tiles + tile) * PER * S::THREADS + tid;
#pragma unroll
        for (int i = 0; i < S::TM; ++i)
#pragma unroll
            for (int j = 0; j < S::TN; ++j) mine[(i * S::TN + j) * S::THREADS] = acc[i][j];
        if (sum_b_cols && tid < S::BN)
            col_ws[((long long)z * tiles_n + tile_col) * S::BN + tid] = b_col_sum;
    }
    __shared__ int last;
    __threadfence();  // the partial is visible device-wide before the counter moves
    __syncthreads();
    if (tid == 0) {
        const int arrived = atomicAdd(&counters[tile], 1);
        last = arrived == splits - 1;
        if (last) counters[tile] = 0;  // every split has arrived: ready for the next launch
    }
    __syncthreads();
    if (!last) return false;
    __threadfence();
#pragma unroll
    for (int i = 0; i < S::TM; ++i)
#pragma unroll
        for (int j = 0; j < S::TN; ++j) acc[i][j] = T(0);
    for (int s = 0; s < splits; ++s) {
        const T* part = workspace + ((long long)s * tiles + tile) * PER * S::THREADS + tid;
#pragma unroll
        for (int i = 0; i < S::TM; ++i)
#pragma unroll
            for (int j = 0; j < S::TN; ++j) acc[i][j] += __ldcg(part + (i * S::TN + j) * S::THREADS);
    }
    if (sum_b_cols && tid < S::BN) {
        T total = T(0);
        for (int s = 0; s < splits; ++s)
            total += __ldcg(col_ws + ((long long)s * tiles_n + tile_col) * S::BN + tid);
        b_col_sum = total;
    }
    return true;
}

// The k range of split blockIdx.z: whole BK tiles, as even as possible.
template <class S>
__device__ __forceinline__ void split_range(long long K, long long& k_begin, long long& k_end)
{
    const long long tiles = (K + S::BK - 1) / S::BK, splits = gridDim.z;
    const long long per = (tiles + splits - 1) / splits;
    k_begin = (long long)blockIdx.z * per * S::BK;
    if (k_begin > K) k_begin = K;
    k_end = k_begin + per * S::BK;
    if (k_end > K) k_end = K;
}

// The 4-lane selection a dropout word needs, without indexing an array at run time (which
// would put the Philox words in local memory).
__device__ __forceinline__ unsigned int pick_word(const Philox4& p, long long lane)
{
    return lane == 0 ? p.w[0] : lane == 1 ? p.w[1] : lane == 2 ? p.w[2] : p.w[3];
}

}  // namespace gemm

#endif
