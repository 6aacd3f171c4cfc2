"""The training loop behind ``pyro-vae train``.

One step is Pyro's differentiable ELBO of the model/guide pair followed by a
plain ``torch.optim.Adam`` step over the VAE's parameters: the same objective as
``SVI(model, guide, pyro.optim.Adam, Trace_ELBO())`` without SVI's per-parameter
optimizers. Data stays on the device as one tensor; batches are index slices of
a fresh permutation each epoch. The running loss is accumulated on the device and
read only when the progress bar refreshes.
"""

import math
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae import runs
from pyro_vae.config import DATA_FIELDS, TrainConfig, resolve_device
from pyro_vae.data import ImageData
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.evaluation import elbo_per_example
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.vae import VAE

#: Seed of the validation ELBO's latent samples, so epochs and runs compare fairly.
EVAL_SEED = 12345
#: Options that may change when a run is resumed.
RESUMABLE_CHANGES = ("epochs", "device", "data_root")
#: Progress-bar refresh interval in steps (each refresh reads the loss from the device).
PROGRESS_EVERY = 20


def kl_weight(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Beta at a (0-based) global step: linear warm-up from ``beta/warmup_steps`` to ``beta``."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps == 0:
        return config.beta
    return config.beta * min(1.0, (step + 1) / warmup_steps)


@torch.no_grad()
def validation_elbo(vae: VAE, *inputs: torch.Tensor) -> float:
    """Mean single-sample ELBO (nats per example), with a fixed seed.

    :param inputs: the model's arguments for the validation set, ``vae.batch_inputs(...)``.
    """
    devices = [inputs[0].device] if inputs[0].device.type == "cuda" else []
    was_training = vae.training
    vae.eval()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(EVAL_SEED)
        elbo = elbo_per_example(vae.model, vae.guide, *inputs).mean().item()
    vae.train(was_training)
    return elbo


def _prepare_run_dir(out: Path, config: TrainConfig, resume: bool) -> dict | None:
    """Create ``out`` or check it for resuming; return the checkpoint to resume from."""
    has_checkpoint = (out / runs.CHECKPOINT_FILE).exists()
    if not resume:
        if has_checkpoint:
            raise ConfigError(
                f"{out} already holds a trained run; pass --resume to continue it, "
                "or choose another --out"
            )
        out.mkdir(parents=True, exist_ok=True)
        return None
    if not has_checkpoint:
        raise CheckpointError(
            f"--resume was given but {out} holds no checkpoint; drop --resume to start"
        )
    saved = runs.read_config(out)
    changed = saved.differences(config, ignore=(*RESUMABLE_CHANGES, *DATA_FIELDS))
    if changed:
        listed = "; ".join(f"{k}: saved {a!r}, requested {b!r}" for k, (a, b) in changed.items())
        raise CheckpointError(
            f"cannot resume {out}: its configuration differs ({listed}); "
            "use the saved options or another --out"
        )
    return runs.load_checkpoint(out)


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    data: ImageData | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> VAE:
    """Train a VAE as ``config`` says, writing the run to ``out``; return the model.

    :param resume: continue the run in ``out`` from its last checkpoint (with RNG
        state restored, so the result is identical to an uninterrupted run on CPU).
    :param data: images to use instead of loading ``config.dataset``.
    :param progress: show a progress bar per epoch.
    :param log: receives the one-line summary of each epoch.
    """
    out = Path(out)
    checkpoint = _prepare_run_dir(out, config, resume)
    device = resolve_device(config.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)

    if data is None:
        data = config.load_data(device)
    else:
        data = data.to(device)
    config.image_shape = data.image_shape
    config.num_classes = len(data.class_names)
    if data.train.shape[0] < config.batch_size:
        raise ConfigError(
            f"batch-size {config.batch_size} is larger than the {data.train.shape[0]} training "
            "images; lower --batch-size"
        )

    vae = config.build_vae().to(device)
    for images in (data.train, data.val):
        vae.likelihood.validate(images)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    loss_fn = OBJECTIVES[config.objective](config.particles)

    start_epoch = 1
    if checkpoint is not None:
        vae.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        runs.set_rng_state(checkpoint["rng"])
        start_epoch = checkpoint["epoch"] + 1
        runs.truncate_metrics(out, checkpoint["epoch"])
        log(f"resuming {out} after epoch {checkpoint['epoch']}")
    runs.save_config(out, config)

    num_train = data.train.shape[0]
    steps_per_epoch = math.ceil(num_train / config.batch_size)
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        vae.train()
        images = data.training_images()
        order = torch.randperm(num_train, device=device)
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(
            total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", leave=False,
            disable=not progress, unit="step",
        )  # fmt: skip
        for i, first in enumerate(range(0, num_train, config.batch_size)):
            beta = kl_weight(config, (epoch - 1) * steps_per_epoch + i, steps_per_epoch)
            index = order[first : first + config.batch_size]
            inputs = vae.batch_inputs(images[index], data.train_labels[index])
            loss = loss_fn(vae.model, vae.guide, *inputs, beta=beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            if progress and (i + 1) % PROGRESS_EVERY == 0:
                seen = min(num_train, (i + 1) * config.batch_size)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.2f}")
            bar.update()
        bar.close()

        row = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / num_train,
            "val_elbo": validation_elbo(vae, *vae.batch_inputs(data.val, data.val_labels)),
            "beta": beta,
            "seconds": time.perf_counter() - started,
        }
        runs.save_checkpoint(
            out,
            {
                "model": vae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "rng": runs.rng_state(),
                "config": config.to_dict(),
            },
        )
        runs.append_metrics(out, row)
        log(
            f"epoch {epoch}/{config.epochs}  train_loss {row['train_loss']:.2f}  "
            f"val_elbo {row['val_elbo']:.2f}  beta {beta:.3g}  {row['seconds']:.1f}s"
        )
    return vae.eval()
