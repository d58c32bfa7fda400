// Activation functions and their derivatives from the OUTPUT a = phi(z); the integer codes and
// the leaky slope are those of gpumlp/activations.py.  Each mirrors the NumPy expression there
// (including NaN propagation and the sign-split sigmoid) so results agree to rounding.
#ifndef GPUMLP_ACTIVATIONS_CUH
#define GPUMLP_ACTIVATIONS_CUH

#include "common.cuh"

#define GPUMLP_ACT_IDENTITY 0
#define GPUMLP_ACT_RELU 1
#define GPUMLP_ACT_LEAKY_RELU 2
#define GPUMLP_ACT_SIGMOID 3
#define GPUMLP_ACT_TANH 4
#define GPUMLP_ACT_HARD_LIMIT 5  // forward (inference) only: no derivative
#define GPUMLP_LEAKY_SLOPE 0.01

template <int ACT, typename T>
__device__ __forceinline__ T act_forward(T z)
{
    static_assert(ACT >= 0 && ACT <= 5, "unknown activation code");
    if constexpr (ACT == GPUMLP_ACT_IDENTITY) {
        return z;
    } else if constexpr (ACT == GPUMLP_ACT_RELU) {
        return z < T(0) ? T(0) : z;  // NaN propagates, as numpy.maximum
    } else if constexpr (ACT == GPUMLP_ACT_LEAKY_RELU) {
        return z < T(0) ? z * T(GPUMLP_LEAKY_SLOPE) : z;
    } else if constexpr (ACT == GPUMLP_ACT_SIGMOID) {
        // e^{-|z|} never overflows; split by sign as activations.apply does.
        const T e = m_exp(-m_abs(z));
        return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
    } else if constexpr (ACT == GPUMLP_ACT_TANH) {
        return m_tanh(z);
    } else {
        return z >= T(0) ? T(1) : T(0);
    }
}

template <int ACT, typename T>
__device__ __forceinline__ T act_slope_from_output(T a)
{
    static_assert(ACT >= 0 && ACT <= 4,
                  "no derivative for this activation code (hard_limit is inference only)");
    if constexpr (ACT == GPUMLP_ACT_IDENTITY) {
        return T(1);
    } else if constexpr (ACT == GPUMLP_ACT_RELU) {
        return a > T(0) ? T(1) : T(0);
    } else if constexpr (ACT == GPUMLP_ACT_LEAKY_RELU) {
        return a > T(0) ? T(1) : T(GPUMLP_LEAKY_SLOPE);
    } else if constexpr (ACT == GPUMLP_ACT_SIGMOID) {
        return a * (T(1) - a);
    } else {
        return T(1) - a * a;
    }
}

#endif
