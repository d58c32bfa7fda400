// The kernels of kernels/*.cu compiled for the CPU (see cuda_host_compat.h), exported to
// Python through ctypes.  One entry point per kernel template:
//
//   int run_<kernel>(int dtype_bits, int p1, int p2, unsigned gx, unsigned gy, unsigned bx,
//                    unsigned by, void** args)
//
// dtype_bits (32/64) and the template flags p1, p2 (activation code, dropout, nesterov, in
// template order; unused ones ignored) pick the instantiation at run time; args points at
// the kernel arguments exactly as cuLaunchKernel's kernelParams, so the Python side packs
// them from the signatures in gpumlp.kernels.KERNELS.  Returns 0, or -1 for a template
// parameter with no instantiation.
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

namespace {

template <typename... P, std::size_t... I>
void launch_unpacked(dim3 grid, dim3 block, void (*kernel)(P...), void** args,
                     std::index_sequence<I...>)
{
    compat_launch(grid, block, kernel, *static_cast<std::remove_cv_t<P>*>(args[I])...);
}

template <typename... P>
void launch_packed(dim3 grid, dim3 block, void (*kernel)(P...), void** args)
{
    launch_unpacked(grid, block, kernel, args, std::index_sequence_for<P...>{});
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

}  // namespace

#define HARNESS_ENTRY(name) \
    extern "C" int run_##name(int bits, int p1, int p2, unsigned gx, unsigned gy, \
                              unsigned bx, unsigned by, void** args)
#define HARNESS_GEOMETRY dim3{gx, gy, 1}, dim3{bx, by, 1}

// Kernels templated on <T, ACT, bool>.
#define HARNESS_ACT_FLAG(name, acts) \
    HARNESS_ENTRY(name) \
    { \
        (void)p2; \
        bool ok = with_dtype(bits, [&](auto t) { \
            using T = decltype(t); \
            return with_int(p1, acts{}, [&](auto act) { \
                with_bool(p2, [&](auto flag) { \
                    launch_packed(HARNESS_GEOMETRY, name<T, act.value, flag.value>, args); \
                }); \
            }); \
        }); \
        return ok ? 0 : -1; \
    }

// Kernels templated on <T> only.
#define HARNESS_PLAIN(name) \
    HARNESS_ENTRY(name) \
    { \
        (void)p1; \
        (void)p2; \
        bool ok = with_dtype(bits, [&](auto t) { \
            launch_packed(HARNESS_GEOMETRY, name<decltype(t)>, args); \
        }); \
        return ok ? 0 : -1; \
    }

HARNESS_ACT_FLAG(gemm_bias_act, AllActs)
HARNESS_ACT_FLAG(gemm_backprop_act, DifferentiableActs)
HARNESS_ACT_FLAG(bias_act, AllActs)
HARNESS_ACT_FLAG(act_grad, DifferentiableActs)
HARNESS_PLAIN(gemm_weight_grads)
HARNESS_PLAIN(softmax_xent)
HARNESS_PLAIN(softmax_rows)
HARNESS_PLAIN(sigmoid_bce)
HARNESS_PLAIN(squared_error)
HARNESS_PLAIN(adam_step)
HARNESS_PLAIN(gather_rows)

// sgd_step<T, bool NESTEROV>: the flag is its first template parameter after T.
HARNESS_ENTRY(sgd_step)
{
    (void)p2;
    bool ok = with_dtype(bits, [&](auto t) {
        with_bool(p1, [&](auto nesterov) {
            launch_packed(HARNESS_GEOMETRY, sgd_step<decltype(t), nesterov.value>, args);
        });
    });
    return ok ? 0 : -1;
}

// advance_step has no template parameters.
HARNESS_ENTRY(advance_step)
{
    (void)bits;
    (void)p1;
    (void)p2;
    launch_packed(HARNESS_GEOMETRY, advance_step, args);
    return 0;
}
