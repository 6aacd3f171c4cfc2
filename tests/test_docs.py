"""The documentation site: every public name has an API entry, and the guide's Python
examples run verbatim (docs/extending.md's are run by test_extending.py)."""

import re
from pathlib import Path

import pytest

import pyro_vae
from pyro_vae.data.images import DATASETS

DOCS = Path(__file__).parents[1] / "docs"
#: Pages whose examples this module runs; the library page's train on Fashion-MNIST.
GUIDE_PAGES = (
    "quickstart.md",
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
