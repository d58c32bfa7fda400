// The kernels of kernels/*.cu compiled for the CPU (see cuda_host_compat.h), exported to
// Python through ctypes.  One entry point per kernel template:
//
//   int run_<kernel>(int dtype_bits, int p1, int p2, int p3, unsigned gx, unsigned gy,
//                    unsigned gz, unsigned bx, unsigned by, void** args, const int* tags,
//                    int nargs)
//
// dtype_bits (32/64) and the template parameters p1, p2, p3 (activation code, dropout, GEMM
// tile, nesterov, in template order; unused ones ignored) pick the instantiation at run time; args points at
// the kernel arguments exactly as cuLaunchKernel's kernelParams, and tags[i] says what type
// the caller marshalled argument i as (the codes of arg_tag below).  As on a GPU, a kernel
// reads each argument as its declared C++ type whatever was passed, so an argument whose
// type differs (a double where the kernel declares float, an int64 where it declares int) is
// rejected here instead of being silently converted.  Returns 0; -1 for a template parameter
// with no instantiation; -2 for a wrong number of arguments; 100 + i when argument i has the
// wrong type.
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_host_compat.h"

#include "epilogue.cu"
#include "gather.cu"
#include "gemm.cu"
#include "loss.cu"
#include "optim.cu"
#include "step.cu"

// Type codes shared with tests/kernels/harness.py (ARG_TAGS there).
constexpr int kPointerTag = 16;  // pointer to X: kPointerTag + code of X
constexpr int kNullTag = 32;     // a null pointer (None): accepted for any pointer parameter

template <typename P>
constexpr int arg_tag()
{
    using U = std::remove_cv_t<P>;
    if constexpr (std::is_pointer_v<U>)
        return kPointerTag + arg_tag<std::remove_cv_t<std::remove_pointer_t<U>>>();
    else if constexpr (std::is_same_v<U, float>) return 1;
    else if constexpr (std::is_same_v<U, double>) return 2;
    else if constexpr (std::is_same_v<U, int>) return 3;
    else if constexpr (std::is_same_v<U, long long>) return 4;
    else if constexpr (std::is_same_v<U, unsigned long long>) return 5;
    else if constexpr (std::is_same_v<U, bool>) return 6;
    else static_assert(sizeof(U) == 0, "kernel parameter type without a tag");
}

namespace {

template <typename... P, std::size_t... I>
int launch_unpacked(dim3 grid, dim3 block, void (*kernel)(P...), void** args, const int* tags,
                    int nargs, std::index_sequence<I...>)
{
    if (nargs != static_cast<int>(sizeof...(P))) return -2;
    constexpr int declared[] = {arg_tag<P>()...};
    for (int i = 0; i < nargs; ++i) {
        const bool null_for_pointer = tags[i] == kNullTag && declared[i] >= kPointerTag;
        if (tags[i] != declared[i] && !null_for_pointer) return 100 + i;
    }
    compat_launch(grid, block, kernel, *static_cast<std::remove_cv_t<P>*>(args[I])...);
    return 0;
}

template <typename... P>
int launch_packed(dim3 grid, dim3 block, void (*kernel)(P...), void** args, const int* tags,
                  int nargs)
{
    return launch_unpacked(grid, block, kernel, args, tags, nargs,
                           std::index_sequence_for<P...>{});
}

template <int... Codes, typename F>
bool with_int(int value, std::integer_sequence<int, Codes...>, F&& f)
{
    return ((value == Codes ? (f(std::integral_constant<int, Codes>{}), true) : false) || ...);
}

template <typename F>
bool with_dtype(int bits, F&& f)
{
    if (bits == 32) return f(float{}), true;
    if (bits == 64) return f(double{}), true;
    return false;
}

template <typename F>
bool with_bool(int flag, F&& f)
{
    flag ? f(std::true_type{}) : f(std::false_type{});
    return true;
}

using AllActs = std::make_integer_sequence<int, 6>;
using DifferentiableActs = std::make_integer_sequence<int, 5>;  // no hard_limit
using GemmTiles = std::make_integer_sequence<int, 4>;          // GPUMLP_GEMM_TILE_*

// The TF32 tile exists for float only (tensor cores take float inputs).
template <typename T, int TILE>
constexpr bool gemm_instantiated = std::is_same_v<T, float> || TILE != GPUMLP_GEMM_TILE_TF32;

}  // namespace

#define HARNESS_ENTRY(name) \
    extern "C" int run_##name(int bits, int p1, int p2, int p3, unsigned gx, unsigned gy, \
                              unsigned gz, unsigned bx, unsigned by, void** args, \
                              const int* tags, int nargs)
