"""Training steps replayed from CUDA graphs: the same training, without Pyro's
per-step Python. The graph tests need a GPU and are skipped without one; the guard they
rely on and the choice of when to use graphs are checked everywhere."""

import pytest
import torch
from conftest import make_tiny_data, prototype_images
from test_reliability import assert_same_run, quiet_train, tiny_config

from pyro_vae import VAE, ImageData, NumericalError, TrainConfig, read_metrics, train
from pyro_vae.cli import build_parser
from pyro_vae.core.distributed import SINGLE, World
from pyro_vae.core.recording import GraphCaptureError, RecordedForward, record
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.runs import load_checkpoint
from pyro_vae.training import graphs as graphs_module
from pyro_vae.training import steps as steps_module
from pyro_vae.training.callbacks import Callback
from pyro_vae.training.graphs import CapturedStep, RecordedStep, skip_update_unless_finite
from pyro_vae.training.guards import training_steps
from pyro_vae.training.steps import records_steps, uses_cuda_graphs

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_non_finite_loss_skips_the_update_and_leaves_the_optimizer_state_alone():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.Adam([weight], lr=0.1, fused=True)

    def step(scale: float) -> None:
        loss = scale * (weight**2).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with skip_update_unless_finite(optimizer, loss):
            optimizer.step()

    step(1.0)
    after_one = weight.detach().clone()
    state = {k: v.clone() for k, v in optimizer.state[weight].items()}
    assert not torch.equal(after_one, torch.tensor([1.0, -2.0]))  # a finite loss updates
    step(float("nan"))
    assert torch.equal(weight.detach(), after_one)
    assert all(torch.equal(optimizer.state[weight][k], v) for k, v in state.items())
    assert not hasattr(optimizer, "found_inf")  # later plain steps are not affected
    step(1.0)
    assert optimizer.state[weight]["step"].item() == 2


def test_graphs_are_used_on_one_gpu_unless_switched_off():
    parsed = build_parser().parse_args(["train", "--no-cuda-graph"])
    assert parsed.cuda_graph is False
    assert build_parser().parse_args(["train"]).cuda_graph is True
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert uses_cuda_graphs(TrainConfig(), gpu, SINGLE)
    assert not uses_cuda_graphs(TrainConfig(cuda_graph=False), gpu, SINGLE)
    assert not uses_cuda_graphs(TrainConfig(), cpu, SINGLE)
    assert not uses_cuda_graphs(TrainConfig(), gpu, World(rank=0, size=2))


CAPTURE_ERROR = "operation not permitted when stream is capturing"


class _UncapturedStep:
    """A stand-in for CapturedStep that calls the step function: the trainer's graph branch
    (the guarded update, outputs, fallback) on a CPU."""

    fail: bool = False

    def __init__(self, step):
        self.step = step

    def __call__(self, *inputs):
        if self.fail:
            raise GraphCaptureError(
                "RuntimeError: operation not permitted when stream is capturing"
            )
        return self.step(*inputs)


@pytest.fixture
def graph_branch_on_cpu(monkeypatch):
    """Train as on one GPU, with the step function called directly instead of replayed."""
    monkeypatch.setattr(steps_module, "uses_cuda_graphs", lambda *args: True)
    monkeypatch.setattr(steps_module, "records_steps", lambda *args: False)  # a GPU's
    monkeypatch.setattr(steps_module, "CapturedStep", _UncapturedStep)
    return _UncapturedStep


def test_the_graph_step_trains_as_the_eager_step_does(tmp_path, tiny_data, graph_branch_on_cpu):
    """The same computation, the update taken before the loss is read: the same run."""
    config = tiny_config(epochs=2, clip_grad_norm=5.0)
    quiet_train(config, tmp_path / "graph", data=tiny_data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps_module, "uses_cuda_graphs", lambda *args: False)
        quiet_train(config, tmp_path / "eager", data=tiny_data)
    assert_same_run(tmp_path / "graph", tmp_path / "eager")
    assert load_checkpoint(tmp_path / "graph")["optimizer"]["param_groups"][0]["capturable"]


def test_a_non_finite_loss_in_the_graph_step_is_named_as_in_the_eager_step(
    tmp_path, tiny_data, faulty_objective, graph_branch_on_cpu
):
    """The graph has updated before the host sees the loss: the skipped update keeps the
    parameters of the last good step, so the fault is named with the same step."""
    faulty_objective(lambda call, loss: loss * float("nan") if call == 11 else None)
    with pytest.raises(NumericalError) as fault:
        quiet_train(tiny_config(checkpoint_every=2), tmp_path / "run", data=tiny_data)
    assert str(fault.value).startswith("non-finite loss (loss nan) at epoch 2, step 3 of 8; ")


