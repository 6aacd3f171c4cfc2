"""The documentation site: every public name has an API entry, the guide's Python
examples run verbatim (docs/extending.md's are run by test_extending.py), and every
command line shown in the documentation is one the CLI accepts."""

import re
import shlex
from pathlib import Path

import pytest

import pyro_vae
from pyro_vae.cli import build_parser
from pyro_vae.data.images import DATASETS

DOCS = Path(__file__).parents[1] / "docs"
#: Pages whose examples this module runs; the library page's train on Fashion-MNIST.
GUIDE_PAGES = (
    "quickstart.md",
    "guide/tables.md",
    pytest.param(
        "guide/library.md",
        marks=pytest.mark.skipif(
            not DATASETS["fashion-mnist"].system_dirs[0].is_dir(),
            reason="needs dataset-fashion-mnist",
        ),
    ),
)


def documented_names() -> set[str]:
    text = (DOCS / "api.rst").read_text()
    listed = re.findall(r"^   (\w+)$", text, flags=re.M)  # autosummary entries
    registries = re.findall(r"^\.\. autodata:: [\w.]+\.(\w+)$", text, flags=re.M)
    return set(listed) | set(registries)


def test_every_public_name_has_an_api_entry():
    public = set(pyro_vae.__all__) - {"__version__"}
    assert public - documented_names() == set()
    assert documented_names() - public == set()  # and nothing else is listed as public


@pytest.mark.parametrize("page", GUIDE_PAGES)
def test_guide_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what the examples write goes there
    path = DOCS / page
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{page} has no Python example"
    for block in blocks:
        exec(compile(block, str(path), "exec"), {})


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every ``pyro-vae`` command in the shell examples of the documentation and the
    README, as (page, arguments): also those run through ``torchrun -m pyro_vae``."""
    pages = [*sorted(DOCS.rglob("*.md")), DOCS.parent / "README.md"]
    commands = []
    for page in pages:
        if "_build" in page.parts:
            continue
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for command in line.split("#", 1)[0].split("&&"):
                    words = shlex.split(command.replace("$", ""))
                    if words[:1] == ["pyro-vae"]:
                        commands.append((page.name, words[1:]))
                    elif "pyro_vae" in words and words[0] in ("torchrun", "python", "python3"):
                        rest = words[words.index("pyro_vae") + 1 :]
                        commands.append((page.name, rest[1:] if rest[:1] == ["--"] else rest))
    return commands


def test_the_documentation_shows_commands_of_every_kind():
    shown = {arguments[0] for _, arguments in documented_commands() if arguments}
    assert {"train", "evaluate", "plot", "sample", "encode", "compare"} <= shown


@pytest.mark.parametrize(
    ("page", "arguments"),
    [
        pytest.param(page, arguments, id=" ".join(arguments))
        for page, arguments in documented_commands()
    ],
)
def test_documented_command_lines_are_accepted_by_the_cli(page, arguments, capsys):
    parser = build_parser()
    try:
        parser.parse_args(arguments)
    except SystemExit as stop:  # --help exits with 0
        if stop.code != 0:
            pytest.fail(f"{page}: `pyro-vae {' '.join(arguments)}`: {capsys.readouterr().err}")
