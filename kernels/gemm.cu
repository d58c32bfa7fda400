// Fused GEMM kernels (row-major, C-contiguous operands).  Launch: block (256, 1, 1),
// grid (ceil(N / 64), min(ceil(M / 64), 65535)) for an M x N output; the kernels stride over
// tiles, so any smaller grid is also correct.  Static shared memory only.
#include "gemm_tile.cuh"
#include "pointwise.cuh"

// out (n x m) = phi(x (n x k) @ w (k x m) + b), then inverted dropout when DROPOUT.
template <typename T, int ACT, bool DROPOUT>
__global__ void __launch_bounds__(GPUMLP_GEMM_THREADS)
gemm_bias_act(T* out, const T* x, const T* w, const T* b, long long n, long long k,
              long long m, T keep, unsigned long long seed, const long long* counter_base,
              long long counter_offset)
{
    using namespace gemm;
    const DropoutCall<T> drop = make_dropout<T, DROPOUT>(keep, seed, counter_base,
                                                         counter_offset);
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    for (long long tr = blockIdx.y; tr * BM < n; tr += gridDim.y) {
        for (long long tc = blockIdx.x; tc * BN < m; tc += gridDim.x) {
            T acc[TM][TN] = {};
            multiply_tile<T, true, false>(acc, x, k, w, m, n, m, k, tr * BM, tc * BN, nullptr);
            for (int i = 0; i < TM; ++i) {
                const long long r = tr * BM + ty + i * TY;
                for (int j = 0; j < TN; ++j) {
                    const long long c = tc * BN + tx + j * TX;
                    if (r < n && c < m) {
                        const long long idx = r * m + c;
                        const bool kept = DROPOUT ? drop.kept(idx) : true;
                        out[idx] = forward_element<T, ACT, DROPOUT>(acc[i][j] + b[c], kept, drop);
                    }
                }
            }
        }
    }
}

// out (n x k) = (h_next (n x m) @ w_next^T) * phi'(a), w_next k x m, a n x k (the layer's
// stored output; out may alias a).  With DROPOUT the forward mask is regenerated.
template <typename T, int ACT, bool DROPOUT>
__global__ void __launch_bounds__(GPUMLP_GEMM_THREADS)
gemm_backprop_act(T* out, const T* h_next, const T* w_next, const T* a, long long n,
                  long long k, long long m, T keep, unsigned long long seed,
                  const long long* counter_base, long long counter_offset)
{
    using namespace gemm;
    const DropoutCall<T> drop = make_dropout<T, DROPOUT>(keep, seed, counter_base,
                                                         counter_offset);
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    for (long long tr = blockIdx.y; tr * BM < n; tr += gridDim.y) {
        for (long long tc = blockIdx.x; tc * BN < k; tc += gridDim.x) {
            T acc[TM][TN] = {};
            multiply_tile<T, true, true>(acc, h_next, m, w_next, m, n, k, m, tr * BM, tc * BN,
                                         nullptr);
            for (int i = 0; i < TM; ++i) {
                const long long r = tr * BM + ty + i * TY;
                for (int j = 0; j < TN; ++j) {
                    const long long c = tc * BN + tx + j * TX;
                    if (r < n && c < k) {
                        const long long idx = r * k + c;
                        const bool kept = DROPOUT ? drop.kept(idx) : true;
                        out[idx] = backward_element<T, ACT, DROPOUT>(acc[i][j], a[idx], kept, drop);
                    }
                }
            }
        }
    }
}

// dw (k x m) = a_prev^T (a_prev n x k) @ h (n x m) + decay * w, and db (m) = column sums of h.
// The blocks of the first tile row also sum the columns of the h tiles they stage, so the
// bias gradient costs no extra pass over h.  w is read only when decay != 0 (may be null).
template <typename T>
__global__ void __launch_bounds__(GPUMLP_GEMM_THREADS)
gemm_weight_grads(T* dw, T* db, const T* a_prev, const T* h, const T* w, long long n,
                  long long k, long long m, T decay)
{
    using namespace gemm;
    const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
    for (long long tr = blockIdx.y; tr * BM < k; tr += gridDim.y) {
        for (long long tc = blockIdx.x; tc * BN < m; tc += gridDim.x) {
            T acc[TM][TN] = {};
            T col_sum = T(0);
            multiply_tile<T, false, false>(acc, a_prev, k, h, m, k, m, n, tr * BM, tc * BN,
                                           tr == 0 ? &col_sum : nullptr);
            for (int i = 0; i < TM; ++i) {
                const long long r = tr * BM + ty + i * TY;
                for (int j = 0; j < TN; ++j) {
                    const long long c = tc * BN + tx + j * TX;
                    if (r < k && c < m) {
                        const long long idx = r * m + c;
                        T g = acc[i][j];
                        if (decay != T(0)) g += decay * w[idx];
                        dw[idx] = g;
                    }
                }
            }
            if (tr == 0 && tid < BN && tc * BN + tid < m) db[tc * BN + tid] = col_sum;
        }
    }
}
