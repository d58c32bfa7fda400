// Fused GEMM kernels (row-major, C-contiguous operands), templated on the tile of
// gemm_tile.cuh.  Launch (gpumlp/backends/cuda/plan.py computes it):
// block (Shape<TILE>::THREADS, 1, 1),
// grid (ceil(N / BN), min(ceil(M / BM), 65535), splits) for an M x N output; the kernels stride
// over tiles, so any smaller grid in x and y is also correct.  With splits > 1, `workspace`
// holds splits * tiles * BM * BN (+ splits * ceil(N / BN) * BN) elements of T and
// `tile_counters` one zeroed int per tile (they are left zeroed); with one split both may be
// null.  Static shared memory only.
#include "gemm_tile.cuh"
#include "pointwise.cuh"

namespace gemm {

// Both 16-byte aligned, and rows of a multiple of 4 elements: quads of the output are stored
// (and the matching quads of a read) as whole vectors.
template <typename T>
__device__ __forceinline__ bool quads_ok(const T* p, long long cols)
{
    return p == nullptr || (((unsigned long long)p % 16 == 0) && cols % 4 == 0);
}

// The dropout keep flags of the 4 consecutive elements base .. base+3: one Philox block when
// base is a multiple of 4 (rows of a multiple of 4), else the two blocks the quad straddles.
template <typename T, bool DROPOUT>
__device__ __forceinline__ void keep_flags(bool (&kept)[4], const DropoutCall<T>& drop,
                                           long long base)
{
    if constexpr (DROPOUT) {
        const long long g = base >> 2, off = base & 3;
        const Philox4 first = drop.words(g);
        Philox4 second = first;
        if (off != 0) second = drop.words(g + 1);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long lane = off + j;
            kept[j] = drop.kept_word(lane < 4 ? pick_word(first, lane)
                                              : pick_word(second, lane - 4));
        }
    } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) kept[j] = true;
    }
}

}  // namespace gemm

// out (n x m) = phi(x (n x k) @ w (k x m) + b), then inverted dropout when DROPOUT.
template <typename T, int ACT, bool DROPOUT, int TILE>
__global__ void __launch_bounds__(gemm::Shape<TILE>::THREADS, gemm::Shape<TILE>::MIN_BLOCKS)
gemm_bias_act(T* out, const T* x, const T* w, const T* b, long long n, long long k,
              long long m, T keep, unsigned long long seed, const long long* counter_base,
              long long counter_offset, T* workspace, int* tile_counters)
{
    using namespace gemm;
    using S = Shape<TILE>;
    const int tid = threadIdx.x, tx = tid % S::TX, ty = tid / S::TX;
    // Tile indices fit an int (2^31 tiles of 16+ rows); fewer 64-bit registers stay live.
    const int tiles_m = (int)((n + S::BM - 1) / S::BM);
    const int tiles_n = (int)((m + S::BN - 1) / S::BN);
    long long k_begin, k_end;
    split_range<S>(k, k_begin, k_end);
    const bool vec_out = quads_ok(out, m);
    for (int tr = blockIdx.y; tr < tiles_m; tr += gridDim.y) {
        for (int tc = blockIdx.x; tc < tiles_n; tc += gridDim.x) {
            T acc[S::TM][S::TN] = {};
            T unused = T(0);
            multiply_tile<T, S, true, false>(acc, x, k, w, m, n, m, k_begin, k_end,
                                             (long long)tr * S::BM, (long long)tc * S::BN, false, unused);
            if (!split_k_reduce<T, S>(acc, workspace, tile_counters, (long long)tr * tiles_n + tc,
                                      (long long)tiles_m * tiles_n, tc, tiles_n, false, unused))
                continue;
            // Made here, not before the main loop: nothing of it stays live across the loop.
            const DropoutCall<T> drop = make_dropout<T, DROPOUT>(keep, seed, counter_base,
                                                                 counter_offset);
#pragma unroll
            for (int i = 0; i < S::TM; ++i) {
                const long long r = (long long)tr * S::BM + block_row<S>(ty, i);
#pragma unroll
                for (int q = 0; q < S::QN; ++q) {
                    const long long c = (long long)tc * S::BN + block_col<S>(tx, 4 * q);
                    if (r >= n || c >= m) continue;
                    const long long base = r * m + c;
                    bool kept[4];
                    keep_flags<T, DROPOUT>(kept, drop, base);
                    T v[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const T bias = c + j < m ? b[c + j] : T(0);
                        v[j] = forward_element<T, ACT, DROPOUT>(acc[i][4 * q + j] + bias,
                                                                kept[j], drop);
                    }
                    if (vec_out) {
                        store4(out + base, v);
                    } else {
#pragma unroll
                        for (int j = 0; j < 4; ++j)
                            if (c + j < m) out[base + j] = v[j];
                    }
                }
            }
        }
    }
}