def test_a_rollback_captures_the_step_again_at_the_halved_learning_rate(
    tmp_path, tiny_data, faulty_objective, graph_branch_on_cpu, monkeypatch
):
    """The restored optimizer state and the new learning rate are not the captured ones."""
    captures: list[tuple[object, float]] = []  # (step, learning rate at its capture)
    captured_step = steps_module.StepRunner._captured_step

    def recorded(self):
        step = captured_step(self)
        if not captures or captures[-1][0] is not step:
            captures.append((step, self.lr))
        return step

    monkeypatch.setattr(steps_module.StepRunner, "_captured_step", recorded)
    faulty_objective(lambda call, loss: loss * float("nan") if call == 11 else None)
    lines: list[str] = []
    train(
        tiny_config(epochs=3, on_nan="rollback"),
        tmp_path / "run",
        data=tiny_data,
        progress=False,
        log=lines.append,
    )
    assert lines[2].startswith("non-finite loss (loss nan) at epoch 2, step 3 of 8: rolled back")
    assert [lr for _, lr in captures] == [0.003, 0.0015]
    assert [row["lr"] for row in read_metrics(tmp_path / "run")] == [0.003, 0.0015, 0.0015]


def test_a_step_that_cannot_be_captured_trains_eagerly_with_a_message(
    tmp_path, tiny_data, graph_branch_on_cpu
):
    graph_branch_on_cpu.fail = True
    lines: list[str] = []
    train(tiny_config(epochs=2), tmp_path / "run", data=tiny_data, progress=False, log=lines.append)
    assert lines[1] == (  # after the run's summary
        f"training without CUDA graphs: the step could not be captured (RuntimeError: "
        f"{CAPTURE_ERROR})"
    )
    assert len(lines) == 4  # said once, then the two epochs
    metrics = read_metrics(tmp_path / "run")
    assert metrics[-1]["val_elbo"] > metrics[0]["val_elbo"]


@cuda
def test_every_call_of_a_captured_step_works_on_its_own_inputs():
    weight = torch.arange(4.0, device="cuda")
    step = CapturedStep(lambda x: ((x * weight).sum(dim=1), torch.randn_like(x)), warmup=2)
    noises = []
    for call in range(6):  # 2 eager, 1 captured and replayed, 3 replays
        x = torch.rand(3, 4, device="cuda")
        total, noise = step(x)
        assert torch.allclose(total, (x * weight).sum(dim=1)), call
        noises.append(noise.clone())
    assert step.graph is not None
    assert not torch.equal(noises[-1], noises[-2])  # fresh random numbers on each replay


@cuda
def test_a_step_that_reads_the_device_on_the_host_cannot_be_captured():
    step = CapturedStep(lambda x: (x * float(x.sum()),), warmup=1)
    x = torch.ones(2, device="cuda")
    assert torch.equal(step(x)[0], 2 * x)  # eager warm-up
    with pytest.raises(GraphCaptureError):
        step(x)
    assert torch.equal(x * float(x.sum()), 2 * x)  # the GPU still works eagerly,
    assert torch.randn(1000, device="cuda").std() > 0.5  # random numbers included


def _count_captures(monkeypatch) -> list[int]:
    count = [0]
    capture = CapturedStep._capture

    def counted(self, inputs):
        count[0] += 1
        capture(self, inputs)

    monkeypatch.setattr(graphs_module.CapturedStep, "_capture", counted)
    return count


def _gpu_config(**overrides) -> TrainConfig:
    options = dict(
        latent_dim=4,
        hidden_dims=(32,),
        batch_size=64,
        lr=3e-3,
        epochs=4,
        device="cuda",
        clip_grad_norm=50.0,
    )
    options.update(overrides)
    return TrainConfig(**options)


