"""Functions of tensors recorded once as a graph of aten operations, then replayed.

Pyro's Python (traces, effect handlers, distribution objects) costs about a millisecond
per call on a CPU, whatever the size of the tensors. For a function called many times
on inputs of the same shapes, the training objective's forward pass and the
importance-weighted estimator's passes, :class:`RecordedForward` runs that Python
once, while ``make_fx`` records the aten operations it issues, and then calls those
operations directly: the same results for the same random numbers.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx


class GraphCaptureError(RuntimeError):
    """A function could not be recorded as a graph (an FX graph of aten operations, or a
    CUDA graph): it reads tensor values on the host, or uses an operation that graphs do
    not allow. Callers run it eagerly instead."""


class RecordedForward:
    """``forward(*inputs) -> outputs`` (tensors, or tuples and dicts of them), replayed from
    an FX graph recorded per input shapes.

    The first call with inputs of new shapes records ``forward`` with ``make_fx`` on the
    real tensors, inside ``fork_rng`` so that recording draws nothing from the caller's
    RNG, then every call replays the recorded aten operations on its inputs. Tensors
    that ``forward`` reads besides its inputs (the parameters) are read by reference,
    so in-place updates (the optimizer's, a restored checkpoint's) are seen; random
    operations draw anew from torch's generator on every call, as the eager call does.

    What ``forward`` must allow: no host reads of tensor values (``.item()``, ``bool()``),
    whose values a graph cannot hold: recording one raises :class:`GraphCaptureError`.
    Python values read at recording are frozen: pass what changes between calls (the KL
    weight) as a tensor input, and record a new function when a Python argument changes.
    """

    def __init__(self, forward: Callable[..., Any]):
        self.forward = forward
        self.graphs: dict[tuple, torch.fx.GraphModule] = {}

    def __call__(self, *inputs: torch.Tensor) -> Any:
        shapes = tuple(tuple(value.shape) for value in inputs)
        graph = self.graphs.get(shapes)
        if graph is None:
            graph = self.graphs[shapes] = self._record(inputs)
        return graph(*inputs)

    def _record(self, inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
        try:
            with torch.random.fork_rng():
                graph = make_fx(self.forward)(*inputs)
        except RuntimeError as error:  # make_fx refuses to read a value it records
            if "_local_scalar_dense" in str(error):
                reason = "it reads a tensor's value on the host (.item(), bool(), an if on a value)"
            else:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                reason = f"{type(error).__name__}: {first_line}"
            raise GraphCaptureError(reason) from error
        # what Pyro computes and nothing reads (expanded views, unused log-densities) goes;
        # operations that change a tensor, such as random draws, stay
        graph.graph.eliminate_dead_code()
        graph.recompile()
        return graph
