"""The ``pyro-vae`` command line: a thin layer over the library.

Errors the user can fix (:class:`~pyro_vae.core.errors.PyroVAEError`, and bad
arguments) are printed as one line on stderr with exit status 2, never as a
traceback. An interrupted run (Ctrl-C, SIGTERM) exits with ``128 + signal``.
"""

import argparse
import ast
import re
import signal
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import Field, fields
from pathlib import Path
from typing import NoReturn

from pyro_vae import __version__
from pyro_vae.analysis.compare import comparison_table, summarize_runs
from pyro_vae.analysis.encoding import encode_run
from pyro_vae.analysis.evaluation import (
    detection_auroc,
    evaluate_run,
    foreign_dataset,
    generalization_gap,
)
from pyro_vae.analysis.tables import impute_run, sample_rows_run
from pyro_vae.components.networks import ARCHITECTURES
from pyro_vae.config import DEVICE_CHOICES, MODEL_FIELDS, TrainConfig, resolve_device
from pyro_vae.config.fields import DATA, MODEL, OPTIMIZATION, RUN, default_of, is_option
from pyro_vae.core import distributed
from pyro_vae.core.errors import PyroVAEError
from pyro_vae.core.files import check_writable
from pyro_vae.core.registry import registry_help, registry_options
from pyro_vae.data.images import SPLITS
from pyro_vae.figures.plots import (
    check_png_path,
    comparison_figure,
    evaluation_figure,
    plot_run,
    save_png,
)
from pyro_vae.figures.samples import sample_run
from pyro_vae.figures.tables import plot_table_run
from pyro_vae.inference.estimators import DEFAULT_MAX_BATCH
from pyro_vae.runs import (
    CHECKPOINTS,
    CONFIG_FILE,
    evaluation_path,
    fine_tuning_source,
    read_config,
    read_options,
)
from pyro_vae.training.fit import train
from pyro_vae.training.loggers import LOGGERS


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (no usage block), like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None (the help says what happens then) and
    those of on/off flags."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """A flag for every option of :class:`TrainConfig`, from its field's declaration."""
    groups = {title: parser.add_argument_group(title) for title in (DATA, MODEL, OPTIMIZATION)}
    groups[RUN] = parser.add_argument_group(RUN)
    for declared in fields(TrainConfig):
        if is_option(declared):
            _add_field_flag(groups[declared.metadata["group"]], declared)


def _add_field_flag(group: argparse._ArgumentGroup, declared: Field) -> None:
    meta = declared.metadata
    if meta["options_of"] is not None:
        _add_registry_options(group, declared.name.removesuffix("_options"), meta["options_of"])
        return
    help, choices, default = meta["help"], meta["choices"], default_of(declared)
    if isinstance(choices, Mapping):
        help = f"{help}: {registry_help(choices)}"
    flag = "--" + (meta["flag"] or declared.name.replace("_", "-"))
    if declared.type is bool:
        action = "store_false" if default else "store_true"
        help = f"turn off: {help}" if default else help
        group.add_argument(flag, dest=declared.name, action=action, help=help)
        return
    kind = declared.type
    if isinstance(kind, types.UnionType):  # ``X | None``
        (kind,) = (t for t in typing.get_args(kind) if t is not type(None))
    many = typing.get_origin(kind) is tuple
    group.add_argument(
        flag,
        dest=declared.name,
        type=int if many else kind,
        nargs="+" if many else None,
        default=list(default) if many else default,
        choices=None if choices is None else list(choices),
        metavar=meta["metavar"],
        help=help,
    )


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
    for declared in fields(TrainConfig):
        registry = declared.metadata.get("options_of")
        if registry is None:
            continue
        kind = declared.name.removesuffix("_options")
        dests = {option.name: f"{kind}_{option.name}" for option, _ in registry_options(registry)}
        values = {name: getattr(args, dest) for name, dest in dests.items()}
        setattr(args, declared.name, {k: v for k, v in values.items() if v is not None})
        if given.intersection(dests.values()):
            given.add(declared.name)


#: A parameter named in a library message: `name`, `name=value` or `kind_options[key]`.
_PARAMETER = re.compile(r"`(\w+)(?:\[([\w-]+)\])?(?:=([^`]*))?`")


def as_flags(text: str, *parsers: argparse.ArgumentParser) -> str:
    """``text`` with each parameter it names in backticks (see :mod:`pyro_vae.core.errors`)
    written as the flag of the first of ``parsers`` that has it; a parameter without a
    flag keeps its Python spelling."""
    actions = {
        action.dest: action
        for parser in reversed(parsers)
        for action in parser._actions
        if action.option_strings
    }

    def flag(match: re.Match) -> str:
        name, key, value = match.groups()
        action = actions.get(f"{name.removesuffix('_options')}_{key}" if key else name)
        if action is None:
            return match.group(0).strip("`")
        if value is None or action.nargs == 0:
            return action.option_strings[0]
        return f"{action.option_strings[0]} {_flag_value(value)}"

    return _PARAMETER.sub(flag, text)


