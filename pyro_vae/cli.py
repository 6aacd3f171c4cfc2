"""The ``pyro-vae`` command line: a thin layer over the library.

Errors the user can fix (:class:`~pyro_vae.core.errors.PyroVAEError`, and bad
arguments) are printed as one line on stderr with exit status 2, never as a
traceback. An interrupted run (Ctrl-C, SIGTERM) exits with ``128 + signal``.
"""

import argparse
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from pyro_vae import __version__
from pyro_vae.analysis.compare import comparison_table, summarize_runs
from pyro_vae.analysis.encoding import encode_run
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.networks import ARCHITECTURES
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import (
    BINARIZE_CHOICES,
    DATA_FIELDS,
    DEVICE_CHOICES,
    MODEL_FIELDS,
    MODELS,
    ON_NAN_CHOICES,
    TrainConfig,
    resolve_device,
)
from pyro_vae.core import distributed
from pyro_vae.core.errors import PyroVAEError
from pyro_vae.core.registry import registry_options
from pyro_vae.data.images import DATASETS, DEFAULT_DATA_ROOT, SPLITS
from pyro_vae.figures.plots import (
    check_png_path,
    comparison_figure,
    evaluation_figure,
    plot_run,
    save_png,
)
from pyro_vae.figures.samples import sample_run
from pyro_vae.inference.estimators import DEFAULT_MAX_BATCH
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.inference.schedules import LR_SCHEDULES
from pyro_vae.models.conditional import OBSERVED_QUADRANT_CHOICES
from pyro_vae.runs import (
    CHECKPOINTS,
    CONFIG_FILE,
    detection_auroc,
    evaluate_run,
    evaluation_path,
    fine_tuning_source,
    foreign_dataset,
    generalization_gap,
    read_config,
    read_options,
)
from pyro_vae.training.fit import train
from pyro_vae.training.loggers import LOGGERS

DEFAULTS = TrainConfig()


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (no usage block), like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None: the help says what happens then."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def _registry_help(registry: Mapping[str, type]) -> str:
    """The choices of a registry and what each is, from the classes' ``help``."""
    return "; ".join(f"{name} ({cls.help})" if cls.help else name for name, cls in registry.items())


def _add_registry_options(
    group: argparse._ArgumentGroup, kind: str, registry: Mapping[str, type]
) -> None:
    """A ``--KIND-OPTION`` flag for every option the registry's classes declare."""
    for option, helps in registry_options(registry):
        group.add_argument(
            f"--{kind}-{option.name}",
            dest=f"{kind}_{option.name}",
            default=None,
            metavar=option.metavar,
            help="; ".join(
                f"{', '.join(n for n, t in helps.items() if t == text)}: {text}"
                for text in dict.fromkeys(helps.values())
            ),
        )


