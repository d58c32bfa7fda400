// Elementwise kernels for the cuBLAS path and standalone use.  Launch: block (256, 1, 1),
// grid min(ceil(ceil(size / 4) / 256), 65535): each thread owns groups of 4 consecutive
// elements, because one Philox call yields the dropout words of exactly such a group.
#include "pointwise.cuh"

// z (n x m) = phi(z + b) in place, after a GEMM that wrote x @ w into z; dropout optional.
template <typename T, int ACT, bool DROPOUT>
__global__ void bias_act(T* z, const T* b, long long n, long long m, T keep,
                         unsigned long long seed, const long long* counter_base,
                         long long counter_offset)
{
    const DropoutCall<T> drop = make_dropout<T, DROPOUT>(keep, seed, counter_base,
                                                         counter_offset);
    const long long size = n * m, groups = (size + 3) / 4;
    for (long long g = global_thread_id(); g < groups; g += grid_threads()) {
        Philox4 r = {{0u, 0u, 0u, 0u}};
        if constexpr (DROPOUT) r = drop.words(g);
        for (int q = 0; q < 4; ++q) {
            const long long i = 4 * g + q;
            if (i < size) {
                const bool kept = DROPOUT ? drop.kept_word(r.w[q]) : true;
                z[i] = forward_element<T, ACT, DROPOUT>(z[i] + b[i % m], kept, drop);
            }
        }
    }
}

// out = delta * phi'(a) over size elements (out may alias delta or a).
template <typename T, int ACT, bool DROPOUT>
__global__ void act_grad(T* out, const T* delta, const T* a, long long size, T keep,
                         unsigned long long seed, const long long* counter_base,
                         long long counter_offset)
{
    const DropoutCall<T> drop = make_dropout<T, DROPOUT>(keep, seed, counter_base,
                                                         counter_offset);
    const long long groups = (size + 3) / 4;
    for (long long g = global_thread_id(); g < groups; g += grid_threads()) {
        Philox4 r = {{0u, 0u, 0u, 0u}};
        if constexpr (DROPOUT) r = drop.words(g);
        for (int q = 0; q < 4; ++q) {
            const long long i = 4 * g + q;
            if (i < size) {
                const bool kept = DROPOUT ? drop.kept_word(r.w[q]) : true;
                out[i] = backward_element<T, ACT, DROPOUT>(delta[i], a[i], kept, drop);
            }
        }
    }
}

// out = phi(z) over size elements (out may alias z): an output activation on its own, e.g. the
// sigmoid of a classifier's logits at inference.  Launch: the flat geometry of optim.cu.
template <typename T, int ACT>
__global__ void apply_act(T* out, const T* z, long long size)
{
    for (long long i = global_thread_id(); i < size; i += grid_threads())
        out[i] = act_forward<ACT>(z[i]);
}