// out (n x k) = (h_next (n x m) @ w_next^T) * phi'(a), w_next k x m, a n x k (the layer's
// stored output; out may alias a).  With DROPOUT the forward mask is regenerated.
template <typename T, int ACT, bool DROPOUT, int TILE>
__global__ void __launch_bounds__(gemm::Shape<TILE>::THREADS, gemm::Shape<TILE>::MIN_BLOCKS)
gemm_backprop_act(T* out, const T* h_next, const T* w_next, const T* a, long long n,
                  long long k, long long m, T keep, unsigned long long seed,
                  const long long* counter_base, long long counter_offset, T* workspace,
                  int* tile_counters)
{
    using namespace gemm;
    using S = Shape<TILE>;
    const int tid = threadIdx.x, tx = tid % S::TX, ty = tid / S::TX;
    // Tile indices fit an int (2^31 tiles of 16+ rows); fewer 64-bit registers stay live.
    const int tiles_m = (int)((n + S::BM - 1) / S::BM);
    const int tiles_n = (int)((k + S::BN - 1) / S::BN);
    long long k_begin, k_end;
    split_range<S>(m, k_begin, k_end);
    const bool vec_out = quads_ok(out, k) && quads_ok(a, k);
    for (int tr = blockIdx.y; tr < tiles_m; tr += gridDim.y) {
        for (int tc = blockIdx.x; tc < tiles_n; tc += gridDim.x) {
            T acc[S::TM][S::TN] = {};
            T unused = T(0);
            multiply_tile<T, S, true, true>(acc, h_next, m, w_next, m, n, k, k_begin, k_end,
                                            (long long)tr * S::BM, (long long)tc * S::BN, false, unused);
            if (!split_k_reduce<T, S>(acc, workspace, tile_counters, (long long)tr * tiles_n + tc,
                                      (long long)tiles_m * tiles_n, tc, tiles_n, false, unused))
                continue;
            // Made here, not before the main loop: nothing of it stays live across the loop.
            const DropoutCall<T> drop = make_dropout<T, DROPOUT>(keep, seed, counter_base,
                                                                 counter_offset);
#pragma unroll
            for (int i = 0; i < S::TM; ++i) {
                const long long r = (long long)tr * S::BM + block_row<S>(ty, i);
#pragma unroll
                for (int q = 0; q < S::QN; ++q) {
                    const long long c = (long long)tc * S::BN + block_col<S>(tx, 4 * q);
                    if (r >= n || c >= k) continue;
                    const long long base = r * k + c;
                    bool kept[4];
                    keep_flags<T, DROPOUT>(kept, drop, base);
                    T av[4], v[4];
                    if (vec_out) {
                        load4_global(av, a + base);
                    } else {
#pragma unroll
                        for (int j = 0; j < 4; ++j) av[j] = c + j < k ? a[base + j] : T(0);
                    }
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        v[j] = backward_element<T, ACT, DROPOUT>(acc[i][4 * q + j], av[j],
                                                                 kept[j], drop);
                    if (vec_out) {
                        store4(out + base, v);
                    } else {
#pragma unroll
                        for (int j = 0; j < 4; ++j)
                            if (c + j < k) out[base + j] = v[j];
                    }
                }
            }
        }
    }
}

