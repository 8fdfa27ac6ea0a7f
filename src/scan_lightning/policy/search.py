"""Threshold searches on cached validation outputs: SCAN's genetic algorithm and the budgeted protocol."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from scan_lightning.policy.cache import ExitCache
from scan_lightning.policy.exit_policy import choose_exits
from scan_lightning.policy.rules import ExitRule
from scan_lightning.policy.settings import GASettings, SearchSettings


def decode_genes(genes: torch.Tensor, low: float = 0.7) -> torch.Tensor:
    """SCAN Eq. 3: sigma = 1 - ((1 - low) / N) * popcount for N bits per threshold. (..., K, N) -> (..., K)."""
    bits = genes.shape[-1]
    return 1.0 - (1.0 - low) / bits * genes.float().sum(-1)


@dataclass
class GAResult:
    """The GA's best thresholds, their fitness, accuracy and mean cost, and the best fitness per generation."""
    thresholds: list[float]
    fitness: float
    accuracy: float
    mean_cost: float
    best_per_generation: list[float] = field(default_factory=list)


def population_scores(confidence: torch.Tensor, outcome: torch.Tensor, thresholds: torch.Tensor,
                      exit_costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and mean cost (MACs or ms) of every threshold vector in ``thresholds`` (P, K), all at once.

    ``confidence``: (K, N) per-exit confidences; ``outcome``: (K + 1, N) right/wrong per exit and fallback;
    ``exit_costs``: (K + 1,) or, per threshold vector, (P, K + 1).
    """
    chosen = choose_exits(confidence, thresholds)                             # (P, N)
    n = chosen.shape[1]
    # one-hot (member, exit, sample): accuracy and MACs as two reductions, no (P, N) gathers
    one_hot = torch.zeros(chosen.shape[0], outcome.shape[0], n).scatter_(1, chosen[:, None], 1.0)
    acc = torch.einsum("pkn,kn->p", one_hot, outcome.float()) / n
    cost = (one_hot.sum(2).double() * exit_costs.double()).sum(-1) / n
    return acc, cost


def genetic_search(
    cache: ExitCache,
    exit_costs: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    reference_cost: float,
    ga: GASettings | None = None,
    fallback: str = "ensemble",
    temperatures: list[float] | None = None,
    rule: ExitRule | None = None,
    **changes: Any,
) -> GAResult:
    """SCAN Algorithm 2 (Zhang et al., NeurIPS 2019). fitness = reference_cost / mean_cost + beta * (accuracy -
    baseline) (Eq. 4).

    ``exit_costs``: (K + 1,) cost of leaving at each exit, then the fallback - honest MACs (the paper's
    acceleration ratio) or measured milliseconds (a latency table) - or a function giving them per threshold
    vector ((P, K) -> (P, K + 1): an exit a policy switches off costs nothing, see ``Scorer.cost_model``);
    ``reference_cost``: the plain network's. ``ga``: the settings (:class:`GASettings`, checked when made); without
    them, ``conf/search/default.yaml``'s with ``changes`` (e.g. ``population=40``).

    Roulette selection on shifted fitness, single-point crossover per pair, bit-flip mutation,
    ``elite`` best genomes carried over unchanged. ``baseline``: ``"deepest"``, ``"ensemble"`` or an
    accuracy in [0, 1]. Accuracy is a fraction, so beta = 200 trades 1 point of accuracy for 2x speed.
    ``fallback``: what answers samples no exit claims (``"ensemble"``, the paper, or ``"deepest"``). ``rule``: the exit
    rule whose scores the thresholds cut (max softmax, the paper, by default); its genes decode to thresholds in
    [``ga.low`` or the rule's :attr:`~scan_lightning.policy.rules.RuleInfo.search_low`, 1].
    """
    if ga is None:
        ga = SearchSettings.from_config({"ga": changes}).ga
    elif changes:
        raise ValueError(f"give the GA settings either as ga= or as keywords, not both ({sorted(changes)})")
    if ga.baseline_run is not None:
        raise ValueError(f"search.ga.baseline={ga.baseline}: read the baseline run's accuracy first "
                         f"(scan_lightning.training.checkpoints.resolve_baseline)")
    if isinstance(ga.baseline, str):
        base = cache.accuracy()[-2 if ga.baseline == "deepest" else -1].item()
    else:
        base = float(ga.baseline)
    beta, bits, population, generations = ga.beta, ga.bits, ga.population, ga.generations
    crossover_rate, mutation_rate, elite, seed = ga.crossover_rate, ga.mutation_rate, ga.elite, ga.seed
    g = torch.Generator().manual_seed(seed)
    k = cache.num_exits
    rule = rule or ExitRule()
    low = ga.low if ga.low is not None else rule.info.search_low
    conf, outcome = cache.decisions(rule, temperatures, fallback)
    genes = torch.rand(population, k, bits, generator=g) < 0.5

    def fitness_of(pop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        thresholds = decode_genes(pop, low)
        costs = exit_costs(thresholds) if callable(exit_costs) else exit_costs
        acc, cost = population_scores(conf, outcome, thresholds, costs)
        return reference_cost / cost + beta * (acc.double() - base), acc, cost

    history = []
    for _ in range(generations):
        fit, _, _ = fitness_of(genes)
        history.append(fit.max().item())
        order = fit.argsort(descending=True)
        elites = genes[order[:elite]]
        # roulette (fitness-proportional) selection on fitness shifted to be positive
        weights = fit - fit.min() + 1e-6
        parents = genes[torch.multinomial(weights.float(), population - elite, replacement=True, generator=g)]
        flat = parents.reshape(population - elite, -1)
        # single-point crossover between consecutive pairs
        n_pairs = flat.shape[0] // 2
        cut = torch.randint(1, flat.shape[1], (n_pairs,), generator=g)
        do = torch.rand(n_pairs, generator=g) < crossover_rate
        mask = (torch.arange(flat.shape[1])[None] >= cut[:, None]) & do[:, None]
        a, b = flat[0:2 * n_pairs:2].clone(), flat[1:2 * n_pairs:2].clone()
        flat[0:2 * n_pairs:2] = torch.where(mask, b, a)
        flat[1:2 * n_pairs:2] = torch.where(mask, a, b)
        # bit-flip mutation
        flat ^= torch.rand(flat.shape, generator=g) < mutation_rate
        genes = torch.cat([elites, flat.reshape(-1, k, bits)])
    fit, acc, macs = fitness_of(genes)
    best = fit.argmax()
    history.append(fit[best].item())
    return GAResult(decode_genes(genes[best], low).tolist(), fit[best].item(), acc[best].item(), macs[best].item(), history)


def budget_proportions(p: float, num_exits: int) -> torch.Tensor:
    """MSDNet's geometric exit proportions q_k ~ p^k, normalised (k = 1..K)."""
    q = torch.tensor([p ** (k + 1) for k in range(num_exits)], dtype=torch.float64)
    return q / q.sum()


def budgeted_thresholds(confidence: torch.Tensor, proportions: torch.Tensor) -> torch.Tensor:
    """Greedy per-exit thresholds so that floor(N * q_k) samples leave at each exit k < K.

    For each exit in turn, among samples not yet exited, the threshold is set just below the
    ``count``-th highest confidence, so exactly that many (barring ties) beat it with ``>``. The last
    exit takes the rest (threshold 0), so there is no ensemble fallback in this protocol.
    """
    k, n = confidence.shape
    thresholds = torch.zeros(k)
    exited = torch.zeros(n, dtype=torch.bool)
    for i in range(k - 1):
        count = math.floor(n * proportions[i].item())
        conf = confidence[i].masked_fill(exited, -1.0)
        if count == 0:
            thresholds[i] = math.inf
            continue
        kth = conf.topk(count).values[-1]
        thresholds[i] = torch.nextafter(kth, torch.tensor(-math.inf))
        exited |= conf > thresholds[i]
    return thresholds


def budget_sweep(val: ExitCache, steps: int = 40, step: float = 1 / 20,
                 temperatures: list[float] | None = None, rule: ExitRule | None = None
                 ) -> list[tuple[float, torch.Tensor]]:
    """(p, thresholds) for p in step, 2*step, ..., steps*step (MSDNet: 1/20 .. 40/20), on the scores of ``rule`` (max
    softmax by default) at ``temperatures``."""
    conf = val.decisions(rule, temperatures)[0]
    return [(p, budgeted_thresholds(conf, budget_proportions(p, val.num_exits)))
            for p in (step * (j + 1) for j in range(steps))]