def _registry_option_values(args: argparse.Namespace, given: set[str]) -> None:
    """Gather the values of the ``--KIND-OPTION`` flags into ``args.KIND_options``, and
    count ``KIND_options`` as given where one of its flags is."""
    for kind, registry in (("prior", PRIORS), ("likelihood", LIKELIHOODS)):
        dests = {option.name: f"{kind}_{option.name}" for option, _ in registry_options(registry)}
        values = {name: getattr(args, dest) for name, dest in dests.items()}
        setattr(args, f"{kind}_options", {k: v for k, v in values.items() if v is not None})
        if given.intersection(dests.values()):
            given.add(f"{kind}_options")


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a VAE and write its run directory",
        description="Train a VAE with SVI. Writes config.json, checkpoint.pt and metrics.jsonl "
        "to --out, one checkpoint and one metrics line per epoch.",
        formatter_class=HelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=DEFAULTS.dataset,
        metavar="NAME|FILE.npz",
        help=f"image dataset: {', '.join(DATASETS)} (50k train / last 10k of train as "
        "validation / 10k test), or a .npz file of your images: arrays train and test, "
        "(N, H, W) or (N, C, H, W), uint8 or floats in [0, 1], optional train_labels, "
        "test_labels, class_names (the last sixth of train is the validation set)",
    )
    data.add_argument(
        "--data-root",
        default=None,
        help=f"where to look for (and download) the data; default {DEFAULT_DATA_ROOT} "
        "(or $PYRO_VAE_DATA), then the system copy",
    )
    data.add_argument(
        "--binarize",
        choices=BINARIZE_CHOICES,
        default=DEFAULTS.binarize,
        help="dynamic: resample binary training images every epoch, binarize "
        "val/test once with a fixed seed; none: keep grey levels in [0, 1]",
    )
    data.add_argument(
        "--subset",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N training images only (quick runs)",
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        choices=list(MODELS),
        default=DEFAULTS.model,
        help="vae: p(x); hvae: two-level hierarchical VAE p(z2) p(z1|z2) p(x|z1,z2) "
        "(Tomczak & Welling 2018; --prior is p(z2)); cvae: label-conditional p(x|y); "
        "completion: structured-output CVAE generating the missing quadrants of an image from "
        "the observed ones",
    )
    model.add_argument(
        "--observed-quadrants",
        type=int,
        choices=OBSERVED_QUADRANT_CHOICES,
        default=DEFAULTS.observed_quadrants,
        help="completion: observed quadrants (1 bottom-left, 2 +top-left, 3 +top-right)",
    )
    model.add_argument(
        "--conditional-prior",
        action="store_true",
        help="cvae: learn a Gaussian p(z|y) per class instead of using --prior",
    )
    model.add_argument("--latent-dim", type=int, default=DEFAULTS.latent_dim, help="size of z")
    model.add_argument(
        "--hidden-dim",
        type=int,
        nargs="+",
        default=list(DEFAULTS.hidden_dims),
        dest="hidden_dims",
        metavar="H",
        help="widths of the encoder's fully connected hidden layers (the decoder mirrors "
        "them); with --arch conv, those between the convolutions and the latent",
    )
    model.add_argument(
        "--arch",
        choices=list(ARCHITECTURES),
        default=DEFAULTS.arch,
        help="encoder/decoder networks (vae, hvae): mlp (fully connected, ReLU); conv (two "
        "stride-2 convolutions with 32 and 64 channels, mirrored by transposed convolutions); "
        "gated (fully connected with gated dense layers (W1 u + b1) * sigmoid(W2 u + b2), as in "
        "the VampPrior paper with --hidden-dim 300 300); gated-conv (conv with every convolution "
        "and hidden layer gated so); gated-fullres-conv (the VampPrior paper's gated "
        "convolutions: five in the encoder, a decoder that refines a full-size map with four "
        "3x3 convolutions of 64 channels)",
    )
    model.add_argument(
        "--prior",
        choices=list(PRIORS),
        default=DEFAULTS.prior,
        help=f"prior p(z): {_registry_help(PRIORS)}",
    )
    _add_registry_options(model, "prior", PRIORS)
    model.add_argument(
        "--likelihood",
        choices=list(LIKELIHOODS),
        default=DEFAULTS.likelihood,
        help=f"likelihood p(x|z): {_registry_help(LIKELIHOODS)}",
    )
    _add_registry_options(model, "likelihood", LIKELIHOODS)
    opt = p.add_argument_group("objective and optimization")
    opt.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default=DEFAULTS.objective,
        help="elbo: Trace_ELBO (without its host reads); analytic-kl: TraceMeanField_ELBO; "
        "iwae: importance-weighted bound with --particles samples (the best epoch, early "
        "stopping and the lr schedule then follow the validation IWAE bound)",
    )
    opt.add_argument(
        "--particles",
        type=int,
        default=DEFAULTS.particles,
        metavar="K",
        help="samples of z per example in the objective",
    )
    opt.add_argument(
        "--beta",
        type=float,
        default=DEFAULTS.beta,
        help="weight of the KL term (beta-VAE); must be > 0",
    )
    opt.add_argument(
        "--warmup-epochs",
        type=int,
        default=DEFAULTS.warmup_epochs,
        help="raise beta linearly from ~0 to --beta over this many epochs (0: off)",
    )
    opt.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="number of epochs")
    opt.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="batch size")
    opt.add_argument("--lr", type=float, default=DEFAULTS.lr, help="Adam learning rate")
    opt.add_argument(
        "--lr-schedule",
        choices=list(LR_SCHEDULES),
        default=DEFAULTS.lr_schedule,
        help="constant, or plateau: multiply the lr by --lr-decay when the validation ELBO "
        "has not improved for --lr-patience epochs",
    )
    opt.add_argument(
        "--lr-decay", type=float, default=DEFAULTS.lr_decay, help="factor of --lr-schedule plateau"
    )
    opt.add_argument(
        "--lr-patience",
        type=int,
        default=DEFAULTS.lr_patience,
        metavar="EPOCHS",
        help="epochs without improvement before --lr-schedule plateau lowers the lr",
    )
    opt.add_argument(
        "--clip-grad-norm",
        type=float,
        default=DEFAULTS.clip_grad_norm,
        metavar="NORM",
        help="clip the gradient of the per-example loss to this norm before each step "
        "(default: no clipping); the epoch log counts the clipped steps",
    )
    opt.add_argument(
        "--weight-decay",
        type=float,
        default=DEFAULTS.weight_decay,
        metavar="WD",
        help="decoupled weight decay (AdamW): each step also shrinks the parameters by the "
        "factor 1 - lr * WD, against overfitting (0: plain Adam)",
    )
    opt.add_argument(
        "--patience",
        type=int,
        default=DEFAULTS.patience,
        metavar="EPOCHS",
        help="early stopping: stop when the validation ELBO has not improved for this many "
        "epochs (0: off); evaluate, plot and sample then use the best epoch (OUT/best.pt)",
    )
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed")
    run.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default=DEFAULTS.device,
        help="auto: CUDA when available, else CPU",
    )
    run.add_argument("--out", default="runs/vae", help="run directory to write")
    run.add_argument(
        "--config",
        metavar="FILE",
        help="take the options from a JSON file: a run's config.json (or the run directory, "
        "to train another like it) or any subset of its keys; options written on the command "
        "line override it",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint; options left out keep the "
        "run's saved values, those given must match them except the likes of --epochs and "
        "--lr (an error names any that may not change)",
    )
    run.add_argument(
        "--init-from",
        default=DEFAULTS.init_from,
        metavar="RUN",
        help="fine-tune: start from the model of another run (its directory, for its best.pt, "
        "or a checkpoint file); model options left out are that run's, those given must "
        "match them; optimizer and epochs start anew, e.g. to continue a trained VAE with "
        "--objective iwae",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--logger",
        choices=list(LOGGERS),
        nargs="+",
        default=[],
        help="also log each epoch's scalars and image grids with these tools; "
        "tensorboard: event files in OUT/tensorboard, for `tensorboard --logdir OUT` "
        "(needs pip install 'pyro-vae[tensorboard]')",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULTS.checkpoint_every,
        metavar="N",
        help="also checkpoint every N steps (0: only at the end of each epoch, and on Ctrl-C)",
    )
    run.add_argument(
        "--on-nan",
        choices=ON_NAN_CHOICES,
        default=DEFAULTS.on_nan,
        help="on a non-finite loss or gradient: stop (the last checkpoint stays good), or "
        "roll back to the last checkpoint and halve the learning rate",
    )
    run.add_argument(
        "--no-cuda-graph",
        dest="cuda_graph",
        action="store_false",
        help="on a GPU, run every training step eagerly instead of replaying it from a CUDA "
        "graph (for debugging a model that a graph records wrongly)",
    )
    run.add_argument(
        "--plot", action="store_true", help="write the figures of `pyro-vae plot` to OUT/figures"
    )
    p.set_defaults(handler=_run_train, parser=p)


