"""How one optimizer step runs: eagerly, or replayed from a graph of the whole step
(a CUDA graph on one GPU, an FX graph on a CPU in one process), or eagerly with its
forward pass replayed from an FX graph (a CPU, several processes).

A step is the loss of the model/guide pair on a batch, its gradient (summed over ranks
under ``torchrun``), optional clipping, and the optimizer's update. Eager steps stop
before the update so that the loop can check the loss on the host first; a graph's step
has updated by then and skips the update on the device when the loss is not finite
(:func:`~pyro_vae.training.graphs.skip_update_unless_finite`).
"""

import math
import signal
from collections.abc import Callable

import torch

from pyro_vae.config import TrainConfig
from pyro_vae.core import distributed
from pyro_vae.core.recording import GraphCaptureError, RecordedForward
from pyro_vae.core.seeding import derived_seed, seeded
from pyro_vae.models.vae import VAE
from pyro_vae.training.graphs import CapturedStep, RecordedStep, skip_update_unless_finite
from pyro_vae.training.guards import StopSignals


def uses_cuda_graphs(config: TrainConfig, device: torch.device, world: distributed.World) -> bool:
    """Whether the training steps are replayed from a CUDA graph (:mod:`pyro_vae.training.graphs`):
    on one GPU, unless ``config.cuda_graph`` is off."""
    return config.cuda_graph and device.type == "cuda" and world.size == 1


def records_steps(config: TrainConfig, device: torch.device, world: distributed.World) -> bool:
    """Whether the training steps are replayed from an FX graph of the whole step
    (:class:`~pyro_vae.training.graphs.RecordedStep`): on a CPU in one process, unless
    ``config.record_forward`` is off. (With several processes the step's all-reduce
    stays eager; its forward pass is still recorded.)"""
    return config.record_forward and device.type == "cpu" and world.size == 1