def _flag_value(text: str) -> str:
    """A Python literal as the command line writes it: ``'iwae'`` as iwae, ``(300, 300)``
    as 300 300."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a VAE and write its run directory",
        description="Train a VAE with SVI. Writes config.json, checkpoint.pt and metrics.jsonl "
        "to --out, one checkpoint and one metrics line per epoch.",
        formatter_class=HelpFormatter,
    )
    _add_config_options(p)
    run = next(group for group in p._action_groups if group.title == RUN)
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
        "--plot", action="store_true", help="write the figures of `pyro-vae plot` to OUT/figures"
    )
    p.set_defaults(handler=_run_train)


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
    # Every option of TrainConfig is a train flag whose dest is the field's name.
    given = _options_given(args)
    _registry_option_values(args, given)
    options = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if is_option(f)}
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
    if read_config(run).table is not None:
        paths = plot_table_run(run, out, device=resolve_device(device), checkpoint=checkpoint)
    else:
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
        "dataset's images) and each image's estimates beside it (of a table's rows, also as "
        "DIR/eval_rows.csv, by row number). Interrupted, it keeps what it has done in "
        "DIR/eval.partial.pt; the same command continues from there.",
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
        metavar="NAME|FILE",
        help="score another dataset's images (a name, or a file as for train; of a table's "
        "run, another table with its columns) with the "
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


def _evaluation_rows(result: dict, examples: str) -> list[tuple[str, str]]:
    """The lines ``evaluate`` prints of its ``result``: (name, value) pairs."""
    split = result["split"]
    active = result["active_units"]
    return [
        (examples, f"{result['num_examples']} ({split})"),
        ("samples per " + examples[:-1], str(result["num_samples"])),
        ("ELBO", f"{result[f'{split}_elbo']:.2f} nats"),
        (
            f"{result['estimates']} (IW)",
            f"{result[f'{split}_log_likelihood']:.2f} "
            f"+- {result['log_likelihood_stderr']:.2f} nats",
        ),
        ("KL(q || p)", f"{result[f'{split}_kl']:.2f} nats"),
        *(
            [("accuracy of q(y|x)", f"{result[f'{split}_accuracy']:.4f}")]
            if f"{split}_accuracy" in result
            else []
        ),
        *(
            [("bits/dim", f"{result[f'{split}_bits_per_dim']:.4f}")]
            if f"{split}_bits_per_dim" in result
            else []
        ),
        ("active units", f"{active}/{result['latent_units']}" if active is not None else "n/a"),
        ("seconds", f"{result['seconds']:.1f} on {result['device']}"),
    ]


def _run_evaluate(args: argparse.Namespace) -> None:
    if args.figure is not None:  # before an hour of evaluation, not after
        check_writable(check_png_path(args.figure).parent)
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
    config = read_config(args.run)
    dataset = foreign_dataset(config, args.dataset)
    examples = "images" if config.table is None else "rows"
    split = result["split"]
    for name, value in _evaluation_rows(result, examples):
        print(f"{name:<18} {value}")
    print(f"written to {evaluation_path(args.run, split, dataset)}")
    gap = generalization_gap(args.run) if dataset is None else None
    if gap is not None:
        print(f"train - test {result['estimates']}: {gap:.2f} nats (the model's overfitting)")
    area = detection_auroc(args.run, dataset) if dataset is not None and split == "test" else None
    if area is not None:
        print(
            f"AUROC {area:.3f}: how often one of the run's own test {examples} scores a "
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
        "per row (completion). Of a table's run, --num rows drawn from the model, written as "
        "a table (.csv or .parquet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_options(p)
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="image file to write (.png); of a table's run, a table (.csv, .parquet)",
    )
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
        help="class to sample (cvae, semi-supervised), or class of the test images to "
        "complete (completion)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_run_sample)


def _run_sample(args: argparse.Namespace) -> None:
    table = read_config(args.run).table is not None
    draw = sample_rows_run if table else sample_run  # rows of a table, else an image grid
    path = draw(
        args.run,
        args.out,
        num=args.num,
        label=args.label,
        seed=args.seed,
        device=args.device,
        checkpoint=args.checkpoint,
    )
    print(f"{args.num} rows written to {path}" if table else f"samples written to {path}")


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


def _add_impute_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "impute",
        help="fill in the missing cells of a table",
        description="Fill in every missing cell of a table file with a trained table run: "
        "the posterior predictive mean given the row's observed cells (importance-weighted, "
        "--num-samples draws of z per row); the most probable value of a binary or "
        "categorical cell. Observed cells are kept as they are.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_options(p)
    p.add_argument("--data", required=True, metavar="FILE", help="the table with missing cells")
    p.add_argument(
        "--out", required=True, metavar="PATH", help="the completed table (.csv or .parquet)"
    )
    p.add_argument(
        "--num-samples", type=int, default=1000, metavar="K", help="samples of z per row"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_run_impute)


def _run_impute(args: argparse.Namespace) -> None:
    path = impute_run(
        args.run,
        args.data,
        args.out,
        num_samples=args.num_samples,
        seed=args.seed,
        device=args.device,
        checkpoint=args.checkpoint,
    )
    print(f"completed table written to {path}")


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
    _add_impute_parser(subparsers)
    _add_compare_parser(subparsers)
    commands = subparsers.choices
    for command in commands.values():  # messages may name how to train, e.g. `model='cvae'`
        command.set_defaults(parser=command, train_parser=commands["train"])
        for action in command._actions:
            if action.help:
                action.help = as_flags(action.help, command, commands["train"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = argv[1:]  # the command's own arguments: argv[0] names the command
    try:
        args.handler(args)
    except PyroVAEError as error:
        message = as_flags(str(error), args.parser, args.train_parser)
        print(f"pyro-vae: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # TrainingInterrupted says where it saved
        message = as_flags(str(interrupt), args.parser, args.train_parser)
        print(f"pyro-vae: {message or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(interrupt, "signum", signal.SIGINT)
    finally:
        distributed.shutdown()  # under torchrun: leave the process group
    return 0
