"""The README's Python quick start runs verbatim."""

import re
from pathlib import Path

import pytest

from pyro_vae.data.images import DATASETS

README = Path(__file__).parents[1] / "README.md"


@pytest.mark.skipif(
    not DATASETS["fashion-mnist"].system_dirs[0].is_dir(), reason="needs dataset-fashion-mnist"
)
def test_python_quick_start_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what the examples write goes there
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    losses = [float(m) for m in re.findall(r"negative ELBO ([\d.]+)", capsys.readouterr().out)]
    assert len(losses) == 2 and losses[1] < losses[0]
