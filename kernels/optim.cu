// Optimizer updates over the whole flat parameter buffer in one launch, as in
// Backend.adam_step / Backend.sgd_step.  Launch: block (256, 1, 1),
// grid min(ceil(size / 256), 65535).
//
// Values that change every step (lr, Adam's step count) are read from device memory so a
// captured CUDA graph replays with the current values; constant hyperparameters are doubles
// (what CuPy passes for a Python float) and are rounded to T where base.py rounds them, so
// Adam's bias correction is computed in double exactly as base.py does.
#include "common.cuh"

// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), with t = *step >= 1.
template <typename T>
__global__ void adam_step(T* params, T* m, T* v, const T* grads, long long size, const T* lr,
                          const int* step, double beta1, double beta2, double eps)
{
    const double t = (double)step[0];
    const T lr_t = T((double)lr[0] * sqrt(1.0 - pow(beta2, t)) / (1.0 - pow(beta1, t)));
    const T b1 = T(beta1), c1 = T(1.0 - beta1), b2 = T(beta2), c2 = T(1.0 - beta2);
    const T e = T(eps);
    for (long long i = global_thread_id(); i < size; i += grid_threads()) {
        const T g = grads[i];
        const T mi = m[i] * b1 + c1 * g;
        const T vi = v[i] * b2 + c2 * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] -= lr_t * mi / (m_sqrt(vi) + e);
    }
}

// velocity = momentum velocity - lr g; p += velocity, or with Nesterov
// p += momentum velocity - lr g (scikit-learn's rule).
template <typename T, bool NESTEROV>
__global__ void sgd_step(T* params, T* velocity, const T* grads, long long size, const T* lr,
                         double momentum)
{
    const T mu = T(momentum), eta = lr[0];
    for (long long i = global_thread_id(); i < size; i += grid_threads()) {
        const T g = grads[i];
        const T vel = velocity[i] * mu - eta * g;
        velocity[i] = vel;
        if constexpr (NESTEROV) params[i] += mu * vel - eta * g;
        else params[i] += vel;
    }
}
