r"""Graphs of the training step: Pyro's Python runs once, when the step is recorded.

On a GPU a pyro-vae training step is bound by the host, not the device: recording
the model and guide traces, running Pyro's effect handlers and building the
distribution objects costs milliseconds of Python per step, while the networks'
kernels take a fraction of that (docs/results/index.md). A CUDA graph records the
kernels that one step launches (objective, backward, gradient clipping, optimizer
update) and launches them all again with one call: every later step costs one
graph launch, whatever the Python that built it costs.

:class:`CapturedStep` wraps such a step; :func:`skip_update_unless_finite` is the
non-finite guard that works inside one (a graph cannot branch on a value on the host),
and inside the recorded step below.

On a CPU the same Python costs about a millisecond of every step, besides autograd's
bookkeeping and the optimizer's Python: there :class:`RecordedStep` records the
aten operations of one whole step (objective, backward, clipping, update) as an FX
graph (:func:`pyro_vae.core.recording.record`) and replays them without autograd. Loss,
gradients and parameters are bit-identical to the eager step's for the same random
numbers.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from pyro_vae.core.recording import GraphCaptureError, record


@contextmanager
def skip_update_unless_finite(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor
) -> Iterator[None]:
    """Inside: ``optimizer.step()`` leaves the parameters and its state unchanged when
    ``loss`` is not finite, decided on the device (no host read).

    It passes a ``found_inf`` flag, the way :class:`torch.amp.GradScaler` skips the
    steps of overflowed gradients; the fused and capturable ``torch.optim`` optimizers
    (Adam's ``fused=True``, which :func:`pyro_vae.train` uses) honour it.
    """
    optimizer.found_inf = (~torch.isfinite(loss.detach())).float()
    try:
        yield
    finally:
        del optimizer.found_inf


class CapturedStep:
    r"""``step(*inputs) -> outputs`` on CUDA tensors of fixed shapes, replayed as a CUDA graph.

    The first ``warmup`` calls run ``step`` eagerly on a side stream, so that lazy
    initialization (optimizer state, cuBLAS workspaces, autograd's device threads)
    happens before the capture, as PyTorch's recipe for whole-network capture asks.
    The next call records ``step`` into a graph on copies of its inputs; it and every
    later call copy the inputs into those static tensors and replay the graph. Every
    call does the work of ``step`` on its own inputs exactly once.

    What ``step`` must allow: no host reads of device values (``.item()``, ``bool()``
    of a tensor, data-dependent shapes) and no host-to-device copies of pageable
    memory; a capture that fails raises :class:`GraphCaptureError`. Python values read
    at capture (a float learning rate, a config) are frozen into the graph: make a new
    ``CapturedStep`` when they change. Random numbers from torch's CUDA generator are
    fresh on every replay (the graph advances the generator's offset).

    The outputs of a replay are the graph's own tensors, overwritten by the next call.
    """

    def __init__(self, step: Callable[..., tuple[torch.Tensor, ...]], warmup: int = 2):
        self.step = step
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: tuple[torch.Tensor, ...] = ()
        self.static_outputs: tuple[torch.Tensor, ...] = ()

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.warmup > 0:
            self.warmup -= 1
            return self._on_side_stream(inputs)
        if self.graph is None:
            self._capture(inputs)
        for static, value in zip(self.static_inputs, inputs, strict=True):
            static.copy_(value)
        self.graph.replay()
        return self.static_outputs

    def _on_side_stream(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = self.step(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self.static_inputs = tuple(value.clone() for value in inputs)
        graph = torch.cuda.CUDAGraph()
        generator = torch.cuda.default_generators[torch.cuda.current_device()]
        before = generator.clone_state()
        try:
            with torch.cuda.graph(graph):
                self.static_outputs = self.step(*self.static_inputs)
        except RuntimeError as error:
            # PyTorch ends the generator's capture mode only after a capture that succeeds;
            # left in it, every later random draw would fail ("Offset increment outside
            # graph capture encountered unexpectedly"). Its state before the capture is good.
            generator.graphsafe_set_state(before)
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise GraphCaptureError(f"{type(error).__name__}: {first_line}") from error
        self.graph = graph


class RecordedStep:
    r"""``step(*inputs) -> outputs`` on CPU tensors of fixed shapes, replayed from an FX graph.

    The first call runs ``step`` while recording its aten operations
    (:func:`~pyro_vae.core.recording.record`): its outputs and effects are that call's.
    Every later call replays them on its own inputs, under ``torch.no_grad()``: the
    graph holds the backward pass as the operations it ran, so autograd has nothing to
    record. Tensors that ``step`` reads or updates besides its inputs (parameters,
    optimizer state) are the graph's by reference: updated in place by every replay, and
    seen when something else changes them in place.

    What ``step`` must allow is what a CUDA graph needs (:class:`CapturedStep`): no host
    reads, no Python values that change between calls, and state that exists before the
    recording (an optimizer's moments: take one step eagerly first). A recording that
    fails raises :class:`GraphCaptureError` with the RNG as before the call, so that the
    eager step that replaces it draws what it would have drawn.
    """

    def __init__(self, step: Callable[..., tuple[torch.Tensor | None, ...]]):
        self.step = step
        self.graph: torch.fx.GraphModule | None = None

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if self.graph is not None:
            with torch.no_grad():
                return self.graph(*inputs)
        outputs = []

        def recorded(*tensors: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            outputs.append(self.step(*tensors))
            return outputs[-1]

        before = torch.get_rng_state()
        try:
            self.graph = record(recorded, inputs)
        except GraphCaptureError:
            torch.set_rng_state(before)
            raise
        return outputs[-1]
