// The per-element forward and backward operations shared by the fused GEMM epilogues and the
// standalone elementwise kernels, so both paths compute exactly the same expression as
// Backend.affine_act / Backend.act_grad in gpumlp/backends/base.py.
#ifndef GPUMLP_POINTWISE_CUH
#define GPUMLP_POINTWISE_CUH

#include "activations.cuh"
#include "philox.cuh"

// phi(z), then inverted dropout: out *= mask / keep (dropped elements become a * 0).
template <typename T, int ACT, bool DROPOUT>
__device__ __forceinline__ T forward_element(T z, bool kept, const DropoutCall<T>& d)
{
    const T a = act_forward<ACT>(z);
    if constexpr (DROPOUT) return a * (kept ? d.scale : T(0));
    return a;
}

// delta * phi'(A) from the stored output a.  With dropout a = A * mask / keep: the mask is
// regenerated, A = a * keep where kept, and dropped elements get zero.
template <typename T, int ACT, bool DROPOUT>
__device__ __forceinline__ T backward_element(T delta, T a, bool kept, const DropoutCall<T>& d)
{
    if constexpr (DROPOUT) {
        if (!kept) return T(0);
        return delta * act_slope_from_output<ACT>(a * d.keep) / d.keep;
    }
    return delta * act_slope_from_output<ACT>(a);
}

#endif