// dw (k x m) = a_prev^T (a_prev n x k) @ h (n x m) + decay * w, and db (m) = column sums of h.
// The blocks of the first tile row also sum the columns of the h tiles they stage, so the
// bias gradient costs no extra pass over h.  w is read only when decay != 0 (may be null).
template <typename T, int TILE>
__global__ void __launch_bounds__(gemm::Shape<TILE>::THREADS, gemm::Shape<TILE>::MIN_BLOCKS)
gemm_weight_grads(T* dw, T* db, const T* a_prev, const T* h, const T* w, long long n,
                  long long k, long long m, T decay, T* workspace, int* tile_counters)
{
    using namespace gemm;
    using S = Shape<TILE>;
    const int tid = threadIdx.x, tx = tid % S::TX, ty = tid / S::TX;
    // Tile indices fit an int (2^31 tiles of 16+ rows); fewer 64-bit registers stay live.
    const int tiles_m = (int)((k + S::BM - 1) / S::BM);
    const int tiles_n = (int)((m + S::BN - 1) / S::BN);
    long long k_begin, k_end;
    split_range<S>(n, k_begin, k_end);
    const bool decayed = decay != T(0);
    const bool vec_out = quads_ok(dw, m) && (!decayed || quads_ok(w, m));
    for (int tr = blockIdx.y; tr < tiles_m; tr += gridDim.y) {
        for (int tc = blockIdx.x; tc < tiles_n; tc += gridDim.x) {
            T acc[S::TM][S::TN] = {};
            T col_sum = T(0);
            const bool sums = tr == 0;  // the first tile row also yields the bias gradient
            multiply_tile<T, S, false, false>(acc, a_prev, k, h, m, k, m, k_begin, k_end,
                                              (long long)tr * S::BM, (long long)tc * S::BN, sums, col_sum);
            if (!split_k_reduce<T, S>(acc, workspace, tile_counters, (long long)tr * tiles_n + tc,
                                      (long long)tiles_m * tiles_n, tc, tiles_n, sums, col_sum))
                continue;
#pragma unroll
            for (int i = 0; i < S::TM; ++i) {
                const long long r = (long long)tr * S::BM + block_row<S>(ty, i);
#pragma unroll
                for (int q = 0; q < S::QN; ++q) {
                    const long long c = (long long)tc * S::BN + block_col<S>(tx, 4 * q);
                    if (r >= k || c >= m) continue;
                    const long long base = r * m + c;
                    T wv[4] = {T(0), T(0), T(0), T(0)}, v[4];
                    if (decayed) {
                        if (vec_out) {
                            load4_global(wv, w + base);
                        } else {
#pragma unroll
                            for (int j = 0; j < 4; ++j) wv[j] = c + j < m ? w[base + j] : T(0);
                        }
                    }
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        v[j] = acc[i][4 * q + j];
                        if (decayed) v[j] += decay * wv[j];
                    }
                    if (vec_out) {
                        store4(dw + base, v);
                    } else {
#pragma unroll
                        for (int j = 0; j < 4; ++j)
                            if (c + j < m) dw[base + j] = v[j];
                    }
                }
            }
            if (tr == 0 && tid < S::BN && (long long)tc * S::BN + tid < m)
                db[(long long)tc * S::BN + tid] = col_sum;
        }
    }
}

namespace gemm {

// The most negative finite value: the row maximum of a thread holding no column of the row.
__device__ __forceinline__ float lowest(float) { return -3.402823466e38f; }
__device__ __forceinline__ double lowest(double) { return -1.7976931348623157e308; }

}  // namespace gemm