def _options_given(args: argparse.Namespace) -> set[str]:
    """The option names (dests) written on the command line, as opposed to defaulted."""
    unset = object()
    given = argparse.Namespace(**{name: unset for name in vars(args)})
    args.parser.parse_args(args.command_line, given)  # only what is written replaces ``unset``
    return {name for name, value in vars(given).items() if value is not unset}


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's options: those written on the command line, then those of ``--config``,
    then (for the options left out of both) the run being continued: all of its options
    when resuming, its model's when fine-tuning from it; then the defaults."""
    # Every option of TrainConfig is a train option of the same name (dest); the rest of
    # its fields are set from the data.
    given = _options_given(args)
    _registry_option_values(args, given)
    options = {
        f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name not in DATA_FIELDS
    }
    chosen = read_options(args.config) if args.config else {}
    chosen |= {name: options[name] for name in given if name in options}
    if args.resume and (Path(args.out) / CONFIG_FILE).is_file():
        source, inherited = read_config(args.out), set(options)
    elif chosen.get("init_from") is not None:
        source, inherited = fine_tuning_source(chosen["init_from"])[2], set(MODEL_FIELDS)
    else:
        source, inherited = None, set()
    options |= {name: getattr(source, name) for name in inherited.intersection(options)}
    return TrainConfig(**options | chosen)


