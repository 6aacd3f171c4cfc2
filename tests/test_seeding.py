import torch

from pyro_vae.core.seeding import derived_seed, seeded


def test_seeded_block_repeats_its_draws_and_leaves_the_outer_rng_alone():
    cpu = torch.device("cpu")
    torch.manual_seed(123)
    expected_outer = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7, cpu):
        first = torch.randn(4)
    with seeded(7, cpu):
        second = torch.randn(4)
    with seeded(8, cpu):
        other = torch.randn(4)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert torch.equal(torch.rand(3), expected_outer)


def test_derived_seed_depends_on_every_key_and_their_order():
    seeds = {derived_seed(0, step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200
    assert derived_seed(1, 2) != derived_seed(2, 1)
    assert derived_seed(1, 2) == derived_seed(1, 2) >= 0
