"""The worked example of docs/extending.md runs, and its new classes pass the registry checks."""

import re
from pathlib import Path

import pytest
import test_priors as prior_checks  # a module object, so pytest does not collect its tests here
import torch

from pyro_vae import load_run, read_config
from pyro_vae.cli import main
from pyro_vae.components.distributions import diagonal_normal
from pyro_vae.components.likelihoods import LIKELIHOODS, build_likelihood
from pyro_vae.components.networks import ARCHITECTURES, GATED_FULL_RESOLUTION
from pyro_vae.components.priors import PRIORS, Prior
from pyro_vae.core.registry import Option

DOC = Path(__file__).parents[1] / "docs" / "extending.md"


@pytest.fixture
def registries():
    """Undo the example's registrations afterwards."""
    saved = dict(PRIORS), dict(LIKELIHOODS), dict(ARCHITECTURES)
    yield
    for registry, before in zip((PRIORS, LIKELIHOODS, ARCHITECTURES), saved, strict=True):
        registry.clear()
        registry.update(before)


def test_worked_example_runs(registries, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "GeometricLikelihood expects non-negative integers (counts)" in out
    losses = namespace["losses"]
    assert sum(losses[-20:]) < 0.8 * sum(losses[:20])

    # The one class + one registry line is all the library needs ...
    assert PRIORS["student-t"] is namespace["StudentTPrior"]
    # ... and the new prior passes the checks every built-in prior passes.
    prior_checks.test_prior_is_a_normalized_density_matching_its_samples("student-t")
    prior_checks.test_prior_integrates_to_one_in_more_dimensions("student-t")
    prior_checks.test_gradients_reach_the_prior_parameters("student-t")

    geometric = build_likelihood("geometric", data_dim=3)
    params, x = torch.randn(2, 3), torch.tensor([[0.0, 1.0, 7.0], [2.0, 0.0, 30.0]])
    log_sigmoid = torch.nn.functional.logsigmoid  # P(x) = (1 - p)^x p, p = sigmoid(eta)
    expected = (x * log_sigmoid(-params) + log_sigmoid(params)).sum(-1)
    assert torch.allclose(geometric(params).log_prob(x), expected)

    # The architecture written in the doc is the library's gated-fullres-conv.
    written = ARCHITECTURES["gated-fullres-conv"]
    assert written is not GATED_FULL_RESOLUTION
    for field in ("channels", "decoder_channels", "output", "layer"):
        assert getattr(written, field) == getattr(GATED_FULL_RESOLUTION, field), field


class ScaledNormal(Prior):
    r""":math:`p(z) = \mathcal N(0, s^2 I)` with a fixed scale s: written outside the package."""

    help = "N(0, s^2 I) with a fixed scale s"
    options = (Option("spread", float, "the scale s (default 1)", "S"),)

    def __init__(self, latent_dim: int, spread: float = 1.0):
        super().__init__(latent_dim)
        self.spread = spread

    def forward(self):
        loc = torch.zeros(self.latent_dim)
        return diagonal_normal(loc, torch.full_like(loc, self.spread))


def test_a_prior_with_a_new_option_is_one_class_and_one_registry_line(
    registries, tmp_path, fake_fashion_dir, capsys
):
    PRIORS["scaled-normal"] = ScaledNormal  # the registry line
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "scaled-normal (N(0, s^2 I) with a fixed scale s)" in help_text
    assert "--prior-spread S scaled-normal: the scale s (default 1)" in help_text

    out = tmp_path / "run"
    argv = f"train --data-root {fake_fashion_dir} --subset 100 --epochs 1 --batch-size 50 "
    argv += f"--latent-dim 2 --hidden-dim 8 --prior scaled-normal --prior-spread 0.5 --out {out}"
    assert main([*argv.split(), "--no-progress"]) == 0
    assert read_config(out).prior_options == {"spread": 0.5}
    assert load_run(out).prior.spread == 0.5
    assert main([*argv.replace("scaled-normal", "normal").split(), "--no-progress"]) == 2
    assert "the 'normal' prior takes no option 'spread' (--prior-spread)" in capsys.readouterr().err