#define HARNESS_GEOMETRY dim3{gx, gy, gz}, dim3{bx, by, 1}
#define HARNESS_ARGS args, tags, nargs

// GEMM kernels templated on <T, ACT, bool, TILE>.
#define HARNESS_ACT_FLAG_TILE(name, acts) \
    HARNESS_ENTRY(name) \
    { \
        int status = -1; \
        with_dtype(bits, [&](auto t) { \
            using T = decltype(t); \
            with_int(p1, acts{}, [&](auto act) { \
                with_bool(p2, [&](auto flag) { \
                    with_int(p3, GemmTiles{}, [&](auto tile) { \
                        if constexpr (gemm_instantiated<T, tile.value>) \
                            status = launch_packed( \
                                HARNESS_GEOMETRY, name<T, act.value, flag.value, tile.value>, \
                                HARNESS_ARGS); \
                    }); \
                }); \
            }); \
        }); \
        return status; \
    }

// Kernels templated on <T, ACT, bool>.
#define HARNESS_ACT_FLAG(name, acts) \
    HARNESS_ENTRY(name) \
    { \
        (void)p3; \
        int status = -1; \
        with_dtype(bits, [&](auto t) { \
            using T = decltype(t); \
            with_int(p1, acts{}, [&](auto act) { \
                with_bool(p2, [&](auto flag) { \
                    status = launch_packed(HARNESS_GEOMETRY, name<T, act.value, flag.value>, \
                                           HARNESS_ARGS); \
                }); \
            }); \
        }); \
        return status; \
    }

// Kernels templated on <T> only.
#define HARNESS_PLAIN(name) \
    HARNESS_ENTRY(name) \
    { \
        (void)p1; \
        (void)p2; \
        (void)p3; \
        int status = -1; \
        with_dtype(bits, [&](auto t) { \
            status = launch_packed(HARNESS_GEOMETRY, name<decltype(t)>, HARNESS_ARGS); \
        }); \
        return status; \
    }

HARNESS_ACT_FLAG_TILE(gemm_bias_act, AllActs)
HARNESS_ACT_FLAG_TILE(gemm_backprop_act, DifferentiableActs)
HARNESS_ACT_FLAG(bias_act, AllActs)
HARNESS_ACT_FLAG(act_grad, DifferentiableActs)
HARNESS_PLAIN(softmax_xent)

// apply_act<T, ACT>: the activation is its first template parameter after T.
HARNESS_ENTRY(apply_act)
{
    (void)p2;
    (void)p3;
    int status = -1;
    with_dtype(bits, [&](auto t) {
        with_int(p1, AllActs{}, [&](auto act) {
            status = launch_packed(HARNESS_GEOMETRY, apply_act<decltype(t), act.value>,
                                   HARNESS_ARGS);
        });
    });
    return status;
}

HARNESS_PLAIN(softmax_rows)
HARNESS_PLAIN(sigmoid_bce)
HARNESS_PLAIN(squared_error)
HARNESS_PLAIN(add_weights_l2_loss)
HARNESS_PLAIN(adam_step)
HARNESS_PLAIN(gather_rows)
HARNESS_PLAIN(gather_batch)

// GEMMs templated on <T, TILE> (no activation): the tile is the first parameter after T.
#define HARNESS_TILE(name) \
    HARNESS_ENTRY(name) \
    { \
        (void)p2; \
        (void)p3; \
        int status = -1; \
        with_dtype(bits, [&](auto t) { \
            with_int(p1, GemmTiles{}, [&](auto tile) { \
                if constexpr (gemm_instantiated<decltype(t), tile.value>) \
                    status = launch_packed(HARNESS_GEOMETRY, name<decltype(t), tile.value>, \
                                           HARNESS_ARGS); \
            }); \
        }); \
        return status; \
    }

HARNESS_TILE(gemm_weight_grads)
HARNESS_TILE(gemm_softmax_xent)

// sgd_step<T, bool NESTEROV>: the flag is its first template parameter after T.
HARNESS_ENTRY(sgd_step)
{
    (void)p2;
    (void)p3;
    int status = -1;
    with_dtype(bits, [&](auto t) {
        with_bool(p1, [&](auto nesterov) {
            status = launch_packed(HARNESS_GEOMETRY, sgd_step<decltype(t), nesterov.value>,
                                   HARNESS_ARGS);
        });
    });
    return status;
}

// advance_step has no template parameters.
HARNESS_ENTRY(advance_step)
{
    (void)bits;
    (void)p1;
    (void)p2;
    (void)p3;
    return launch_packed(HARNESS_GEOMETRY, advance_step, HARNESS_ARGS);
}
