"""The multilayer perceptron: layer sizes, one flat parameter buffer, forward and backward.

All parameters live in one contiguous buffer (``W_1, b_1, W_2, b_2, ...``) and all gradients
in another of the same layout; layers hold views, each starting on a 16-byte boundary (the
gaps hold zeros) so the GPU kernels can use 128-bit loads on every view.  The optimizer then
updates every layer in one backend call.

A network holds no work buffers: whoever runs it owns them (:meth:`Network.new_workspace`).
The trainer keeps one per batch size it trains at, and each inference call makes its own, so
a model can be used from several threads at once and its memory does not grow with the batch
sizes it has seen.  Likewise the device state the backend's operations need (a GPU's step
scalars and scratch) belongs to a run (:meth:`gpumlp.backends.base.Backend.open_run`): the
caller passes the run's backend to :meth:`Network.forward` and
:meth:`Network.loss_and_gradients`, and each prediction opens and closes a run of its own.

Examples
--------
>>> import numpy as np
>>> from gpumlp.network import Network
>>> net = Network([4, 8, 3], activation="relu", loss="softmax_xent", seed=0)
>>> net.predict_output(np.ones((2, 4), dtype=np.float32)).shape
(2, 3)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import activations
from .backends import Backend, get_backend
from .dropout import Dropout
from .init import init_layer
from .losses import get_loss
from .precision import check_precision
from .summary import NetworkSummary, summarize

DTYPES = (np.float32, np.float64)
#: Every weight and bias view starts at a multiple of this many elements (16 bytes in float32).
ALIGN_ELEMENTS = 4


def check_dtype(dtype: Any) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64, else raise."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype={dtype!r} is not supported; use 'float32' or 'float64'")
    return resolved


class Workspace:
    """Activation and sensitivity buffers for up to ``batch`` rows."""

    def __init__(self, backend: Backend | None, sizes: Sequence[int], batch: int,
                 dtype: np.dtype, arrays: tuple[list, list] | None = None):
        self.batch = batch
        # a[l] is the output of layer l (a[0] is unused: the input is passed in).
        self.a, self.h = arrays or (
            [None] + [backend.empty((batch, d), dtype) for d in sizes[1:]],
            [None] + [backend.empty((batch, d), dtype) for d in sizes[1:]])

    def rows(self, n: int) -> "Workspace":
        """The first ``n`` rows of every buffer (contiguous views, no copy)."""
        if n == self.batch:
            return self
        if not 0 < n <= self.batch:
            raise ValueError(f"a workspace for {self.batch} rows cannot hold {n}")
        return Workspace(None, (), n, None, ([None] + [a[:n] for a in self.a[1:]],
                                             [None] + [h[:n] for h in self.h[1:]]))


class Network:
    """A fully connected network with a per-layer activation and a loss.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_inputs, hidden..., n_outputs]``; at least two entries.
    activation : str or sequence of str
        Hidden activation(s): one name for all hidden layers, or one per hidden layer.
    loss : {"softmax_xent", "sigmoid_bce", "squared_error"}
    output_activation : str, optional
        For ``squared_error`` only (default identity); the fused losses imply theirs.
    dtype, backend, seed
        Parameter dtype (float32 or float64), backend (name or instance) and init seed.
    precision : {"float32", "tf32"}
        Precision of the matrix products.  ``"tf32"`` (float32 parameters only) runs them on
        TF32 tensor cores on the CuPy backend (compute capability 8.0+; earlier GPUs compute
        in float32): inputs rounded to 10 mantissa bits, float32 accumulation; bias,
        activations, losses, bias gradients and updates stay float32.  TF32 is a GPU
        tensor-core mode: the NumPy backend emulates its rounding (same accuracy, no speed-up,
        an extra pass over the operands).  See :mod:`gpumlp.precision`.
    """

    def __init__(self, layer_sizes: Sequence[int], activation: str | Sequence[str] = "relu",
                 loss: str = "softmax_xent", output_activation: str | None = None,
                 dtype: Any = np.float32, backend: str | Backend | None = None,
                 seed: int | None = 0, precision: str = "float32", initialize: bool = True):
        self.sizes = _check_sizes(layer_sizes)
        n_hidden = len(self.sizes) - 2
        names = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        if len(names) != n_hidden:
            raise ValueError(f"activation has {len(names)} entries but the network has "
                             f"{n_hidden} hidden layers; give one name or one per layer")
        self.hidden_activations = [activations.canonical(a) for a in names]
        self.loss = get_loss(loss)
        if output_activation is not None and self.loss.from_logits:
            raise ValueError(f"output_activation={output_activation!r} cannot be set with "
                             f"loss={loss!r}, which implies {self.loss.output_activation!r}")
        self.output_activation = (activations.canonical(output_activation, "output_activation")
                                  if output_activation is not None
                                  else self.loss.output_activation)
        self.dtype = check_dtype(dtype)
        self.precision = check_precision(precision, self.dtype)
        self.backend = get_backend(backend)
        self._layout = _layout(self.sizes)
        size = self._layout[-1][1] + self.sizes[-1]
        self.params = self.backend.zeros(size, self.dtype)
        self._grads: Any = None  # made by the first use: a model that only predicts needs none
        self.weights, self.biases = self._views(self.params)
        # Captured forwards of repeated predictions (the backend's; None: it captures none).
        self._forward_replays = self.backend.forward_replays()
        if initialize:  # False: zeros, for a caller that sets every parameter (loading)
            self.initialize(seed)

    def __getstate__(self) -> dict:
        # Views would be pickled as copies and gradients are scratch: keep the parameters only.
        state = self.__dict__.copy()
        for name in ("_grads", "_grad_views", "weights", "biases",
                     "_forward_replays"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("precision", "float32")  # saved before precision existed
        params = self.params  # may be a read-only memory map: train on an owned copy
        self.params = self.backend.empty(params.shape, self.dtype)
        self.params[...] = params
        self._grads = None
        self.weights, self.biases = self._views(self.params)
        self.grads  # noqa: B018 - a twin trains (and may be captured) at once: allocate now
        self._forward_replays = self.backend.forward_replays()

    def __repr__(self) -> str:
        hidden = sorted(set(self.hidden_activations))
        activation = (repr(hidden[0]) if len(hidden) == 1 else repr(self.hidden_activations))
        return (f"Network({self.sizes}, activation={activation}, loss={self.loss.name!r}, "
                f"dtype={self.dtype.name}, backend={self.backend.name!r}, "
                f"precision={self.precision!r}, params={self.n_params:,})")

    def summary(self, optimizer: Any = None) -> NetworkSummary:
        """Layers, activations, parameter counts, FLOPs per sample and memory.

        Printed (or shown in a REPL) it is a table; :meth:`NetworkSummary.as_dict
        <gpumlp.summary.NetworkSummary.as_dict>` has the numbers.  ``optimizer`` (a solver
        name such as ``"adam"``, or an optimizer object) adds the memory of its state.

        Examples
        --------
        >>> net = Network([784, 256, 10], seed=0, backend="numpy")
        >>> print(net.summary("adam"))  # doctest: +ELLIPSIS
        Network: 2 dense layer(s), loss softmax_xent
        ...
        parameters        203,530
        ...
        """
        return summarize(self, optimizer)

    def copy(self) -> "Network":
        """A network of the same structure and parameters with buffers of its own (fresh
        gradients); training either leaves the other as it was."""
        twin = Network.__new__(Network)
        twin.__setstate__(self.__getstate__())  # copies the parameters into an owned buffer
        return twin

    def structure(self) -> tuple:
        """What the kernels of a step depend on besides the values: sizes, activations,
        loss, output activation, dtype and precision (hashable)."""
        return (tuple(self.sizes), tuple(self.hidden_activations), self.loss.operation,
                self.output_activation, self.dtype.str, self.precision)

    # ------------------------------------------------------------------------- gradients
    @property
    def grads(self) -> Any:
        """The flat gradient buffer (laid out as :attr:`params`), allocated on first use."""
        if self._grads is None:
            self._grads = self.backend.zeros(self.params.shape, self.dtype)
            self._grad_views = self._views(self._grads)
        return self._grads

    @grads.setter
    def grads(self, values: Any) -> None:  # ``net.grads *= 2`` assigns the buffer back
        self._grads = values
        self._grad_views = self._views(values)

    @property
    def weight_grads(self) -> list:
        """Views of :attr:`grads` per layer, shaped as :attr:`weights`."""
        self.grads  # noqa: B018 - allocates the buffer and its views on first use
        return self._grad_views[0]

    @property
    def bias_grads(self) -> list:
        """Views of :attr:`grads` per layer, shaped as :attr:`biases`."""
        self.grads  # noqa: B018 - allocates the buffer and its views on first use
        return self._grad_views[1]

    # ------------------------------------------------------------------------- parameters
    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def layer_activation(self, layer: int) -> str:
        """Activation applied by layer ``layer`` (0-based) during training."""
        if layer < self.n_layers - 1:
            return self.hidden_activations[layer]
        return "identity" if self.loss.from_logits else self.output_activation

    def _views(self, flat: Any) -> tuple[list, list]:
        weights, biases = [], []
        for (d_in, d_out), (w0, b0) in zip(zip(self.sizes[:-1], self.sizes[1:]), self._layout):
            weights.append(flat[w0:w0 + d_in * d_out].reshape(d_in, d_out))
            biases.append(flat[b0:b0 + d_out])
        return weights, biases

    @property
    def n_params(self) -> int:
        """Number of parameters (weights and biases, without the alignment gaps)."""
        return sum(d_in * d_out + d_out for d_in, d_out in zip(self.sizes[:-1], self.sizes[1:]))

    def initialize(self, seed: int | None) -> None:
        """Draw fresh weights (He or Glorot uniform, zero biases) from ``seed``."""
        rng = np.random.default_rng(seed)
        parts = []
        for layer in range(self.n_layers):
            act = self.hidden_activations[layer] if layer < self.n_layers - 1 else "identity"
            w, b = init_layer(rng, self.sizes[layer], self.sizes[layer + 1], act, self.dtype)
            parts += [w.ravel(), b]
        self.set_flat_params(np.concatenate(parts))

    def set_flat_params(self, values: Any) -> None:
        """Copy ``values`` (``W_1, b_1, W_2, b_2, ...`` packed, :attr:`n_params` of them) in."""
        values = self.backend.asarray(values, self.dtype).reshape(-1)
        if values.shape != (self.n_params,):
            raise ValueError(f"parameter vector has {values.shape[0]} values; "
                             f"this network needs {self.n_params}")
        pos = 0
        for start, size in self._spans():
            self.params[start:start + size] = values[pos:pos + size]
            pos += size

    def get_flat_params(self) -> np.ndarray:
        """A host copy of the parameters, packed as ``W_1, b_1, W_2, b_2, ...``."""
        host = self.backend.to_numpy(self.params)
        return np.concatenate([host[start:start + size] for start, size in self._spans()])

    def get_flat_grads(self) -> np.ndarray:
        """A host copy of the gradients, packed like :meth:`get_flat_params`."""
        host = self.backend.to_numpy(self.grads)
        return np.concatenate([host[start:start + size] for start, size in self._spans()])

    def _spans(self) -> list[tuple[int, int]]:
        """``(offset, size)`` of each weight and bias view in the flat buffer, in order."""
        spans = []
        for (d_in, d_out), (w0, b0) in zip(zip(self.sizes[:-1], self.sizes[1:]), self._layout):
            spans += [(w0, d_in * d_out), (b0, d_out)]
        return spans

    def weight_spans(self) -> tuple[tuple[int, int], ...]:
        """``(offset, size)`` of each layer's weights in :attr:`params` (biases excluded),
        as :meth:`Backend.add_weights_l2_loss <gpumlp.backends.base.Backend.add_weights_l2_loss>`
        takes them."""
        return tuple(self._spans()[::2])

    def l2_penalty(self) -> float:
        """``sum ||W_l||^2`` over all layers (biases excluded), as a host float."""
        xp = self.backend.xp
        return float(sum(float(xp.vdot(w, w)) for w in self.weights))

    def squared_weight_norm(self) -> Any:
        """``sum ||W_l||^2`` as a 0-d backend array (no host synchronisation)."""
        xp = self.backend.xp
        total = None
        for w in self.weights:
            flat = w.reshape(-1)
            total = xp.vdot(flat, flat) if total is None else total + xp.vdot(flat, flat)
        return total

    @property
    def _gemm_options(self) -> dict:
        """Keyword arguments of this network's GEMM operations: TF32 is passed on; float32
        calls stay the plain ones every backend takes."""
        return {} if self.precision == "float32" else {"precision": self.precision}

    # ----------------------------------------------------------------------------- buffers
    def new_workspace(self, batch: int) -> Workspace:
        """New work buffers for up to ``batch`` rows; the caller owns (and keeps) them."""
        return Workspace(self.backend, self.sizes, batch, self.dtype)

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Any, ws: Workspace, dropout: float = 0.0, seed: int = 0,
                step: int = 0, layers: int | None = None, backend: Backend | None = None
                ) -> Any:
        """Training forward pass; returns the output buffer (logits for fused losses), or
        with ``layers`` the output of that many first layers.  ``backend`` is the run's
        (:meth:`Backend.open_run <gpumlp.backends.base.Backend.open_run>`; default: the
        network's backend, each operation then a run of its own)."""
        ops = backend or self.backend
        a = x
        last = self.n_layers - 1
        for layer in range(self.n_layers if layers is None else layers):
            drop = (self.dropout_spec(dropout, seed, step, layer)
                    if dropout and layer < last else None)
            a = ops.affine_act(a, self.weights[layer], self.biases[layer],
                                        self.layer_activation(layer), ws.a[layer + 1], drop,
                                        **self._gemm_options)
        return a

    def dropout_spec(self, rate: float, seed: int, step: int, layer: int) -> Dropout:
        """The dropout of ``layer`` at ``step``: a fresh mask per step and layer."""
        return Dropout(keep=1.0 - rate, seed=seed, counter=step * self.n_layers + layer)

    def predict_output(self, x: Any, chunk: int = 4096, reuse: bool = True) -> Any:
        """Network output (probabilities for classifiers) for ``x``, on this backend.

        On the CuPy backend a call repeated on the same device array replays a captured
        forward (:meth:`gpumlp.backends.base.Backend.forward_replays`); ``reuse=False`` says
        ``x`` is a temporary (a copy of host data) that will not be seen again."""
        given = x
        x = self.backend.asarray(x, self.dtype)
        # A copy made here is new every call: never worth capturing.
        if reuse and x is given and self._forward_replays is not None:
            replayed = self._forward_replays.output(self, x, chunk, self._output_activation)
            if replayed is not None:
                return replayed
        n = x.shape[0]
        out = self.backend.empty((n, self.sizes[-1]), self.dtype)
        workspace = self.new_workspace(max(1, min(n, chunk)))  # this call's own buffers
        with self.backend.open_run(self.dtype) as run:  # and its own device state
            for start in range(0, n, chunk):
                rows = x[start:start + chunk]
                logits = self.forward(rows, workspace.rows(rows.shape[0]), backend=run.backend)
                self._output_activation(logits, out[start:start + rows.shape[0]], run.backend)
        return out

    def _output_activation(self, z: Any, out: Any, backend: Backend | None = None) -> None:
        ops = backend or self.backend
        if not self.loss.from_logits:
            out[...] = z
        elif self.output_activation == "softmax":
            ops.softmax(z, out)
        else:
            ops.sigmoid(z, out)

    # ---------------------------------------------------------------------------- backward
    def loss_and_gradients(self, x: Any, t: Any, ws: Workspace, decay: float = 0.0,
                           dropout: float = 0.0, seed: int = 0, step: int = 0,
                           row_weights: Any = None, weight_sum: float | None = None,
                           backend: Backend | None = None) -> Any:
        """Forward, loss and backward for one batch; fills ``self.grads``.

        Returns the batch-mean data loss as a 0-d backend array (no host synchronisation).
        ``decay`` adds ``decay * W`` to each weight gradient (L2).  With ``row_weights``
        (a backend vector, one per row) and their host sum ``weight_sum``, the loss and
        gradients are the weighted mean ``sum_i w_i l_i / weight_sum``.  ``backend`` is the
        run's, as in :meth:`forward`.
        """
        ops = backend or self.backend
        last = self.n_layers - 1
        h_out = ws.h[last + 1]
        if row_weights is None and self.loss.operation == "softmax_xent":
            # The output layer and its loss as one backend operation, which may fuse them into
            # one kernel (the logits buffer is then left unwritten).
            hidden = self.forward(x, ws, dropout, seed, step, layers=last, backend=ops)
            loss = ops.affine_softmax_xent(hidden, self.weights[last],
                                                    self.biases[last], t, ws.a[last + 1],
                                                    h_out, **self._gemm_options)
        else:
            output = self.forward(x, ws, dropout, seed, step, backend=ops)
            if row_weights is None:
                loss = getattr(ops, self.loss.operation)(output, t, h_out)
            else:
                loss = ops.sample_weighted_loss(self.loss.operation, output, t,
                                                         h_out, row_weights, weight_sum)
            if not self.loss.from_logits and self.output_activation != "identity":
                ops.act_grad(h_out, output, self.output_activation, h_out)
        for layer in range(last, -1, -1):
            a_prev = x if layer == 0 else ws.a[layer]
            ops.weight_grads(a_prev, ws.h[layer + 1], self.weight_grads[layer],
                                      self.bias_grads[layer], self.weights[layer], decay,
                                      **self._gemm_options)
            if layer > 0:
                drop = self.dropout_spec(dropout, seed, step, layer - 1) if dropout else None
                ops.backprop_hidden(ws.h[layer + 1], self.weights[layer],
                                             ws.a[layer], self.hidden_activations[layer - 1],
                                             ws.h[layer], drop, **self._gemm_options)
        return loss


def _check_sizes(layer_sizes: Sequence[int]) -> list[int]:
    try:
        sizes = [int(s) for s in layer_sizes]
    except (TypeError, ValueError):
        raise TypeError(f"layer_sizes must be a sequence of integers, got {layer_sizes!r}") from None
    if len(sizes) < 2 or any(s < 1 for s in sizes) or any(
            int(s) != s for s in layer_sizes):
        raise ValueError(f"layer_sizes={list(layer_sizes)!r} must hold at least two positive "
                         "integers: [n_inputs, hidden..., n_outputs]")
    return sizes


def _layout(sizes: list[int]) -> list[tuple[int, int]]:
    """Offsets ``(weights start, bias start)`` of each layer, each a multiple of
    :data:`ALIGN_ELEMENTS`."""
    offsets, pos = [], 0
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        w_start = pos
        b_start = _align(w_start + d_in * d_out)
        offsets.append((w_start, b_start))
        pos = _align(b_start + d_out)
    return offsets


def _align(offset: int) -> int:
    return -(-offset // ALIGN_ELEMENTS) * ALIGN_ELEMENTS