def _run_train(args: argparse.Namespace) -> None:
    config = _train_config(args)
    loggers = [LOGGERS[name]() for name in args.logger]
    train(config, args.out, resume=args.resume, progress=not args.no_progress, callbacks=loggers)
    if not distributed.is_main_process():  # under torchrun, rank 0 reports and draws
        return
    print(f"run written to {args.out}")
    if args.plot:
        _write_figures(args.out, None, args.data_root, args.device, None)


def _add_model_options(p: argparse.ArgumentParser, device: str = "auto") -> None:
    """The options of the commands that load a trained run: which, where to, which model."""
    p.add_argument("--run", required=True, metavar="DIR", help="run directory from `train`")
    p.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default=device,
        help="auto: CUDA when available, else CPU",
    )
    p.add_argument(
        "--checkpoint",
        choices=list(CHECKPOINTS),
        default=None,
        help="which saved model: the last epoch's, or the best validation ELBO's (best.pt); "
        "default: best for a run trained with --patience, else last",
    )


def _add_plot_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw the figures of a trained run as PNG files",
        description="Draw reconstructions, prior samples, interpolations, latent traversals, "
        "the latent space, the 2-D manifold and the training curves of a run made by "
        "`pyro-vae train`, from its test images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_options(p, device="cpu")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write; default RUN/figures")
    p.add_argument(
        "--data-root", default=None, help="where to find the dataset; default: the run's"
    )
    p.set_defaults(handler=_run_plot)


def _run_plot(args: argparse.Namespace) -> None:
    _write_figures(args.run, args.out, args.data_root, args.device, args.checkpoint)


