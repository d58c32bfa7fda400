"""How each fused GEMM is launched: its tile, its split-K factor, and the split-K scratch.

At MNIST sizes the output of a layer is small (a 256 x 256 output is 4 tiles of 128 x 128),
so a grid of output tiles alone leaves most of an H100's 132 SMs idle.  :func:`choose`
estimates, for every tile of :data:`gpumlp.backends.cuda.kernels.GEMM_TILES` and split-K factor, the time
from the number of waves the blocks make over the device's SMs, and picks the fastest:

* compute: the FMAs of the busiest SM's blocks at the tile's efficiency (the FFMA share of
  its main loop) times the share of the SM's issue rate its resident warps reach, or the
  operand traffic of all blocks through L2 if that takes longer (thin tiles reload their
  operands often), plus a fill / drain latency per wave.  How many blocks an SM holds follows
  from the kernel's registers and shared memory (:data:`KERNEL_RESOURCES`, ptxas figures)
  and the SM's limits, as CUDA's occupancy calculator counts them; an SM's warps are dealt
  over its 4 schedulers, and a scheduler issues every cycle only with
  :data:`WARPS_PER_SCHEDULER` warps (one 2-warp block alone on an SM reaches a quarter of
  its FMA rate);
* split-K reduction (splits > 1): every split writes its partial tile and the last block
  reads them all back (``2 x splits x tiles x BM x BN`` elements through memory) and waits
  on the per-tile counter.

The constants are H100 (SXM) figures and SASS counts (the FFMA share of each tile's main
loop, ``pytest -m kernels tests/test_kernels_sass.py``), not measurements; the split into
waves is what matters at these sizes.  The SM count is the device's when one is present.
The choice is deterministic for a given (shape, dtype, SM count): split-K sums in a fixed
order, so a given device always produces the same bits.

Split-K launches need a workspace and zeroed per-tile counters (the kernels leave them
zeroed); :func:`scratch` keeps one pair per plan in a table its caller owns (a run's,
:class:`gpumlp.backends.cuda.run.DeviceRun`), allocated once and never freed or resized
while that table lives, so a CUDA graph that captured their addresses stays valid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels

__all__ = ["DEFAULT_SM_COUNT", "GemmPlan", "choose", "device_sm_count", "estimate_us",
           "issue_share", "resident_blocks", "scratch", "softmax_xent_plan", "GEMM_SHAPES"]

#: SMs of an H100 SXM, used when no device can be asked.
DEFAULT_SM_COUNT = 132
#: FP32 FMAs per microsecond of one H100 SM (128 lanes at about 1.75 GHz).
FMA_PER_SM_US = 128 * 1755.0
#: Device memory bandwidth in bytes per microsecond (HBM3, about 3.35 TB/s).
BYTES_PER_US = 3.35e6
#: L2 bandwidth in bytes per microsecond (about 5.5 TB/s): the operand tiles' source.
L2_BYTES_PER_US = 5.5e6
#: Latency to fill and drain one wave of blocks (prologue copies, epilogue stores), µs.
WAVE_LATENCY_US = 1.0
#: Extra latency of the split-K handshake (fence, counter, second read of partials), µs.
SPLIT_LATENCY_US = 0.7
#: Largest split-K factor tried.
MAX_SPLITS = 32
#: An H100 SM (compute capability 9.0): its 4 schedulers, each with a quarter of the
#: registers (a warp's come from its scheduler's share, 256 at a time), shared memory (1 KB
#: of it reserved per block), threads and blocks.
SM_SCHEDULERS = 4
SM_REGISTERS = 65536
REGISTER_UNIT = 256
SM_SHARED_BYTES = 228 * 1024
SHARED_RESERVED_PER_BLOCK = 1024
SM_THREADS = 2048
SM_BLOCKS = 32
#: Warps a scheduler needs to issue every cycle in these main loops: an assumption of the
#: model, not a measurement.  One warp alone stalls on its shared-memory loads (about 30
#: cycles) and barriers between runs of FMAs; a second fills those gaps.
WARPS_PER_SCHEDULER = 2
#: Per tile: the share of the main loop's issue slots that are FFMA (sm_90 SASS, see
#: benchmarks/README.md).  The TF32 tile (3) is given its rate in FP32-FMA equivalents: its
#: main loop is bound by instruction issue (fragment loads and TF32 rounding around the
#: HMMA), and by the SASS count does about 2.6x the multiply-adds per issue slot of the FP32
#: 128x128 tile: 0.87 x 2.6.
TILE_EFFICIENCY: dict[int, float] = {0: 0.74, 1: 0.87, 2: 0.63, 3: 2.2}
#: (registers per thread, static shared bytes per block) of each fused GEMM's instantiation,
#: by (kernel, dtype, tile): ptxas for sm_90 with the run-time options, checked against nvcc
#: by tests/test_kernels_sass.py.  Activation and dropout change them by a few registers,
#: never the blocks an SM holds.
KERNEL_RESOURCES: dict[tuple[str, str, int], tuple[int, int]] = {
    ("gemm_bias_act", "float32", 0): (102, 17412),
    ("gemm_bias_act", "float32", 1): (182, 33796),
    ("gemm_bias_act", "float32", 2): (108, 11268),
    ("gemm_bias_act", "float32", 3): (173, 34820),
    ("gemm_bias_act", "float64", 0): (126, 34820),
    ("gemm_backprop_act", "float32", 0): (87, 17412),
    ("gemm_backprop_act", "float32", 1): (168, 33796),
    ("gemm_backprop_act", "float32", 3): (168, 34820),
    ("gemm_backprop_act", "float64", 0): (126, 34820),
    ("gemm_weight_grads", "float32", 0): (115, 17412),
    ("gemm_weight_grads", "float32", 1): (176, 33796),
    ("gemm_weight_grads", "float32", 2): (108, 11268),
    ("gemm_weight_grads", "float32", 3): (181, 34820),
    ("gemm_weight_grads", "float64", 0): (128, 34820),
    ("gemm_softmax_xent", "float32", 0): (100, 22532),
    ("gemm_softmax_xent", "float32", 1): (236, 43012),
    ("gemm_softmax_xent", "float32", 2): (93, 12548),
    ("gemm_softmax_xent", "float32", 3): (240, 37124),
    ("gemm_softmax_xent", "float64", 0): (128, 45060),
}

#: kernel -> how its (M, N, K) follow from the backend's (n, k, m) sizes.
GEMM_SHAPES = {
    "gemm_bias_act": "output n x m, inner k",
    "gemm_backprop_act": "output n x k, inner m",
    "gemm_weight_grads": "output k x m, inner n",
    "gemm_softmax_xent": "output n x m, inner k (whole rows per block: m <= the tile's BN)",
}
#: The fused-softmax forward saves a launch and the logits' round trip through memory; it is
#: worth a tile no worse by :func:`estimate_us` than the plain forward's plus this much (µs:
#: the loss kernel's fill and drain, about one wave), see :func:`softmax_xent_plan`.
SOFTMAX_KERNEL_US = WAVE_LATENCY_US


@dataclass(frozen=True)
class GemmPlan:
    """One launch of a fused GEMM with an ``M x N`` output and inner size ``K``."""

    kernel: str
    M: int
    N: int
    K: int
    tile: int
    splits: int
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    #: Elements of T the split-K workspace needs (0 with one split).
    workspace_size: int
    #: Ints of the per-tile counters (0 with one split).
    counter_size: int
    estimate_us: float


def _tiles(M: int, N: int, tile: int) -> tuple[int, int]:
    bm, bn, _, _ = kernels.GEMM_TILES[tile]
    return -(-M // bm), -(-N // bn)


def resident_blocks(registers: int, shared_bytes: int, threads: int) -> int:
    """Blocks of a kernel one H100 SM holds at once (CUDA's occupancy calculator's count:
    registers per scheduler, shared memory, threads, blocks)."""
    warps = -(-threads // 32)
    warp_registers = -(-max(registers, 1) * 32 // REGISTER_UNIT) * REGISTER_UNIT
    warps_by_registers = SM_SCHEDULERS * (SM_REGISTERS // SM_SCHEDULERS // warp_registers)
    by_shared = SM_SHARED_BYTES // (shared_bytes + SHARED_RESERVED_PER_BLOCK)
    return min(warps_by_registers // warps, by_shared, SM_THREADS // (32 * warps), SM_BLOCKS)


def issue_share(warps: int) -> float:
    """The share of an SM's issue rate ``warps`` resident warps reach: dealt round-robin
    over the schedulers, each at full rate with :data:`WARPS_PER_SCHEDULER` warps."""
    per = [warps // SM_SCHEDULERS + (s < warps % SM_SCHEDULERS) for s in range(SM_SCHEDULERS)]
    return sum(min(1.0, w / WARPS_PER_SCHEDULER) for w in per) / SM_SCHEDULERS


def tile_residency(kernel: str, dtype_name: str, tile: int) -> int:
    """Blocks of ``kernel``'s ``tile`` instantiation an SM holds (:data:`KERNEL_RESOURCES`)."""
    registers, shared = KERNEL_RESOURCES[(kernel, dtype_name, tile)]
    return resident_blocks(registers, shared, kernels.GEMM_TILES[tile][3])


