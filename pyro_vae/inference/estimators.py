r"""Per-example ELBO and importance-weighted log-likelihood, from Pyro traces.

For any model/guide pair whose data plate is the rightmost batch dimension,

.. math:: \log w_k = \log p(x, z_k) - \log q(z_k \mid x), \qquad z_k \sim q(z \mid x),

computed for all ``K`` particles at once by running the guide inside an outer
``particles`` plate and replaying the model against it. Then, per example,

* ELBO estimate: :math:`\frac1K \sum_k \log w_k`;
* KL estimate: :math:`\frac1K \sum_k [\log q(z_k|x) - \log p(z_k)]`;
* IW estimate (Burda et al. 2016): :math:`\log \frac1K \sum_k w_k`, a lower
  bound on :math:`\log p(x)` in expectation that tightens as ``K`` grows, and
  a consistent estimate of it.

Nothing here is specific to one model: priors, likelihoods and conditional
variants all go through the same traces. Observed sites marked
``infer={"is_auxiliary": True}`` are extra training terms outside the model's
density (the completion model's baseline): the estimates leave them out, and
the training objectives add them back (:attr:`LogDensities.log_auxiliary`).
"""

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from pyro_vae.core.distributed import SINGLE, World
from pyro_vae.core.errors import ConfigError
from pyro_vae.core.recording import GraphCaptureError, RecordedForward
from pyro_vae.core.seeding import derived_seed, seeded

LOGGER = logging.getLogger(__name__)

#: Default bound on particles x examples evaluated in one pass (bounds peak memory).
DEFAULT_MAX_BATCH = 20_000
#: Burda et al.'s threshold on Cov_x(E_q[z_i]) for a latent unit to count as active.
ACTIVE_UNIT_THRESHOLD = 0.01

#: The results of one chunk of examples, by key: per example ``"ll"`` (IW estimate),
#: ``"elbo"``, ``"kl"``, and ``"mean"`` (E_q[z|x]) when the guide has vector latents.
ChunkResults = dict[str, torch.Tensor]


@dataclass
class LogDensities:
    r"""Per (particle, example) log-densities of one vectorized model/guide pass.

    With a discrete latent site enumerated in the guide (``infer={"enumerate":
    "parallel"}``, summed out exactly), the first three are expectations over its values
    under the guide, :math:`\sum_y q(y|x)\,[\cdot]` (``log_guide`` including
    :math:`\log q(y|x)`), and ``log_weights`` the sum :math:`\log \sum_y w_{k,y}`.
    """

    log_likelihood: torch.Tensor  # sum over observed model sites, log p(x|z)
    log_prior: torch.Tensor  # sum over latent model sites, log p(z)
    log_guide: torch.Tensor  # sum over guide sites, log q(z|x)
    # E_q[z] per example, latent sites concatenated; a site whose guide depends on another
    # latent (the HVAE's z1) has its mean given the first particle's value of that latent
    posterior_mean: torch.Tensor | None
    log_auxiliary: torch.Tensor  # sum over auxiliary observed sites (training-only terms)
    log_weights: torch.Tensor  # log p(x, z_k) - log q(z_k | x), enumerated sites summed out

    @property
    def elbo_terms(self) -> torch.Tensor:
        """Per particle, the single-sample ELBO: log p(x|z) + log p(z) - log q(z|x)."""
        return self.log_likelihood + self.log_prior - self.log_guide


def sample_sites(
    trace: poutine.Trace, observed: bool | None = None, auxiliary: bool = False
) -> list[dict]:
    """Random-variable sites of a trace (not plates), optionally only (un)observed ones;
    auxiliary sites only when ``auxiliary`` (then only they)."""
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and (observed is None or site["is_observed"] == observed)
        and site["infer"].get("is_auxiliary", False) == auxiliary
    ]


def log_prob_sum(sites: list[dict]) -> torch.Tensor | float:
    """Sum of the sites' (unscaled) log-densities, per (particle, example)."""
    return sum((site["fn"].log_prob(site["value"]) for site in sites), 0.0)