@cuda
def test_gpu_training_replays_one_captured_step_and_learns_as_eager_training_does(
    tmp_path, monkeypatch
):
    captures = _count_captures(monkeypatch)
    lines: list[str] = []
    data = make_tiny_data()
    train(_gpu_config(), tmp_path / "graph", data=data, progress=False, log=lines.append)
    assert captures[0] == 1  # one capture, replayed for 4 epochs of 8 batches (2 eager)
    assert not any("without CUDA graphs" in line for line in lines)
    train(
        _gpu_config(cuda_graph=False),
        tmp_path / "eager",
        data=data,
        progress=False,
        log=lines.append,
    )
    assert captures[0] == 1
    graph, eager = read_metrics(tmp_path / "graph"), read_metrics(tmp_path / "eager")
    assert graph[-1]["val_elbo"] > graph[0]["val_elbo"] + 1  # it learns
    # the same training up to the latent noise (drawn in another order)
    assert graph[-1]["val_elbo"] == pytest.approx(eager[-1]["val_elbo"], abs=1.0)
    assert graph[-1]["train_loss"] == pytest.approx(eager[-1]["train_loss"], abs=1.0)


@cuda
def test_a_resumed_run_captures_its_step_again_with_its_new_learning_rate(tmp_path, monkeypatch):
    captures = _count_captures(monkeypatch)
    data = make_tiny_data()
    out = tmp_path / "run"
    train(_gpu_config(epochs=1), out, data=data, progress=False, log=print)
    train(_gpu_config(epochs=2, lr=1e-3), out, data=data, progress=False, log=print, resume=True)
    assert captures[0] == 2
    assert [row["lr"] for row in read_metrics(out)] == [3e-3, 1e-3]
    saved = load_checkpoint(out)["optimizer"]["param_groups"][0]
    assert saved["lr"] == 1e-3 and saved["capturable"] is True


@cuda
def test_an_objective_with_host_reads_trains_eagerly_with_a_message(tmp_path):
    lines: list[str] = []
    config = _gpu_config(objective="analytic-kl", epochs=2)
    train(config, tmp_path / "run", data=make_tiny_data(), progress=False, log=lines.append)
    assert lines[1].startswith("training without CUDA graphs: the step could not be captured")
    metrics = read_metrics(tmp_path / "run")
    assert metrics[-1]["val_elbo"] > metrics[0]["val_elbo"]


@cuda
def test_a_nan_batch_stops_a_graph_replaying_run_with_its_checkpoint_intact(tmp_path, monkeypatch):
    draw, calls = ImageData.training_batch, [0]

    def poisoned(self, index):
        calls[0] += 1  # the ninth batch is the first of epoch 2
        batch = draw(self, index)
        rows = torch.arange(0, batch.shape[0], 7, device=batch.device)
        return batch.index_fill(0, rows, float("nan")) if calls[0] == 9 else batch

    monkeypatch.setattr(ImageData, "training_batch", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NumericalError, match="^non-finite loss at epoch 2, step 1 of 8: the "):
        train(_gpu_config(epochs=2), out, data=make_tiny_data(), progress=False, log=print)
    checkpoint = load_checkpoint(out)
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 0)
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())


@cuda
def test_the_hierarchical_conv_vampprior_vae_is_captured(tmp_path, monkeypatch):
    """The configuration of the best published Fashion-MNIST row, which needs a GPU."""
    captures = _count_captures(monkeypatch)
    images, labels = prototype_images(300, side=28)
    val = torch.bernoulli(images[200:250], generator=torch.Generator().manual_seed(1))
    data = ImageData(
        train=images[:200],
        train_labels=labels[:200],
        val=val,
        val_labels=labels[200:250],
        test=val,
        test_labels=labels[200:250],
        image_shape=(1, 28, 28),
        class_names=tuple("abcd"),
        binarize=True,
    )
    lines: list[str] = []
    config = TrainConfig(
        model="hvae",
        arch="conv",
        prior="vamp",
        prior_options={"components": 20},
        hidden_dims=(64, 64),
        latent_dim=8,
        batch_size=50,
        epochs=3,
        device="cuda",
        clip_grad_norm=100.0,
    )
    train(config, tmp_path / "run", data=data, progress=False, log=lines.append)
    assert captures[0] == 1 and not any("without CUDA graphs" in line for line in lines)
    metrics = read_metrics(tmp_path / "run")
    assert metrics[-1]["val_elbo"] > metrics[0]["val_elbo"]


