// Philox4x32-10 and the inverted-dropout keep test, bit-identical to gpumlp/dropout.py:
// element i uses word i%4 of philox(counter=(i/4 lo, i/4 hi, call lo, call hi),
// key=(seed lo, seed hi)) and is kept iff float(word >> 8) * 2^-24 < float(keep).
#ifndef GPUMLP_PHILOX_CUH
#define GPUMLP_PHILOX_CUH

#include "common.cuh"

struct Philox4 {
    unsigned int w[4];
};

__device__ __forceinline__ Philox4 philox4x32_10(unsigned int c0, unsigned int c1,
                                                 unsigned int c2, unsigned int c3,
                                                 unsigned int k0, unsigned int k1)
{
    for (int round = 0; round < 10; ++round) {
        const unsigned int hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const unsigned int hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const unsigned int n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    Philox4 r = {{c0, c1, c2, c3}};
    return r;
}

// One dropout call: key, call counter and keep probability, fixed for the whole launch.
// The call counter is counter_base[0] + counter_offset so a captured CUDA graph draws a
// fresh mask each replay once the device-side base is bumped.
template <typename T>
struct DropoutCall {
    unsigned int key0, key1, call0, call1;
    float keep_f;  // the comparison is float32 in dropout.py for every dtype
    T keep;        // A = a * keep recovers the undropped output in the backward pass
    T scale;       // 1 / keep in T, as dropout.py's mask / dtype(keep)

    __device__ __forceinline__ Philox4 words(long long group) const
    {
        const unsigned long long g = (unsigned long long)group;
        return philox4x32_10((unsigned int)g, (unsigned int)(g >> 32), call0, call1, key0, key1);
    }
    __device__ __forceinline__ bool kept_word(unsigned int word) const
    {
        return (float)(word >> 8) * (1.0f / 16777216.0f) < keep_f;
    }
    // Keep test of a single element; kernels that own 4 consecutive elements call words() once.
    __device__ __forceinline__ bool kept(long long i) const
    {
        return kept_word(words(i >> 2).w[i & 3]);
    }
};

// counter_base is read only when DROPOUT (it may be null otherwise, and null means 0).
template <typename T, bool DROPOUT>
__device__ __forceinline__ DropoutCall<T> make_dropout(T keep, unsigned long long seed,
                                                       const long long* counter_base,
                                                       long long counter_offset)
{
    DropoutCall<T> d = {0u, 0u, 0u, 0u, 1.0f, T(1), T(1)};
    if constexpr (DROPOUT) {
        const unsigned long long call =
            (unsigned long long)((counter_base ? counter_base[0] : 0LL) + counter_offset);
        d.key0 = (unsigned int)seed;
        d.key1 = (unsigned int)(seed >> 32);
        d.call0 = (unsigned int)call;
        d.call1 = (unsigned int)(call >> 32);
        d.keep_f = (float)keep;
        d.keep = keep;
        d.scale = T(1) / keep;
    }
    return d;
}

#endif
