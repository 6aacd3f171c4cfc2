"""Functions of tensors recorded once as a graph of aten operations, then replayed.

Pyro's Python (traces, effect handlers, distribution objects) costs about a millisecond
per call on a CPU, whatever the size of the tensors. For a function called many times
on inputs of the same shapes, the training objective's forward pass and the
importance-weighted estimator's passes, :class:`RecordedForward` runs that Python
once, while ``make_fx`` records the aten operations it issues, and then calls those
operations directly: the same results for the same random numbers.
:func:`record` is the recording itself, which the training step recorded whole
(:class:`pyro_vae.training.graphs.RecordedStep`) shares.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten

#: Markers of ``torch.profiler.record_function`` blocks (the optimizer's step, for one):
#: labels for a profiler, which a replayed graph has no use for.
_PROFILER_MARKERS = (
    torch.ops.profiler._record_function_exit._RecordFunction,
    torch.ops.profiler._record_function_enter_new.default,
)


class GraphCaptureError(RuntimeError):
    """A function could not be recorded as a graph (an FX graph of aten operations, or a
    CUDA graph): it reads tensor values on the host, or uses an operation that graphs do
    not allow. Callers run it eagerly instead."""


def record(
    function: Callable[..., Any], inputs: tuple[torch.Tensor, ...], differentiable: bool = False
) -> torch.fx.GraphModule:
    """The graph of the aten operations that ``function(*inputs)`` runs, recorded by
    running it: its effects (random draws, in-place updates) happen, once.

    What nothing reads goes (expanded views, unused log-densities), and so do the
    operations that return their input as it is (:func:`without_identities`);
    operations that change a tensor stay. A function that reads a tensor's value on
    the host raises :class:`GraphCaptureError`.

    :param differentiable: whether the graph will be replayed with autograd on, its
        gradient taken outside it. ``make_fx`` records ``Tensor.detach()`` as
        ``aten.alias``, through which autograd would pass gradients: each becomes
        ``aten.detach`` again. (In a graph replayed without autograd an alias is only a
        view, and goes.)
    """
    try:
        graph = make_fx(function)(*inputs)
    except RuntimeError as error:  # make_fx refuses to read a value it records
        if "_local_scalar_dense" in str(error):
            reason = "it reads a tensor's value on the host (.item(), bool(), an if on a value)"
        else:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{type(error).__name__}: {first_line}"
        raise GraphCaptureError(reason) from error
    if differentiable:
        for node in graph.graph.nodes:
            if node.target is aten.alias.default:
                node.target = aten.detach.default
    without_identities(graph.graph)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def without_identities(graph: torch.fx.Graph) -> None:
    """Drop from ``graph`` the operations that return their input as it is: profiler
    markers, ``alias``, the transpose of a transpose, and ``expand`` or ``view`` to the
    input's own sizes and strides. Each is a view of the same storage with the same
    geometry, so its readers may read the input instead, with the same values and
    gradients; a replay then spends no Python on them (autograd's backward pass,
    recorded whole, holds many). (``detach`` stays: it is not an identity for autograd.)"""
    for node in reversed(list(graph.nodes)):  # readers before what they read
        if node.op != "call_function":
            continue
        if node.target in _PROFILER_MARKERS and not node.users:
            graph.erase_node(node)  # an exit, then its entry, which only the exit read
            continue
        source = _same_view_source(node)
        if source is not None:
            node.replace_all_uses_with(source)
            graph.erase_node(node)


def _same_view_source(node: torch.fx.Node) -> torch.fx.Node | None:
    """The node whose value ``node`` returns unchanged as a view, else None."""
    source = node.args[0] if node.args else None
    if not isinstance(source, torch.fx.Node):
        return None
    if node.target is aten.alias.default:
        return source
    if node.target is aten.t.default and source.target is aten.t.default:
        return source.args[0]
    if node.target in (aten.expand.default, aten.view.default) and _same_geometry(node, source):
        return source
    return None


def _same_geometry(node: torch.fx.Node, source: torch.fx.Node) -> bool:
    value, before = node.meta.get("val"), source.meta.get("val")
    return (
        isinstance(value, torch.Tensor)
        and isinstance(before, torch.Tensor)
        and value.dtype == before.dtype
        and value.shape == before.shape
        and value.stride() == before.stride()
        and value.storage_offset() == before.storage_offset()
    )


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
            with torch.random.fork_rng():
                graph = self.graphs[shapes] = record(self.forward, inputs, differentiable=True)
        return graph(*inputs)