# ------------------------------------------------------------- recorded forward pass (CPU)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"model": "completion"},  # its prior network reads the baseline's guess detached
        {"model": "hvae", "prior": "vamp", "prior_options": {"components": 5}},
        {"objective": "iwae", "particles": 3},
        {"clip_grad_norm": 1.0, "weight_decay": 0.01, "warmup_epochs": 1},
    ],
    ids=["vae", "completion", "hvae-vamp", "iwae", "clip-decay-warmup"],
)
def test_a_run_with_its_steps_recorded_ends_exactly_as_an_eager_one(tmp_path, tiny_data, options):
    """Recorded steps and the eager first and last (short) steps, against every step
    eager: the same parameters and metrics, bit for bit."""
    config = dict(epochs=2, batch_size=48, image_shape=tiny_data.image_shape, num_classes=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit for bit
    try:
        quiet_train(tiny_config(**config, **options), tmp_path / "recorded", data=tiny_data)
        eager = tiny_config(**config, **options, record_forward=False)
        quiet_train(eager, tmp_path / "eager", data=tiny_data)
    finally:
        torch.set_num_threads(threads)
    assert_same_run(tmp_path / "recorded", tmp_path / "eager")


def test_a_recorded_forward_pass_keeps_what_it_detaches_out_of_the_gradient():
    """``make_fx`` records ``detach()`` as an alias: replayed with autograd it must
    still stop the gradient."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))

    def forward(x):
        guess = (x * weight).detach()
        return (guess * weight).sum()

    x = torch.tensor([0.5, 1.5, -1.0])
    (recorded,) = torch.autograd.grad(RecordedForward(forward)(x), weight)
    (eager,) = torch.autograd.grad(forward(x), weight)
    assert torch.equal(recorded, eager) and torch.equal(eager, x * weight.detach())


def test_a_recorded_forward_pass_sees_parameter_updates_and_draws_as_the_eager_one():
    vae = VAE(12, 2, (8,))
    x = torch.bernoulli(torch.full((5, 12), 0.5), generator=torch.Generator().manual_seed(0))

    def forward(x, beta):
        return OBJECTIVES["elbo"](1)(vae.model, vae.guide, x, beta=beta)

    recorded, beta = RecordedForward(forward), torch.tensor(0.7)
    with training_steps(vae):
        for _ in range(2):
            torch.manual_seed(3)
            loss = recorded(x, beta)  # the first call records without drawing, then replays
            after_replay = torch.get_rng_state()
            torch.manual_seed(3)
            expected = forward(x, beta)
            assert torch.equal(loss, expected) and torch.equal(torch.get_rng_state(), after_replay)
            parameters = list(vae.parameters())
            grads = torch.autograd.grad(loss, parameters)
            wanted = torch.autograd.grad(expected, parameters)
            assert all(torch.equal(got, want) for got, want in zip(grads, wanted, strict=True))
            with torch.no_grad():  # an optimizer's in-place update
                for p in vae.parameters():
                    p.add_(0.1)
        assert len(recorded.graphs) == 1
        recorded(x[:3], beta)  # another batch size: another recording
        assert len(recorded.graphs) == 2


def test_a_step_that_reads_values_on_the_host_runs_eagerly(tmp_path, tiny_data):
    """analytic-kl's Trace ELBO checks the loss for NaN on the host: it cannot be recorded."""
    lines = []
    config = tiny_config(epochs=1, objective="analytic-kl")
    train(config, tmp_path / "run", data=tiny_data, progress=False, log=lines.append)
    (line,) = [line for line in lines if "recorded" in line]
    assert line == (
        "training without a recorded step: it could not be recorded (it reads a "
        "tensor's value on the host (.item(), bool(), an if on a value))"
    )
    assert len(read_metrics(tmp_path / "run")) == 1
    with pytest.raises(GraphCaptureError, match="reads a tensor's value on the host"):
        RecordedForward(lambda x: x * bool(x.sum() > 0))(torch.ones(2))


# ------------------------------------------------------------- recorded step (CPU)


def _count_recordings(monkeypatch) -> list[float]:
    """The learning rate of every training step recorded from here on."""
    rates: list[float] = []
    captured_step = steps_module.StepRunner._captured_step

    def counted(self):
        step = captured_step(self)
        if step.graph is None:
            rates.append(self.lr)
        return step

    monkeypatch.setattr(steps_module.StepRunner, "_captured_step", counted)
    return rates


def test_steps_are_recorded_on_a_cpu_in_one_process_unless_switched_off():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert records_steps(TrainConfig(), cpu, SINGLE)
    assert not records_steps(TrainConfig(record_forward=False), cpu, SINGLE)
    assert not records_steps(TrainConfig(), gpu, SINGLE)
    assert not records_steps(TrainConfig(), cpu, World(rank=0, size=2))


def test_cpu_training_records_its_step_once_per_learning_rate(tmp_path, tiny_data, monkeypatch):
    """The first step runs eagerly (it makes Adam's state), the second is recorded and the
    full batches after it replay that recording; a resume at another rate records anew."""
    rates = _count_recordings(monkeypatch)
    out = tmp_path / "run"
    quiet_train(tiny_config(epochs=2, lr=3e-3), out, data=tiny_data)
    assert rates == [3e-3]
    quiet_train(tiny_config(epochs=3, lr=1e-3), out, data=tiny_data, resume=True)
    assert rates == [3e-3, 1e-3]
    metrics = read_metrics(out)
    assert [row["lr"] for row in metrics] == [3e-3, 3e-3, 1e-3]
    assert metrics[-1]["val_elbo"] > metrics[0]["val_elbo"]


def test_a_replayed_step_leaves_no_stale_gradient(tmp_path, tiny_data):
    """The gradients of a replayed step live inside its graph: the parameters hold none
    rather than those of the step that was recorded."""
    grads = []

    class Gradients(Callback):
        def on_step_end(self, trainer, step):
            grads.append([p.grad for p in trainer.vae.parameters()])

    config = tiny_config(epochs=1)
    train(
        config, tmp_path / "run", data=tiny_data, progress=False, log=print, callbacks=[Gradients()]
    )
    assert all(g is not None for g in grads[0])  # the first step is eager
    assert all(g is None for step in grads[1:] for g in step)


def test_a_nan_batch_stops_a_recorded_run_with_its_checkpoint_intact(tmp_path, monkeypatch):
    """The recorded step skips the update of a non-finite loss (Adam's ``found_inf``), so
    the fault is named with its own step and nothing non-finite is saved."""
    draw, calls = ImageData.training_batch, [0]

    def poisoned(self, index):
        calls[0] += 1  # the eleventh batch is the third of epoch 2
        batch = draw(self, index)
        return batch.index_fill(0, torch.tensor([0, 9]), float("nan")) if calls[0] == 11 else batch

    monkeypatch.setattr(ImageData, "training_batch", poisoned)
    rates = _count_recordings(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(NumericalError, match="^non-finite loss at epoch 2, step 3 of 8: the "):
        quiet_train(tiny_config(epochs=2, checkpoint_every=2), out, data=make_tiny_data())
    assert rates == [3e-3]
    checkpoint = load_checkpoint(out)
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 2)
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())