def vectorized_traces(
    model: Callable, guide: Callable, *args, num_particles: int = 1, **kwargs
) -> tuple[poutine.Trace, poutine.Trace]:
    """The traces of ``guide`` run with ``num_particles`` particles (an outer plate at dim
    -2) and of ``model`` replayed against it; a guide site marked
    ``infer={"enumerate": "parallel"}`` takes all its values at once, in dims left of -2."""
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(poutine.enum(guide, first_available_dim=-3)).get_trace(
            *args, **kwargs
        )
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    return guide_trace, model_trace


def _is_enumerated(site: dict) -> bool:
    return site["infer"].get("enumerate") == "parallel"


def _posterior_mean(site: dict, weight: torch.Tensor, enumerated: list) -> torch.Tensor | None:
    """E_q of a vector latent site per example (its first particle's, ``(batch, d)``),
    averaged over the values of enumerated sites with their weights; None for others."""
    if site["fn"].event_dim != 1:
        return None
    mean = site["fn"].mean.expand(site["value"].shape)
    if enumerated:
        mean = (weight.unsqueeze(-1) * mean).reshape(-1, *mean.shape[-3:]).sum(0)
    return mean[0]


def log_densities(
    model: Callable, guide: Callable, *args, num_particles: int = 1, **kwargs
) -> LogDensities:
    """Run ``guide`` with ``num_particles`` particles and replay ``model`` against it.

    ``model`` and ``guide`` are called with ``*args, **kwargs``; the batch size is
    read from the first argument. Every tensor comes out with shape
    ``(num_particles, batch)``: the values of enumerated guide sites are summed out
    (see :class:`LogDensities`). Differentiable (the IWAE objective trains through
    it); wrap in ``torch.no_grad()`` to evaluate.
    """
    shape = (num_particles, args[0].shape[0])
    guide_trace, model_trace = vectorized_traces(
        model, guide, *args, num_particles=num_particles, **kwargs
    )
    latents = sample_sites(guide_trace)
    enumerated = [site for site in latents if _is_enumerated(site)]
    log_q_enumerated = torch.as_tensor(log_prob_sum(enumerated))
    weight = log_q_enumerated.exp()  # q(y|x) of every enumerated value, 1 without any

    def expected(log_p: torch.Tensor | float) -> torch.Tensor:
        """``sum_y q(y|x) log_p`` over the enumeration dims, as ``(particles, batch)``."""
        terms = (weight * log_p).reshape(-1, *shape) if enumerated else torch.as_tensor(log_p)
        return terms.sum(0) if enumerated else terms.expand(shape)

    log_likelihood = log_prob_sum(sample_sites(model_trace, True))
    log_prior = log_prob_sum(sample_sites(model_trace, False))
    log_guide = log_prob_sum([site for site in latents if not _is_enumerated(site)])
    log_w = torch.as_tensor(log_likelihood + log_prior - log_guide).expand(
        *log_q_enumerated.shape[:-2], *shape
    )
    means = [_posterior_mean(site, weight, enumerated) for site in latents]
    means = [mean for mean in means if mean is not None]
    return LogDensities(
        log_likelihood=expected(log_likelihood),
        log_prior=expected(log_prior),
        log_guide=expected(log_guide + log_q_enumerated),
        posterior_mean=torch.cat(means, dim=-1) if means else None,
        log_auxiliary=torch.as_tensor(
            log_prob_sum(sample_sites(model_trace, auxiliary=True))
        ).expand(shape),
        log_weights=torch.logsumexp(log_w.reshape(-1, *shape), 0) if enumerated else log_w,
    )


