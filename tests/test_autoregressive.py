"""The autoregressive Bernoulli likelihood: a normalized distribution, exact ancestral
sampling, and a decoder that learns pixel dependencies a factorized one cannot."""

import itertools
import math

import pytest
import torch
from conftest import same_seed_log_weights

from pyro_vae import CheckpointError, ImageData, TrainConfig, load_run, read_metrics, train
from pyro_vae.components.likelihoods import AutoregressiveBernoulliLikelihood, BernoulliLikelihood
from pyro_vae.components.networks import AutoregressiveLogits
from pyro_vae.runs import restore


def randomized(likelihood: AutoregressiveBernoulliLikelihood, seed: int = 0):
    """Away from the zero start of the output and skip weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in likelihood.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return likelihood


def all_binary_vectors(dim: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=dim)))


@pytest.mark.parametrize("hidden_dims", [(8,), (8, 6)])
def test_each_logit_sees_exactly_the_pixels_before_it(hidden_dims):
    net = randomized(AutoregressiveBernoulliLikelihood(7, hidden_dims)).net
    jacobian = torch.autograd.functional.jacobian(net, torch.tensor([1.0, 0, 1, 1, 0, 1, 0]))
    assert torch.equal(jacobian.triu(), torch.zeros(7, 7))  # nothing from x_i or later
    earlier = torch.ones(7, 7).tril(-1).bool()
    assert bool((jacobian[earlier] != 0).all())  # the skip weights reach every earlier pixel


def test_probabilities_sum_to_one_for_any_logits():
    likelihood = randomized(AutoregressiveBernoulliLikelihood(5, (6, 4)))
    logits = 3 * torch.randn(3, 1, 5)  # three contexts, each against all 32 images
    log_p = likelihood(logits).log_prob(all_binary_vectors(5))
    assert log_p.shape == (3, 32)
    assert torch.allclose(log_p.logsumexp(-1), torch.zeros(3), atol=1e-5)


def test_samples_follow_log_prob_and_report_their_probabilities():
    torch.manual_seed(0)
    likelihood = randomized(AutoregressiveBernoulliLikelihood(3, (5,)), seed=1)
    logits = torch.tensor([[0.5, -1.0, 0.2]])
    fn = likelihood(logits)
    samples, probs = fn.sample_with_probs((50_000,))
    assert samples.shape == (50_000, 1, 3)
    # the incremental first layer gives the probabilities of the full forward pass
    full = torch.sigmoid(logits + likelihood.net(samples))
    assert torch.allclose(probs, full, atol=1e-6)
    codes = (samples[:, 0] * torch.tensor([4.0, 2.0, 1.0])).sum(-1).long()
    frequencies = torch.bincount(codes, minlength=8).float() / len(codes)
    exact = fn.log_prob(all_binary_vectors(3)).exp()
    assert torch.allclose(frequencies, exact, atol=0.01)
    assert fn.sample().shape == (1, 3)


def test_untrained_it_is_the_factorized_bernoulli():
    logits = torch.randn(4, 6)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    autoregressive = AutoregressiveBernoulliLikelihood(6)(logits).log_prob(x)
    assert torch.allclose(autoregressive, BernoulliLikelihood()(logits).log_prob(x))


def test_particles_share_one_pass_of_the_network(monkeypatch):
    """K importance samples of the logits against B images: one MADE pass over B images."""
    likelihood = randomized(AutoregressiveBernoulliLikelihood(6, (8,)))
    logits, x = torch.randn(10, 4, 6), torch.bernoulli(torch.full((4, 6), 0.5))
    per_particle = torch.stack([likelihood(logits[k]).log_prob(x) for k in range(10)])
    inputs = []
    forward = AutoregressiveLogits.forward
    monkeypatch.setattr(
        AutoregressiveLogits, "forward", lambda net, v: inputs.append(v.shape) or forward(net, v)
    )
    assert torch.allclose(likelihood(logits).log_prob(x), per_particle, atol=1e-5)
    assert inputs == [(4, 6)]


def markov_chain_images(num: int, seed: int) -> torch.Tensor:
    """4x4 binary images whose pixels repeat the previous one with probability 0.9."""
    generator = torch.Generator().manual_seed(seed)
    flips = torch.rand(num, 16, generator=generator) < 0.1
    first = torch.rand(num, 1, generator=generator) < 0.5
    flips[:, :1] = first
    return (flips.long().cumsum(-1) % 2).float()


def chain_data() -> ImageData:
    images = [markov_chain_images(n, seed) for n, seed in ((2048, 0), (512, 1), (512, 2))]
    labels = [torch.zeros(len(x), dtype=torch.long) for x in images]
    return ImageData(
        train=images[0],
        train_labels=labels[0],
        val=images[1],
        val_labels=labels[1],
        test=images[2],
        test_labels=labels[2],
        image_shape=(1, 4, 4),
        class_names=("chain",),
        binarize=False,
    )


def test_learns_the_dependencies_a_factorized_decoder_cannot(tmp_path):
    """Markov-chain pixels: -log p(x) is log 2 + 15 H(0.9) = 5.57 nats. A one-dimensional z
    and a factorized decoder stay far from it; the autoregressive decoder reaches it."""
    data = chain_data()
    entropy = math.log(2) + 15 * -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    val_elbo = {}
    for likelihood in ("bernoulli", "autoregressive-bernoulli"):
        config = TrainConfig(
            likelihood=likelihood,
            latent_dim=1,
            hidden_dims=(32,),
            epochs=12,
            batch_size=64,
            lr=1e-2,
            device="cpu",
            binarize="none",
        )
        vae = train(config, tmp_path / likelihood, data=data, progress=False)
        val_elbo[likelihood] = read_metrics(tmp_path / likelihood)[-1]["val_elbo"]
    assert val_elbo["bernoulli"] < -entropy - 2
    assert val_elbo["autoregressive-bernoulli"] > -entropy - 0.5

    # the run directory restores the network: the same importance weights, binary draws
    loaded = load_run(tmp_path / "autoregressive-bernoulli")
    log_w = same_seed_log_weights((vae, loaded), data.test[:8], num_particles=5)
    assert torch.equal(log_w[0], log_w[1]) and bool(torch.isfinite(log_w[0]).all())
    draws = loaded.likelihood(loaded.decoder(torch.zeros(3, 1))).sample()
    assert draws.shape == (3, 16) and bool(((draws == 0) | (draws == 1)).all())
    pictures = loaded.sample(3)  # figures: the probabilities along a draw
    assert pictures.shape == (3, 16) and bool(((pictures > 0) & (pictures < 1)).all())


def test_checkpoints_leave_out_the_masks_and_accept_older_ones_that_hold_them():
    made = AutoregressiveLogits(6, (8,))
    torch.nn.init.normal_(made.output.weight)
    torch.nn.init.normal_(made.skip.weight)
    state = made.state_dict()
    assert not [key for key in state if key.endswith("mask")]  # derived from the sizes
    x = torch.bernoulli(torch.full((4, 6), 0.5))

    older = {
        **state,
        **{f"{name}.mask": layer.mask.clone() for name, layer in made._masked_layers()},
    }
    restored = AutoregressiveLogits(6, (8,))
    restored.load_state_dict(older)
    assert torch.equal(restored(x), made(x))

    older["skip.mask"] = torch.ones(6, 6)  # a mask that lets pixels see themselves
    with pytest.raises(CheckpointError, match="saved MADE mask of skip differs"):
        restore(AutoregressiveLogits(6, (8,)), older, "old.pt")
