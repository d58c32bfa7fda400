// Output-layer kernels: losses fused with H_L = dJ/dZ_L, and inference softmax.
//
// Each loss writes h (already divided by n) and ADDS the batch-mean loss into *loss_acc
// (one atomicAdd per block after a block reduction), so several batches can accumulate on
// the device with no host synchronisation.  h may alias the logits: every element is read
// and written by the same thread, after the row reductions.
//
// Row kernels (softmax_xent, softmax_rows): block (L, R) with L a power of two, L * R <= 256:
// L lanes share a row, R rows per block, grid min(ceil(n / R), 65535) striding over rows;
// choose L = min(32, next power of two >= k), R = 256 / L.
// Flat kernels (sigmoid_bce, squared_error): block (256, 1, 1),
// grid min(ceil(ceil(n * k / 4) / 256), 65535): about 4 elements per thread, so fewer
// block reductions and atomics per element.
#include "activations.cuh"

template <typename T>
struct LossMax {
    __device__ __forceinline__ T operator()(T x, T y) const { return y > x ? y : x; }
};
template <typename T>
struct LossSum {
    __device__ __forceinline__ T operator()(T x, T y) const { return x + y; }
};

// Reduce v over the blockDim.x lanes of this thread's row (threadIdx.y); all lanes get it.
template <typename T, typename Op>
__device__ __forceinline__ T row_reduce(T v, T* red, Op op)
{
    const int lanes = blockDim.x, lane = threadIdx.x, base = threadIdx.y * blockDim.x;
    red[base + lane] = v;
    __syncthreads();
    for (int s = lanes / 2; s > 0; s >>= 1) {
        if (lane < s) red[base + lane] = op(red[base + lane], red[base + lane + s]);
        __syncthreads();
    }
    const T r = red[base];
    __syncthreads();
    return r;
}

// Row max and sum of exp(z - max) of this thread's row (inactive rows get harmless values).
template <typename T>
__device__ __forceinline__ void row_softmax_stats(const T* zr, long long k, bool active, T* red,
                                                  T& zmax, T& sum)
{
    zmax = active ? zr[0] : T(0);
    if (active)
        for (long long j = threadIdx.x; j < k; j += blockDim.x) zmax = LossMax<T>()(zmax, zr[j]);
    zmax = row_reduce(zmax, red, LossMax<T>());
    sum = T(0);
    if (active)
        for (long long j = threadIdx.x; j < k; j += blockDim.x) sum += m_exp(zr[j] - zmax);
    sum = row_reduce(sum, red, LossSum<T>());
}

// h = (softmax(z) - t) / n; *loss_acc += sum(t * (logsumexp(z) - z)) / n.  z, t, h: n x k.
template <typename T>
__global__ void softmax_xent(T* h, T* loss_acc, const T* z, const T* t, long long n,
                             long long k)
{
    __shared__ T red[GPUMLP_BLOCK];
    T loss = T(0);
    const long long rows_per_pass = (long long)gridDim.x * blockDim.y;
    for (long long r0 = (long long)blockIdx.x * blockDim.y; r0 < n; r0 += rows_per_pass) {
        const long long row = r0 + threadIdx.y;
        const bool active = row < n && k > 0;
        const T* zr = z + (active ? row * k : 0);
        T zmax, sum;
        row_softmax_stats(zr, k, active, red, zmax, sum);
        if (active) {
            const T log_norm = m_log(sum) + zmax;
            for (long long j = threadIdx.x; j < k; j += blockDim.x) {
                const T zj = zr[j], tj = t[row * k + j];
                loss += tj * (log_norm - zj);
                h[row * k + j] = (m_exp(zj - zmax) / sum - tj) / T(n);
            }
        }
    }
    const T total = block_sum(loss, red);
    if (threadIdx.x == 0 && threadIdx.y == 0) atomicAdd(loss_acc, total / T(n));
}

// out = row-wise softmax of z (n x k), numerically stable; out may alias z.
template <typename T>
__global__ void softmax_rows(T* out, const T* z, long long n, long long k)
{
    __shared__ T red[GPUMLP_BLOCK];
    const long long rows_per_pass = (long long)gridDim.x * blockDim.y;
    for (long long r0 = (long long)blockIdx.x * blockDim.y; r0 < n; r0 += rows_per_pass) {
        const long long row = r0 + threadIdx.y;
        const bool active = row < n && k > 0;
        const T* zr = z + (active ? row * k : 0);
        T zmax, sum;
        row_softmax_stats(zr, k, active, red, zmax, sum);
        if (active)
            for (long long j = threadIdx.x; j < k; j += blockDim.x)
                out[row * k + j] = m_exp(zr[j] - zmax) / sum;
    }
}

// h = (sigmoid(z) - t) / n; *loss_acc += sum(log(1 + e^z) - t z) / n, written so exp never
// overflows: max(z, 0) - t z + log1p(e^{-|z|}).
template <typename T>
__global__ void sigmoid_bce(T* h, T* loss_acc, const T* z, const T* t, long long n,
                            long long k)
{
    __shared__ T red[GPUMLP_BLOCK];
    T loss = T(0);
    const long long size = n * k;
    for (long long i = global_thread_id(); i < size; i += grid_threads()) {
        const T zi = z[i], ti = t[i];
        loss += ((zi < T(0) ? T(0) : zi) - ti * zi) + m_log1p(m_exp(-m_abs(zi)));
        h[i] = (act_forward<GPUMLP_ACT_SIGMOID>(zi) - ti) / T(n);
    }
    const T total = block_sum(loss, red);
    if (threadIdx.x == 0 && threadIdx.y == 0) atomicAdd(loss_acc, total / T(n));
}

// h = (a - t) / n; *loss_acc += ||a - t||^2 / (2 n).
template <typename T>
__global__ void squared_error(T* h, T* loss_acc, const T* a, const T* t, long long n,
                              long long k)
{
    __shared__ T red[GPUMLP_BLOCK];
    T loss = T(0);
    const long long size = n * k;
    for (long long i = global_thread_id(); i < size; i += grid_threads()) {
        const T diff = a[i] - t[i];
        loss += diff * diff;
        h[i] = diff / T(n);
    }
    const T total = block_sum(loss, red);
    if (threadIdx.x == 0 && threadIdx.y == 0) atomicAdd(loss_acc, total / T(2 * n));
}

// *loss_acc += scale * sum_l ||W_l||^2: the L2 term of a captured step over every layer's
// weights in one launch, summed from the weights the step starts with (scale =
// 0.5 * alpha / rows), so graph steps report the same per-batch loss as eager ones.  The
// weights are views of the flat parameter buffer: spans holds (offset, size) of each of the
// n_layers weight views in params, so the biases between them are skipped.  Flat launch over
// the total number of weights: block (256, 1, 1); every layer is spread over the whole grid.
template <typename T>
__global__ void add_weights_l2_loss(T* loss_acc, const T* params, const long long* spans,
                                    long long n_layers, T scale)
{
    __shared__ T red[GPUMLP_BLOCK];
    T sum = T(0);
    for (long long layer = 0; layer < n_layers; ++layer) {
        const T* w = params + spans[2 * layer];
        const long long size = spans[2 * layer + 1];
        for (long long i = global_thread_id(); i < size; i += grid_threads()) sum += w[i] * w[i];
    }
    const T total = block_sum(sum, red);
    if (threadIdx.x == 0 && threadIdx.y == 0) atomicAdd(loss_acc, scale * total);
}