def log_importance_weights(
    model: Callable, guide: Callable, *args, num_particles: int = 1, **kwargs
) -> torch.Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` of shape ``(num_particles, batch)``."""
    return log_densities(model, guide, *args, num_particles=num_particles, **kwargs).log_weights


@torch.no_grad()
def bound_per_example(
    model: Callable,
    guide: Callable,
    *data: torch.Tensor,
    num_particles: int = 1,
    max_batch: int = 1000,
    **kwargs,
) -> torch.Tensor:
    r"""The importance-weighted bound :math:`\log \frac1K \sum_k w_k` of each example with
    ``K = num_particles`` samples: with one, the single-sample ELBO. Evaluated in chunks of
    ``max_batch // K`` examples.

    :param data: tensors whose first dimension indexes examples (e.g. ``x``, or
        ``x, y``), passed to ``model``/``guide`` in chunks.
    """
    size = max(1, max_batch // num_particles)
    starts = range(0, data[0].shape[0], size)
    chunks = ([t[i : i + size] for t in data] for i in starts)
    log_k = math.log(num_particles)
    return torch.cat(
        [
            torch.logsumexp(
                log_importance_weights(model, guide, *c, num_particles=num_particles, **kwargs),
                dim=0,
            )
            - log_k
            for c in chunks
        ]
    )


@torch.no_grad()
def check_observed_support(
    model: Callable, guide: Callable, *data: torch.Tensor, max_batch: int = 1000, **kwargs
) -> None:
    """Raise :class:`~pyro_vae.core.errors.ConfigError` if an observed value lies outside
    the support of its site's distribution: ``log_prob`` would score it as a number without
    complaint (0-255 pixels under a Bernoulli). One guide sample per example, in chunks of
    ``max_batch``, drawn under a fixed seed so that the caller's RNG is left as it was."""
    with seeded(0, data[0].device):
        for first in range(0, data[0].shape[0], max_batch):
            chunk = [tensor[first : first + max_batch] for tensor in data]
            guide_trace = poutine.trace(guide).get_trace(*chunk, **kwargs)
            replayed = poutine.replay(model, trace=guide_trace)
            for name, site in poutine.trace(replayed).get_trace(*chunk, **kwargs).nodes.items():
                if site["type"] == "sample" and site["is_observed"]:
                    _check_support(name, site["fn"], site["value"])


def _check_support(name: str, fn: Any, value: torch.Tensor) -> None:
    if bool(fn.support.check(value).all()):
        return
    support = fn.support
    while hasattr(support, "base_constraint"):  # independent(...) of an elementwise one
        support = support.base_constraint
    if hasattr(support, "lower_bound") and hasattr(support, "upper_bound"):
        support = f"[{support.lower_bound:g}, {support.upper_bound:g}]"
    lo, hi = value.min().item(), value.max().item()
    raise ConfigError(
        f"the observed values of site {name!r} range over [{lo:g}, {hi:g}], outside the "
        f"support {support} of its {type(fn).__name__}; scale the data into it (e.g. "
        "pixels to [0, 1]) or choose a likelihood for such values"
    )


@dataclass
class Estimates:
    """Per-example estimates over a data set, and the summaries papers report."""

    log_likelihood: torch.Tensor  # IW estimate of log p(x), nats, shape (N,)
    elbo: torch.Tensor  # ELBO estimated with the same K samples, shape (N,)
    kl: torch.Tensor  # KL(q(z|x) || p(z)) estimated with the same samples, shape (N,)
    posterior_mean: torch.Tensor | None  # E_q[z|x], shape (N, latent)
    num_samples: int
    seconds: float

    @classmethod
    def from_results(
        cls, results: dict[str, torch.Tensor], num_samples: int, seconds: float
    ) -> "Estimates":
        """The estimates of all examples, from their :data:`ChunkResults` keys."""
        return cls(
            log_likelihood=results["ll"],
            elbo=results["elbo"],
            kl=results["kl"],
            posterior_mean=results.get("mean"),
            num_samples=num_samples,
            seconds=seconds,
        )

    @property
    def active_units(self) -> int | None:
        """Latent units with ``Cov_x(E_q[z_i]) > 0.01`` (Burda et al. 2016)."""
        if self.posterior_mean is None or self.posterior_mean.shape[0] < 2:
            return None
        return int((self.posterior_mean.var(dim=0) > ACTIVE_UNIT_THRESHOLD).sum())

    @property
    def latent_units(self) -> int | None:
        """Latent units that :attr:`active_units` counts (all latent sites together)."""
        return None if self.posterior_mean is None else self.posterior_mean.shape[1]

    @property
    def log_likelihood_stderr(self) -> float:
        """Standard error of the mean log-likelihood over examples."""
        n = self.log_likelihood.numel()
        return float(self.log_likelihood.std() / math.sqrt(n)) if n > 1 else float("nan")

    def summary(self, prefix: str = "test") -> dict[str, float | int | None]:
        return {
            f"{prefix}_elbo": float(self.elbo.mean()),
            f"{prefix}_log_likelihood": float(self.log_likelihood.mean()),
            "log_likelihood_stderr": self.log_likelihood_stderr,
            f"{prefix}_kl": float(self.kl.mean()),
            "active_units": self.active_units,
            "latent_units": self.latent_units,
            "num_samples": self.num_samples,
            "num_examples": self.log_likelihood.numel(),
            "seconds": self.seconds,
        }


class ChunkBuffers(Mapping[int, ChunkResults]):
    """The results of chunks of examples, in tensors allocated once for all examples: by
    the first index of each chunk, views of its part.

    Copying each chunk's results in, rather than keeping its result tensors, keeps the
    estimator's memory flat. On glibc, every allocation that outlives a pass takes a piece
    of a large block that the pass freed; the next pass's large temporaries then no longer
    fit there, so the heap grew by megabytes per pass (tens of GB over a 10,000-image
    evaluation) and every pass faulted in fresh pages (about 2,000 per test image).

    :param num_examples: examples in all chunks together.
    """

    def __init__(self, num_examples: int):
        self.num_examples = num_examples
        self.tensors: dict[str, torch.Tensor] = {}
        self.sizes: dict[int, int] = {}  # by first index

    def put(self, start: int, results: ChunkResults) -> None:
        """Copy in the results of the chunk of examples from ``start``."""
        size = results["ll"].shape[0]
        for key, value in results.items():
            if key not in self.tensors:
                self.tensors[key] = value.new_empty((self.num_examples, *value.shape[1:]))
            self.tensors[key][start : start + size] = value
        self.sizes[start] = size

    def __getitem__(self, start: int) -> ChunkResults:
        size = self.sizes[start]
        return {key: tensor[start : start + size] for key, tensor in self.tensors.items()}

    def __iter__(self) -> Iterator[int]:
        return iter(self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def examples_done(self) -> int:
        return sum(self.sizes.values())


@torch.no_grad()
def estimate_log_likelihood(
    model: Callable,
    guide: Callable,
    *data: torch.Tensor,
    num_samples: int = 5000,
    max_batch: int = DEFAULT_MAX_BATCH,
    seed: int | None = 0,
    progress: bool = False,
    world: World = SINGLE,
    done: Mapping[int, ChunkResults] | None = None,
    on_chunk: Callable[[int, ChunkResults], None] | None = None,
    record: bool = True,
    **kwargs,
) -> Estimates:
    r"""Importance-weighted :math:`\log p(x)` of every example, with the guide as proposal.

    :param data: tensors whose first dimension indexes examples (e.g. ``x``, or
        ``x, y`` for a conditional model); chunks of them are passed to
        ``model``/``guide`` together with ``kwargs``.
    :param num_samples: K, importance samples per example (5000 in the literature).
    :param max_batch: at most this many (particle, example) pairs are evaluated
        at once, whatever K is: peak memory is about ``max_batch`` times the
        per-sample activations (for the 784-400-50 MLP, ~10 KB each).
    :param seed: seeds the samples, leaving the caller's RNG as it was (``None``: draw
        from the current RNG, which advances). Each chunk of examples evaluated together
        is seeded by ``(seed, its first index)``, so an example's estimate does not
        depend on how the examples are split over ranks.
    :param world: with several ranks (:mod:`pyro_vae.core.distributed`), rank ``r``
        evaluates chunks ``r, r + size, ...``; every rank gets all estimates, in order.
    :param done: results of chunks evaluated before, by the index of their first
        example: what ``on_chunk`` received during an interrupted call with the same
        arguments and a ``seed``; the estimates are then those of an uninterrupted call.
    :param on_chunk: called with (first index, results) after each chunk this call
        evaluates, e.g. to save progress (:func:`pyro_vae.analysis.evaluation.evaluate_run` does).
    :param record: replay the passes from recorded graphs (:class:`ImportancePasses`).
    """
    if done and seed is None:
        raise ValueError("results of earlier chunks (done) can only be reused with a seed")
    check_observed_support(model, guide, *data, max_batch=max_batch, **kwargs)
    started = time.perf_counter()
    num_examples = data[0].shape[0]
    examples_per_pass = max(1, max_batch // num_samples)
    starts = range(0, num_examples, examples_per_pass)[world.rank :: world.size]
    sizes = {start: min(examples_per_pass, num_examples - start) for start in starts}
    passes = ImportancePasses(model, guide, kwargs, record)
    per_pass = min(num_samples, max_batch)  # particles
    estimate = partial(_estimate_chunk, passes, num_samples=num_samples, per_pass=per_pass)
    with _progress_bar(sizes, done or {}, num_samples, progress) as bar:
        results = _chunk_results(data, sizes, estimate, seed, done or {}, on_chunk, bar)
    merged = _merged(results, world)
    return Estimates.from_results(merged, num_samples, time.perf_counter() - started)


def _chunk_results(
    data: tuple[torch.Tensor, ...],
    sizes: dict[int, int],
    estimate: Callable[[list[torch.Tensor]], ChunkResults],
    seed: int | None,
    done: Mapping[int, ChunkResults],
    on_chunk: Callable[[int, ChunkResults], None] | None,
    bar: tqdm,
) -> ChunkBuffers:
    """The results of the chunks ``sizes`` (their sizes by first index): those ``done`` as
    given, the others estimated (see :func:`estimate_log_likelihood`)."""
    results = ChunkBuffers(data[0].shape[0])
    for start, size in sizes.items():
        chunk_results = done.get(start)
        if chunk_results is None:
            chunk = [tensor[start : start + size] for tensor in data]
            chunk_results = _seeded(estimate, chunk, seed, start)
            if on_chunk is not None:
                on_chunk(start, chunk_results)
            bar.update(size)
        results.put(start, chunk_results)
    return results


def _progress_bar(
    sizes: dict[int, int], done: Mapping[int, ChunkResults], num_samples: int, progress: bool
) -> tqdm:
    """A bar over the examples of the chunks ``sizes`` (by first index), those ``done``
    counted already."""
    initial = sum(size for start, size in sizes.items() if start in done)
    return tqdm(
        total=sum(sizes.values()),
        initial=initial,
        disable=not progress,
        unit="example",
        desc=f"IW K={num_samples}",
    )


def _seeded(
    estimate: Callable[[list[torch.Tensor]], ChunkResults],
    chunk: list[torch.Tensor],
    seed: int | None,
    start: int,
) -> ChunkResults:
    """``estimate(chunk)`` with the samples seeded by ``(seed, start)``, which leaves the
    caller's RNG as it was; with ``seed=None``, drawn from (and advancing) it."""
    if seed is None:
        return estimate(chunk)
    with seeded(derived_seed(seed, start), chunk[0].device):
        return estimate(chunk)


def _merged(results: ChunkBuffers, world: World) -> dict[str, torch.Tensor]:
    """Every rank's chunk results together, on the CPU: rank ``r`` holds chunks ``r, r +
    size, ...`` of the examples."""
    if world.size == 1:
        return {key: tensor.cpu() for key, tensor in results.tensors.items()}
    gathered = world.all_gather(
        ({key: tensor.cpu() for key, tensor in results.tensors.items()}, results.sizes)
    )
    merged = next((dict(tensors) for tensors, _ in gathered if tensors), {})
    for tensors, sizes in gathered:
        for start, size in sizes.items():
            for key, tensor in tensors.items():
                merged[key][start : start + size] = tensor[start : start + size]
    return merged


class ImportancePasses:
    """The passes of the estimator over one chunk of examples: from ``num_particles``
    importance samples, :func:`pass_results`.

    With ``record`` (the default) each pass is replayed from a graph of its aten
    operations, recorded once per number of particles and input shapes
    (:class:`~pyro_vae.core.recording.RecordedForward`): Pyro's Python (traces, effect
    handlers, distribution objects) runs once instead of on every pass, which took about
    2 ms of a 35 ms pass on a 2-core CPU. The estimates are the same, bit for bit. A
    model that reads tensor values on the host cannot be recorded: its passes run
    eagerly, as they do without ``record``.
    """

    def __init__(self, model: Callable, guide: Callable, kwargs: dict, record: bool = True):
        self.model, self.guide, self.kwargs, self.record = model, guide, kwargs, record
        self.recorded: dict[int, RecordedForward] = {}

    def __call__(self, chunk: list[torch.Tensor], num_particles: int) -> ChunkResults:
        compute = partial(
            pass_results, self.model, self.guide, num_particles=num_particles, **self.kwargs
        )
        if not self.record:
            return compute(*chunk)
        recorded = self.recorded.get(num_particles)
        if recorded is None:
            recorded = self.recorded[num_particles] = RecordedForward(compute)
        try:
            return recorded(*chunk)
        except GraphCaptureError as error:
            LOGGER.info("evaluating without recorded passes: %s", error)
            self.record = False
            return compute(*chunk)


def pass_results(
    model: Callable, guide: Callable, *args, num_particles: int, **kwargs
) -> ChunkResults:
    """Of one pass of ``num_particles`` samples per example: ``"log_sum_w"``, the
    log-sum of the importance weights; ``"sum_elbo"`` and ``"sum_kl"``, the sums over the
    samples of the ELBO and KL terms; ``"mean"``, E_q[z|x] (when the guide has vector
    latents). Without Pyro's checks of distribution arguments (a few per cent of a pass):
    :func:`check_observed_support` ran the model and guide with them on every example."""
    with pyro.validation_enabled(False):
        dens = log_densities(model, guide, *args, num_particles=num_particles, **kwargs)
    results = {
        "log_sum_w": torch.logsumexp(dens.log_weights, dim=0),
        "sum_elbo": dens.elbo_terms.sum(dim=0),
        "sum_kl": (dens.log_guide - dens.log_prior).sum(dim=0),
    }
    return results if dens.posterior_mean is None else {**results, "mean": dens.posterior_mean}


def _estimate_chunk(
    passes: ImportancePasses,
    chunk: list[torch.Tensor],
    *,
    num_samples: int,
    per_pass: int,
) -> ChunkResults:
    """The estimates of one chunk of examples from ``num_samples`` importance samples,
    drawn ``per_pass`` at a time and combined with a running log-sum-exp."""
    log_sum_w, sum_log_w, sum_kl, mean = None, 0.0, 0.0, None
    for drawn in range(0, num_samples, per_pass):
        results = passes(chunk, min(per_pass, num_samples - drawn))
        part = results["log_sum_w"]
        log_sum_w = part if log_sum_w is None else torch.logaddexp(log_sum_w, part)
        sum_log_w = sum_log_w + results["sum_elbo"]
        sum_kl = sum_kl + results["sum_kl"]
        mean = results.get("mean") if mean is None else mean
    return {
        "ll": log_sum_w - math.log(num_samples),
        "elbo": sum_log_w / num_samples,
        "kl": sum_kl / num_samples,
        **({"mean": mean} if mean is not None else {}),
    }


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    r"""Area under the ROC curve of telling ``inliers`` from ``outliers`` by their scores
    (e.g. per-image log-likelihoods; higher: more like the inliers): the probability that
    a random inlier scores above a random outlier, ties counting half,

    .. math:: \mathrm{AUROC} = \frac{1}{n_\text{in} n_\text{out}} \sum_{i, j}
              \big([s_i > t_j] + \tfrac12 [s_i = t_j]\big)

    (the Mann-Whitney U statistic, here by sorting: :math:`O(n \log n)`). 1: every
    outlier scores below every inlier; 0.5: chance; below 0.5: the outliers look *more*
    likely, as MNIST digits do to a VAE trained on Fashion-MNIST (Nalisnick et al. 2019).
    """
    inliers, outliers = np.asarray(inliers, np.float64), np.sort(np.asarray(outliers, np.float64))
    if inliers.size == 0 or outliers.size == 0:
        raise ValueError("AUROC needs at least one inlier and one outlier score")
    below = np.searchsorted(outliers, inliers, side="left")  # outliers under each inlier
    not_above = np.searchsorted(outliers, inliers, side="right")  # ... under or equal
    return float((below + not_above).sum() / (2 * inliers.size * outliers.size))