def estimate_us(M: int, N: int, K: int, tile: int, splits: int,
                sm_count: int = DEFAULT_SM_COUNT, itemsize: int = 4,
                kernel: str = "gemm_bias_act") -> float:
    """The model's time (µs) of one launch; see the module docstring."""
    bm, bn, bk, threads = kernels.GEMM_TILES[tile]
    resident = tile_residency(kernel, "float64" if itemsize == 8 else "float32", tile)
    efficiency = TILE_EFFICIENCY[tile]
    tiles_m, tiles_n = _tiles(M, N, tile)
    k_tiles = max(1, -(-K // bk))
    per_split = -(-k_tiles // splits)
    blocks = tiles_m * tiles_n * splits
    waves = -(-blocks // (sm_count * resident))
    # A partial last wave leaves SMs with fewer blocks, which then run faster; count the
    # SMs' load rather than whole waves once there is more than one.
    busiest = -(-blocks // sm_count)  # blocks on the busiest SM
    together = min(busiest, resident)  # of them at once
    block_fmas = bm * bn * per_split * bk
    if itemsize == 8:
        efficiency /= 2.0  # FP64 at half the FP32 rate on H100
    rate = FMA_PER_SM_US * efficiency * issue_share(together * -(-threads // 32))
    fma_time = busiest * block_fmas / rate
    operand_bytes = blocks * (bm + bn) * per_split * bk * itemsize
    compute = max(fma_time, operand_bytes / L2_BYTES_PER_US) + waves * WAVE_LATENCY_US
    if splits == 1:
        return compute
    traffic = 2 * splits * tiles_m * tiles_n * bm * bn * itemsize
    return compute + traffic / BYTES_PER_US + SPLIT_LATENCY_US


def _check_sizes(kernel: str, M: int, N: int, K: int, sm_count: int) -> None:
    if kernel not in GEMM_SHAPES:
        raise ValueError(f"kernel={kernel!r} is not a GEMM; choose one of {sorted(GEMM_SHAPES)}")
    for name, value in (("M", M), ("N", N), ("K", K)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative integer")
    if isinstance(sm_count, bool) or not isinstance(sm_count, (int, np.integer)) \
            or sm_count < 1:
        raise ValueError(f"sm_count={sm_count!r} must be a positive integer")


@functools.lru_cache(maxsize=4096)
def _choose(kernel: str, dtype_name: str, M: int, N: int, K: int, sm_count: int,
            tile: int | None, splits: int | None, precision: str) -> GemmPlan:
    itemsize = np.dtype(dtype_name).itemsize
    tiles = kernels.gemm_tiles(kernel, dtype_name, precision) if tile is None else (tile,)
    if kernel == "gemm_softmax_xent":  # a block must hold whole output rows
        tiles = tuple(t for t in tiles if kernels.GEMM_TILES[t][1] >= N)
        if not tiles:
            raise ValueError(f"gemm_softmax_xent needs N={N} <= the BN of a {dtype_name} "
                             f"{precision} tile; no tile is that wide")
    best = None
    for t in tiles:
        bk = kernels.GEMM_TILES[t][2]
        k_tiles = max(1, -(-K // bk))
        # Only splits that give every split a k-tile of its own, and whose count is not
        # beaten by a smaller one with the same k-tiles per split.
        choices = (splits,) if splits is not None else sorted({
            -(-k_tiles // per) for per in range(1, k_tiles + 1)
            if -(-k_tiles // per) <= MAX_SPLITS})
        for s in choices:
            cost = estimate_us(M, N, K, t, s, sm_count, itemsize, kernel)
            key = (round(cost, 6), s, -kernels.GEMM_TILES[t][0] * kernels.GEMM_TILES[t][1])
            if best is None or key < best[0]:
                best = (key, t, s, cost)
    _, t, s, cost = best
    grid, block = kernels.launch_config(kernel, M, N, tile=t, splits=s)
    tiles_m, tiles_n = _tiles(M, N, t)
    bm, bn, _, _ = kernels.GEMM_TILES[t]
    workspace = s * (tiles_m * tiles_n * bm * bn + tiles_n * bn) if s > 1 else 0
    return GemmPlan(kernel, M, N, K, t, s, grid, block, workspace,
                    tiles_m * tiles_n if s > 1 else 0, cost)


def choose(kernel: str, dtype: Any, M: int, N: int, K: int, sm_count: int = DEFAULT_SM_COUNT,
           tile: int | None = None, splits: int | None = None,
           precision: str = "float32") -> GemmPlan:
    """The launch plan of ``kernel`` for an ``M x N`` output with inner size ``K``.

    ``tile`` and ``splits`` force a choice (tests, tuning); otherwise the fastest by
    :func:`estimate_us` over the tiles instantiated for ``dtype`` that compute in
    ``precision`` (``"tf32"``: the tensor-core tile, float32 only).  Cached.

    Examples
    --------
    >>> plan = choose("gemm_bias_act", "float32", 256, 256, 784)
    >>> plan.splits > 1  # 4 output tiles would leave most of 132 SMs idle
    True
    """
    _check_sizes(kernel, M, N, K, sm_count)
    dtype_name = kernels._dtype_name(dtype)
    kernels.check_precision(precision, dtype_name)
    if tile is not None and tile not in kernels.gemm_tiles(kernel, dtype_name):
        raise ValueError(f"tile={tile!r} has no {kernel} {dtype_name} instantiation; "
                         f"allowed: {kernels.gemm_tiles(kernel, dtype_name)}")
    if splits is not None and (isinstance(splits, bool) or not isinstance(splits, (int, np.integer))
                               or not 1 <= splits <= kernels.MAX_GRID_Z):
        raise ValueError(f"splits={splits!r} must be an integer in [1, {kernels.MAX_GRID_Z}]")
    return _choose(kernel, dtype_name, int(M), int(N), int(K), int(sm_count),
                   None if tile is None else int(tile), None if splits is None else int(splits),
                   precision)


def softmax_xent_plan(dtype: Any, n: int, k: int, m: int, sm_count: int = DEFAULT_SM_COUNT,
                      precision: str = "float32") -> GemmPlan | None:
    """The plan of the output layer's GEMM with softmax + cross-entropy fused in its epilogue
    (``gemm_softmax_xent``, logits ``n x m``, inner ``k``), or ``None`` where it does not pay.

    It pays where a block can hold whole output rows (``m`` at most a tile's width) and the
    tiles that can are not slower, by :func:`estimate_us`, than the plain forward's plan by
    more than the loss kernel it saves (:data:`SOFTMAX_KERNEL_US`): a wide output (``m``
    beyond the narrow tile's 16 columns) forces a tile with fewer blocks, which may cost more
    than one launch at large batches.

    Examples
    --------
    >>> softmax_xent_plan("float32", 256, 256, 10).tile  # MNIST's 10 classes: narrow tile
    2
    >>> softmax_xent_plan("float32", 256, 256, 1000) is None  # no tile holds 1000 columns
    True
    """
    widest = max(kernels.GEMM_TILES[t][1] for t in
                 kernels.gemm_tiles("gemm_softmax_xent", dtype, precision))
    if m > widest or n == 0:
        return None
    fused = choose("gemm_softmax_xent", dtype, n, m, k, sm_count, precision=precision)
    plain = choose("gemm_bias_act", dtype, n, m, k, sm_count, precision=precision)
    if fused.estimate_us > plain.estimate_us + SOFTMAX_KERNEL_US:
        return None
    return fused


_SM_COUNTS: dict[Any, int] = {}


def device_sm_count(xp: Any) -> int:
    """The current device's SM count (``xp`` is CuPy), or :data:`DEFAULT_SM_COUNT`."""
    try:
        device = xp.cuda.Device().id
        if device not in _SM_COUNTS:
            props = xp.cuda.runtime.getDeviceProperties(device)
            _SM_COUNTS[device] = int(props["multiProcessorCount"])
        return _SM_COUNTS[device]
    except Exception:  # no device properties (a stand-in module): the H100 default
        return DEFAULT_SM_COUNT


def scratch(buffers: dict, xp: Any, plan: GemmPlan, dtype: Any) -> tuple[Any, Any]:
    """``(workspace, tile_counters)`` for ``plan``: ``(None, None)`` (null pointers) with one
    split, else device arrays kept in ``buffers`` (the table of the run that launches it).

    The arrays are made on first use (outside a capture: the eager warm-up step) and never
    freed or resized while ``buffers`` holds them, so captured graphs keep valid addresses.
    The counters start at zero and every launch leaves them at zero.  Launches that share a
    plan must not run concurrently (they are on one stream in gpumlp).
    """
    if plan.splits == 1:
        return None, None
    key = (plan.kernel, plan.M, plan.N, plan.K, plan.tile, plan.splits, np.dtype(dtype).str)
    if key not in buffers:
        buffers[key] = (xp.empty(plan.workspace_size, dtype=dtype),
                        xp.zeros(plan.counter_size, dtype=np.int32))
    return buffers[key]