// The output layer and softmax + cross-entropy in one launch: with z = x (n x k) @ w (k x m)
// + b, h (n x m) = (softmax(z) - t) / n and *loss_acc += sum(t * (logsumexp(z) - z)) / n, as
// gemm_bias_act (identity) followed by softmax_xent compute them; the logits never reach
// memory.  Each block must hold whole output rows: m <= BN (grid x = 1;
// gpumlp/backends/cuda/plan.py plans it so), else the kernel writes nothing.  The row max and sum of exp are reduced
// across the TX threads of a row through shared memory; each exp is taken once, and the
// divisions by the row sum and by n are multiplications by reciprocals (the epilogue then
// costs fewer FMA-pipe instructions than one k-step of the main loop); one atomicAdd of the
// loss per block.
template <typename T, int TILE>
__global__ void __launch_bounds__(gemm::Shape<TILE>::THREADS, gemm::Shape<TILE>::MIN_BLOCKS)
gemm_softmax_xent(T* h, T* loss_acc, const T* x, const T* w, const T* b, const T* t,
                  long long n, long long k, long long m, T* workspace, int* tile_counters)
{
    using namespace gemm;
    using S = Shape<TILE>;
    __shared__ T row_part[S::BM][S::TX];  // one partial per row and thread column
    __shared__ T red[S::THREADS];
    if (m > S::BN) return;  // uniform: the plan never launches this
    const int tid = threadIdx.x, tx = tid % S::TX, ty = tid / S::TX;
    const int tiles_m = (int)((n + S::BM - 1) / S::BM);
    long long k_begin, k_end;
    split_range<S>(k, k_begin, k_end);
    const bool vec = quads_ok(h, m) && quads_ok(t, m);
    T loss = T(0);
    for (int tr = blockIdx.y; tr < tiles_m; tr += gridDim.y) {
        T acc[S::TM][S::TN] = {};
        T unused = T(0);
        multiply_tile<T, S, true, false>(acc, x, k, w, m, n, m, k_begin, k_end,
                                         (long long)tr * S::BM, 0, false, unused);
        if (!split_k_reduce<T, S>(acc, workspace, tile_counters, tr, tiles_m, 0, 1, false,
                                  unused))
            continue;
        // z in acc (bias added); columns past m are never read below.
        T zmax[S::TM];
#pragma unroll
        for (int i = 0; i < S::TM; ++i) {
            zmax[i] = lowest(T(0));
#pragma unroll
            for (int j = 0; j < S::TN; ++j) {
                const long long c = block_col<S>(tx, j);
                if (c < m) {
                    acc[i][j] += b[c];
                    zmax[i] = acc[i][j] > zmax[i] ? acc[i][j] : zmax[i];
                }
            }
            row_part[block_row<S>(ty, i)][tx] = zmax[i];
        }
        __syncthreads();
        // acc becomes e = exp(z - max), computed once; the loss of a row is
        // sum_j t_j (log sum_e - (z_j - max)): t_j and t_j (z_j - max) are summed here.
        T sum[S::TM], t_sum[S::TM], tz_sum[S::TM];
#pragma unroll
        for (int i = 0; i < S::TM; ++i) {
            const int row = block_row<S>(ty, i);
            for (int p = 0; p < S::TX; ++p)
                zmax[i] = row_part[row][p] > zmax[i] ? row_part[row][p] : zmax[i];
            const long long r = (long long)tr * S::BM + row;
            sum[i] = t_sum[i] = tz_sum[i] = T(0);
#pragma unroll
            for (int j = 0; j < S::TN; ++j) {
                const long long c = block_col<S>(tx, j);
                if (c < m) {
                    const T shifted = acc[i][j] - zmax[i];
                    acc[i][j] = m_exp(shifted);
                    sum[i] += acc[i][j];
                    if (r < n) {
                        const T tj = t[r * m + c];
                        t_sum[i] += tj;
                        tz_sum[i] += tj * shifted;
                    }
                }
            }
        }
        __syncthreads();  // every max is read before the sums overwrite them
#pragma unroll
        for (int i = 0; i < S::TM; ++i) row_part[block_row<S>(ty, i)][tx] = sum[i];
        __syncthreads();
        const T inv_n = T(1) / T(n);
#pragma unroll
        for (int i = 0; i < S::TM; ++i) {
            const int row_in_tile = block_row<S>(ty, i);
            T total = T(0);
            for (int p = 0; p < S::TX; ++p) total += row_part[row_in_tile][p];
            const long long r = (long long)tr * S::BM + row_in_tile;
            if (r >= n) continue;
            loss += t_sum[i] * m_log(total) - tz_sum[i];
            const T inv_total = T(1) / total;
#pragma unroll
            for (int q = 0; q < S::QN; ++q) {
                const long long c = block_col<S>(tx, 4 * q);
                if (c >= m) continue;
                const long long base = r * m + c;
                T tv[4], v[4];
                if (vec) {
                    load4_global(tv, t + base);
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j) tv[j] = c + j < m ? t[base + j] : T(0);
                }
#pragma unroll
                for (int j = 0; j < 4; ++j) v[j] = (acc[i][4 * q + j] * inv_total - tv[j]) * inv_n;
                if (vec) {
                    store4(h + base, v);
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (c + j < m) h[base + j] = v[j];
                }
            }
        }
        __syncthreads();  // the sums are read before the next tile's maxima overwrite them
    }
    const T block_loss = block_sum(loss, red);
    if (tid == 0) atomicAdd(loss_acc, block_loss / T(n));
}