def _write_figures(
    run: str, out: str | None, data_root: str | None, device: str, checkpoint: str | None
) -> None:
    paths = plot_run(
        run, out, data_root=data_root, device=resolve_device(device), checkpoint=checkpoint
    )
    print(f"{len(paths)} figures written to {paths[0].parent}")


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="importance-weighted log-likelihood of a trained run",
        description="Estimate log p(x) of every test (or validation, or training) image by "
        "importance sampling with the encoder as proposal, log p(x) ~ logmeanexp_k "
        "p(x,z_k)/q(z_k|x), and write the summary to DIR/eval.json (DIR/eval_val.json, "
        "DIR/eval_train.json for --split val, train; DIR/eval-NAME.json for another "
        "dataset's images) and each image's estimates beside it. Interrupted, it keeps what "
        "it has done in DIR/eval.partial.pt; the same command continues from there.",
        formatter_class=HelpFormatter,
    )
    _add_model_options(p)
    p.add_argument(
        "--num-samples", type=int, default=5000, metavar="K", help="importance samples per image"
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="which images; train (binarized once with a seed of its own) against test "
        "measures overfitting",
    )
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME|FILE.npz",
        help="score another dataset's images (a name, or a .npz file as for train) with the "
        "run's model; once the run's own test images are evaluated too, the AUROC of "
        "telling them apart by log p(x) (out-of-distribution detection) is printed",
    )
    p.add_argument("--data-root", default=None, help="where to find --dataset; default: the run's")
    p.add_argument(
        "--figure",
        metavar="PATH",
        help="also write a histogram of the per-image estimates to PATH (.png), beside the "
        "run's test images' when these are other images",
    )
    p.add_argument(
        "--subset",
        type=int,
        default=None,
        metavar="N",
        help="evaluate the first N images of the split only",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="at most this many (sample, image) pairs per pass; bounds memory (default: "
        f"{DEFAULT_MAX_BATCH} on a GPU; on a CPU what ran fastest for the --arch, "
        + ", ".join(f"{a.cpu_evaluation_batch} for {name}" for name, a in ARCHITECTURES.items())
        + ")",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    if args.figure is not None:
        check_png_path(args.figure)  # before an hour of evaluation, not after
    result = evaluate_run(
        args.run,
        split=args.split,
        num_samples=args.num_samples,
        subset=args.subset,
        max_batch=args.max_batch,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
        checkpoint=args.checkpoint,
        dataset=args.dataset,
        data_root=args.data_root,
    )
    if not distributed.is_main_process():
        return
    dataset = foreign_dataset(read_config(args.run), args.dataset)
    split = result["split"]
    active = result["active_units"]
    rows = [
        ("images", f"{result['num_examples']} ({split})"),
        ("samples per image", str(result["num_samples"])),
        ("ELBO", f"{result[f'{split}_elbo']:.2f} nats"),
        (
            f"{result['estimates']} (IW)",
            f"{result[f'{split}_log_likelihood']:.2f} "
            f"+- {result['log_likelihood_stderr']:.2f} nats",
        ),
        ("KL(q || p)", f"{result[f'{split}_kl']:.2f} nats"),
        *(
            [("bits/dim", f"{result[f'{split}_bits_per_dim']:.4f}")]
            if f"{split}_bits_per_dim" in result
            else []
        ),
        ("active units", f"{active}/{result['latent_units']}" if active is not None else "n/a"),
        ("seconds", f"{result['seconds']:.1f} on {result['device']}"),
    ]
    for name, value in rows:
        print(f"{name:<18} {value}")
    print(f"written to {evaluation_path(args.run, split, dataset)}")
    gap = generalization_gap(args.run) if dataset is None else None
    if gap is not None:
        print(f"train - test {result['estimates']}: {gap:.2f} nats (the model's overfitting)")
    area = detection_auroc(args.run, dataset) if dataset is not None and split == "test" else None
    if area is not None:
        print(
            f"AUROC {area:.3f}: how often one of the run's own test images scores a "
            f"higher {result['estimates']} than one of {dataset}'s (0.5: chance)"
        )
    if args.figure is not None:
        save_png(evaluation_figure(args.run, split, dataset), args.figure)
        print(f"figure written to {args.figure}")


def _add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample",
        help="save a grid of samples from a trained run",
        description="Draw samples from a trained run and save them as one image grid: prior "
        "samples (vae, hvae); samples of class --label, or one row per class without it (cvae); "
        "completions of test images: observed part, baseline guess, 8 completions, truth "
        "per row (completion).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_options(p)
    p.add_argument("--out", required=True, metavar="PATH", help="image file to write (.png)")
    p.add_argument(
        "--num",
        type=int,
        default=64,
        metavar="N",
        help="number of samples (without --label: N // classes per class; completion: "
        "number of completions, 8 per test image)",
    )
    p.add_argument(
        "--label",
        type=int,
        default=None,
        metavar="C",
        help="class to sample (cvae), or class of the test images to complete (completion)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_run_sample)


def _run_sample(args: argparse.Namespace) -> None:
    path = sample_run(
        args.run,
        args.out,
        num=args.num,
        label=args.label,
        seed=args.seed,
        device=args.device,
        checkpoint=args.checkpoint,
    )
    print(f"samples written to {path}")


def _add_encode_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encode",
        help="write the latent codes of a run's images",
        description="Encode every image of a split with a trained run's encoder and write "
        "q(z|x) to a .npz file: loc (the posterior means, the usual representation), scale, "
        "labels and class_names (hvae: the top layer z2).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_options(p)
    p.add_argument("--out", required=True, metavar="PATH", help="file to write (.npz)")
    p.add_argument("--split", choices=SPLITS, default="test", help="which images")
    p.set_defaults(handler=_run_encode)


def _run_encode(args: argparse.Namespace) -> None:
    path = encode_run(
        args.run, args.out, split=args.split, device=args.device, checkpoint=args.checkpoint
    )
    print(f"latent codes written to {path}")


def _add_compare_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare runs: a table and learning curves",
        description="Print a Markdown table of runs side by side: the options they differ "
        "in, best epoch, status, best validation bound, test log-likelihood (after "
        "`evaluate`) and training time; --figure also draws their validation curves and "
        "test log-likelihoods.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories from `train`")
    p.add_argument("--figure", metavar="PATH", help="also write the figure to PATH (.png)")
    p.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> None:
    summaries = summarize_runs(args.runs)
    print(comparison_table(summaries))
    if args.figure:
        save_png(comparison_figure(summaries), args.figure)
        print(f"figure written to {args.figure}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyro-vae",
        description="Variational autoencoders with Pyro: train, evaluate and inspect them.",
    )
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_train_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_plot_parser(subparsers)
    _add_sample_parser(subparsers)
    _add_encode_parser(subparsers)
    _add_compare_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = argv[1:]  # the command's own arguments: argv[0] names the command
    try:
        args.handler(args)
    except PyroVAEError as error:
        print(f"pyro-vae: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # TrainingInterrupted says where it saved
        print(f"pyro-vae: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(interrupt, "signum", signal.SIGINT)
    finally:
        distributed.shutdown()  # under torchrun: leave the process group
    return 0
