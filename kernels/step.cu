// Device-side bookkeeping of a training step captured in a CUDA graph.  A graph replays its
// kernels with the arguments they were captured with, so what changes from step to step (the
// minibatch's first row, the dropout call counter, the optimizer's step count) lives in
// device memory and this kernel moves it on.  Launch: one block of one thread.
#include "common.cuh"

// start += rows; counter_base += counters_per_step; step += 1.
__global__ void advance_step(long long* start, long long rows, long long* counter_base,
                             long long counters_per_step, int* step)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        start[0] += rows;
        counter_base[0] += counters_per_step;
        step[0] += 1;
    }
}