class StepRunner:
    """Runs the training steps of ``vae`` with ``optimizer`` on ``loss_fn``.

    :param log: told once when steps cannot be captured and run eagerly from then on.
    """

    def __init__(
        self,
        config: TrainConfig,
        vae: VAE,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[..., torch.Tensor],
        world: distributed.World,
        device: torch.device,
        log: Callable[[str], None],
    ):
        self.config, self.vae, self.optimizer, self.loss_fn = config, vae, optimizer, loss_fn
        self.world, self.device, self.log = world, device, log
        self.parameters = [p for p in vae.parameters() if p.requires_grad]
        self.captures = uses_cuda_graphs(config, device, world)
        self.records_steps = records_steps(config, device, world)
        self.records = config.record_forward and device.type == "cpu"
        self.reset()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def reset(self) -> None:
        """Forget the captured step: the optimizer's state tensors were replaced (a restore)."""
        for group in self.optimizer.param_groups:  # Adam may be captured exactly when graphs are
            group["capturable"] = self.captures
        self.captured: CapturedStep | RecordedStep | None = None
        self.captured_lr = math.nan
        self.recorded = RecordedForward(self._objective) if self.records else None

    def begin(
        self,
        inputs: tuple[torch.Tensor, ...],
        beta: float,
        batch_size: int,
        global_step: int,
        stop: StopSignals,
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """Start a step: its loss, whether it was clipped, and whether :meth:`finish` must
        still apply the update (an eager step) or the update is done (a replayed one)."""
        replayed = self._replayed_step(inputs, beta, batch_size)
        if replayed is None:
            return self.gradient(inputs, beta, global_step, stop), None, True
        return (*replayed, False)

    def finish(self, batch_size: int) -> torch.Tensor | None:
        """Clip the gradient (if configured) and take the optimizer step; return whether it
        was clipped, as a device tensor (None without clipping)."""
        clipped = self._clip(batch_size) if self.config.clip_grad_norm is not None else None
        self.optimizer.step()
        return clipped

    def gradient(
        self,
        inputs: tuple[torch.Tensor, ...],
        beta: float | torch.Tensor,
        global_step: int,
        stop: StopSignals | None,
    ) -> torch.Tensor:
        """The loss of the global batch (detached), its gradient in the parameters (summed
        over ranks)."""
        loss = self._backward(self._loss(inputs, beta, global_step))
        return self._sum_over_ranks(loss, stop)

    def _backward(self, loss: torch.Tensor) -> torch.Tensor:
        """Set the parameters' gradients to those of ``loss``; return it detached."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    def _replayed_step(
        self, inputs: tuple[torch.Tensor, ...], beta: float, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The step replayed from a graph: its loss and whether it was clipped (device
        tensors); None where the step runs eagerly instead.

        Graphs are used for full batches: CUDA graphs on a single GPU
        (``config.cuda_graph``), FX graphs on a CPU in one process
        (``config.record_forward``, once the optimizer's state exists: the first step is
        eager). A short last batch runs eagerly, as does everything once a step cannot
        be recorded (an objective that reads values on the host, such as
        ``analytic-kl``'s NaN warning): that is logged, and training goes on without.
        """
        replays = self.captures or (self.records_steps and self.records and self.optimizer.state)
        if not (replays and batch_size == self.config.batch_size):
            return None
        try:
            return self._captured_step()(*inputs, torch.full((), beta, device=self.device))
        except GraphCaptureError as error:
            if self.captures:
                self.captures = False
                self.log(f"training without CUDA graphs: the step could not be captured ({error})")
            else:  # what a step cannot record, its forward pass mostly cannot either
                self.records_steps, self.records, self.recorded = False, False, None
                self.log(f"training without a recorded step: it could not be recorded ({error})")
            return None

    def _captured_step(self) -> CapturedStep | RecordedStep:
        """The graph of a full-batch step at the current learning rate, which the fused Adam
        update holds as a constant: a new one after the schedule changes it or a restore
        replaces the optimizer's state tensors (:meth:`reset` drops the old one)."""
        if self.captured is None or self.captured_lr != self.lr:
            batch_size = self.config.batch_size

            def step(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
                # the objective's own operations: the graph records them whole
                loss = self._backward(self._objective(*tensors))
                with skip_update_unless_finite(self.optimizer, loss):
                    outputs = loss, self.finish(batch_size)
                if not self.captures:  # an FX graph's gradients live in it: leave none stale
                    self.optimizer.zero_grad(set_to_none=True)
                return outputs

            graph = CapturedStep if self.captures else RecordedStep
            self.captured, self.captured_lr = graph(step), self.lr
        return self.captured

    def _loss(
        self, inputs: tuple[torch.Tensor, ...], beta: float | torch.Tensor, global_step: int
    ) -> torch.Tensor:
        """The objective summed over a batch (``inputs``: this rank's share of the global batch).

        With several ranks the latent noise comes from a forked RNG seeded by (seed,
        step, rank): the ranks draw different noise but consume the global RNG (the
        epoch's order, the batches' binary images) identically. A rank whose share of a
        last, short batch is empty contributes zero.
        """
        if self.world.size == 1:
            return self._forward(inputs, beta)
        if inputs[0].shape[0] == 0:
            return torch.zeros((), device=self.device, requires_grad=True)
        seed = derived_seed(self.config.seed, global_step, self.world.rank)
        with seeded(seed, self.device):
            return self._forward(inputs, beta)

    def _forward(
        self, inputs: tuple[torch.Tensor, ...], beta: float | torch.Tensor
    ) -> torch.Tensor:
        """The objective, from its recorded forward pass where there is one (a CPU,
        ``config.record_forward``); a forward pass that cannot be recorded runs eagerly
        from then on, which is logged. A full batch whose whole step is recorded
        (:func:`records_steps`) runs eagerly here only before that, once: a recording of
        its forward pass would serve that one step."""
        full = inputs[0].shape[0] == self.config.batch_size
        if self.recorded is not None and not (self.records_steps and full):
            try:
                return self.recorded(*inputs, torch.as_tensor(beta, dtype=torch.float32))
            except GraphCaptureError as error:
                self.records, self.recorded = False, None
                self.log(
                    f"training without a recorded forward pass: it could not be recorded ({error})"
                )
        return self.loss_fn(self.vae.model, self.vae.guide, *inputs, beta=beta)

    def _objective(self, *tensors: torch.Tensor) -> torch.Tensor:
        """The objective of the inputs ``tensors[:-1]`` with the KL weight ``tensors[-1]``."""
        return self.loss_fn(self.vae.model, self.vae.guide, *tensors[:-1], beta=tensors[-1])

    def _clip(self, batch_size: int) -> torch.Tensor:
        """Scale the gradient down to norm ``clip_grad_norm * batch_size`` when it is
        larger: the loss is summed over the batch, so this bounds the gradient of the
        per-example loss. Returns whether it was clipped, as a device tensor."""
        limit = self.config.clip_grad_norm * batch_size
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, limit)
        return norm > limit

    def _sum_over_ranks(self, loss: torch.Tensor, stop: StopSignals | None) -> torch.Tensor:
        """With several ranks: sum the loss, the gradients and the stop requests over ranks
        (one all-reduce), so every rank takes the same step, sees the same non-finite check
        and stops at the same step; return the global batch's loss."""
        if self.world.size == 1:
            return loss
        for p in self.parameters:  # an empty last shard leaves gradients unset
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flags = torch.tensor([float(stop.received is not None)], device=loss.device)
        total = loss.detach().reshape(1)
        self.world.sum_([total, flags, *(p.grad for p in self.parameters)])
        if flags.item() and stop.signum is None:
            stop.signum = stop.received or signal.SIGTERM
        return total[0]