def test_a_step_that_cannot_be_recorded_runs_eagerly_drawing_what_it_would_have_drawn():
    weight = torch.nn.Parameter(torch.ones(3))

    def step(x):
        noisy = x + torch.randn(3)
        return (noisy * weight).sum() * bool(noisy.sum() > -100)

    torch.manual_seed(0)
    before = torch.get_rng_state()
    with pytest.raises(GraphCaptureError, match="reads a tensor's value on the host"):
        RecordedStep(step)(torch.zeros(3))
    assert torch.equal(torch.get_rng_state(), before)


def _adam_step(weight: torch.nn.Parameter):
    """A training step of ``weight`` whose graph has operations that return their input."""
    optimizer = torch.optim.Adam([weight], lr=0.1, fused=True)

    def step(x):
        loss = (x @ weight.t().t().t()).view(2, 4).expand(2, 4).relu().sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()  # inside torch.profiler.record_function
        return loss.detach()

    return step


def test_recording_drops_the_operations_that_return_their_input():
    """Autograd's backward pass and the optimizer, recorded, hold many: aliases,
    transposes of transposes, views to the same shape, profiler markers. Without them the
    replays compute what the eager steps do."""
    start = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    xs = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(1))
    eager, recorded = (torch.nn.Parameter(start.clone()) for _ in range(2))
    eager_step, recorded_step = _adam_step(eager), _adam_step(recorded)
    eager_step(xs[0]), recorded_step(xs[0])  # Adam's state
    graph = record(recorded_step, (xs[1],))
    eager_step(xs[1])
    nodes = [node for node in graph.graph.nodes if node.op == "call_function"]
    targets = {str(node.target) for node in nodes}
    reshapes = (torch.ops.aten.view.default, torch.ops.aten.expand.default)
    assert "aten.alias.default" not in targets
    assert not [
        node
        for node in nodes
        if node.target in reshapes and node.meta["val"].shape == node.args[0].meta["val"].shape
    ]
    assert not any("profiler" in target for target in targets)
    transposes = [node for node in nodes if node.target is torch.ops.aten.t.default]
    assert transposes and not any(node.args[0] in transposes for node in transposes)
    assert "aten._fused_adam_.default" in targets
    with torch.no_grad():
        loss = graph(xs[2])
    assert torch.equal(loss, eager_step(xs[2])) and torch.equal(recorded, eager)
