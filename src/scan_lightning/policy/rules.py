"""The field's exit rules behind one interface: at exit k a rule turns the logits of exits 1..k into a score in
[0, 1] and a predicted class; a sample leaves at the first exit whose score is above that exit's threshold
(thresholds in (0, 1]; 1 never fires).

Because every rule is "a score per exit plus per-exit thresholds", the cached scoring, SCAN's GA, MSDNet's budgeted
sweep, the latency search and the distribution-free guarantee search every rule unchanged, and the real early-exit
walk (eager, TorchScript) runs the one :class:`RuleScore` module below. The rules:

- ``max_softmax``: SCAN (Zhang et al., NeurIPS 2019) Algorithm 1, the max softmax at the exit's temperature.
- ``entropy``: BranchyNet (Teerapittayanon et al., ICPR 2016), leave when the entropy of the prediction is low. The
  score is the normalised negentropy ``1 - H(p) / log C``, so "score > t" is "H(p) < (1 - t) log C".
- ``margin``: top-1 minus top-2 probability (the margin rule of Park et al., "Big/little deep neural network",
  CODES+ISSS 2015).
- ``patience``: PABEE (Zhou et al., NeurIPS 2020). A counter of how many times in a row the predicted class stayed
  unchanged from one exit to the next; PABEE stops when it reaches the patience t. The score is counter / K, so
  patience t is the threshold (t - 1/2) / K at every exit (:func:`patience_thresholds`); a search may give each exit
  its own.
- ``running_ensemble``: ZTW (Wolczyk et al., NeurIPS 2021), the max probability of the normalised weighted geometric
  mean ``prod_j p_j^{w_kj}`` of exits 1..k, the non-negative weights of each exit fitted on the validation split by
  minimising the ensemble's NLL (ZTW also fits a per-class bias; this rule leaves it out).
- ``learned``: EENet (Ilhan et al., 2023), a per-exit scheduler - logistic regression on the exit's max probability,
  margin, normalised negentropy and agreement with the previous exits - fitted on the validation split to predict
  whether the exit is right; its output is the score.

A rule that reads earlier exits (patience, running_ensemble, learned) needs every exit's logits, so no exit branch
can be skipped under it (:attr:`RuleInfo.reads_history`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class RuleInfo:
    """What a rule is, for the docs and for the searches: its definition, parameters, paper and compute cost;
    whether it reads earlier exits; the parameter it fits on validation; the lowest threshold SCAN's GA decodes to."""

    name: str
    definition: str
    parameters: str
    paper: str
    compute: str
    reads_history: bool
    fitted: str | None
    search_low: float


RULES: dict[str, RuleInfo] = {info.name: info for info in (
    RuleInfo("max_softmax", "max_c softmax(z_k / T_k)_c", "per-exit temperatures T_k",
             "SCAN, Zhang et al. NeurIPS 2019 (Algorithm 1)", "one softmax over C classes", False, None, 0.7),
    RuleInfo("entropy", "1 - H(softmax(z_k / T_k)) / log C (leave when the entropy is low)", "per-exit temperatures",
             "BranchyNet, Teerapittayanon et al. ICPR 2016", "one softmax and one C-term sum", False, None, 0.5),
    RuleInfo("margin", "p_(1) - p_(2) of softmax(z_k / T_k)", "per-exit temperatures",
             "Park et al. CODES+ISSS 2015 (big/little networks)", "one softmax and a top-2", False, None, 0.3),
    RuleInfo("patience", "(times in a row the argmax stayed unchanged up to exit k) / K",
             "patience t in 1..K (threshold (t - 1/2) / K), or per-exit thresholds",
             "PABEE, Zhou et al. NeurIPS 2020", "k argmax comparisons", True, None, 0.0),
    RuleInfo("running_ensemble", "max_c of the normalised prod_{j<=k} softmax(z_j / T_j)^{w_kj}",
             "weights w_kj >= 0, fitted on validation (NLL)", "ZTW, Wolczyk et al. NeurIPS 2021",
             "k log-softmaxes and one softmax", True, "weights", 0.7),
    RuleInfo("learned", "sigmoid(a_k . [max prob, margin, negentropy, agreement] + b_k)",
             "per-exit scheduler (a_k, b_k), fitted on validation (logistic regression on 'exit k is right')",
             "EENet, Ilhan et al. 2023", "one softmax, a top-2, k argmax comparisons, a 4-term dot product",
             True, "scheduler", 0.5),
)}
RULE_NAMES = tuple(RULES)
FEATURES = ("max_prob", "margin", "negentropy", "agreement")   # the learned scheduler's inputs, in this order


def check_rule_name(name: object) -> str:
    """``name`` when it is a known rule; one clear error otherwise."""
    if name not in RULES:
        raise ValueError(f"rule={name!r} is not allowed; choose one of {list(RULE_NAMES)}")
    return str(name)


def _matrix(value: object, what: str) -> list[list[float]]:
    """``value`` as a list of lists of finite numbers; one clear error otherwise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(
            isinstance(row, Sequence) and not isinstance(row, (str, bytes)) for row in value):
        raise ValueError(f"{what} must be a list of lists of numbers, got {value!r}")
    try:
        rows = [[float(v) for v in row] for row in value]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must hold numbers only, got {value!r}") from None
    if not all(math.isfinite(v) for row in rows for v in row):
        raise ValueError(f"{what} must hold finite numbers, got {rows}")
    return rows


@dataclass(frozen=True)
class ExitRule:
    """A rule's name and its fitted parameters (plain data: ``weights`` of ``running_ensemble``, K rows of k + 1
    non-negative numbers; ``scheduler`` of ``learned``, K rows of len(FEATURES) + 1 numbers); checked when made."""

    name: str = "max_softmax"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_rule_name(self.name)
        info = RULES[self.name]
        params = dict(self.params or {})
        allowed = [info.fitted] if info.fitted else []
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            owners = [n for n, i in RULES.items() if i.fitted in unknown]
            owner = f" ({unknown[0]} belong to rule {owners[0]})" if owners else ""
            raise ValueError(f"rule {self.name} takes parameters {allowed or 'none'}; got {unknown}{owner}")
        if "weights" in params:
            rows = _matrix(params["weights"], "running_ensemble weights")
            bad = [(k, row) for k, row in enumerate(rows) if len(row) != k + 1 or min(row) < 0]
            if bad:
                raise ValueError(f"running_ensemble weights row {bad[0][0]} = {bad[0][1]}: row k must hold k + 1 "
                                 f"weights >= 0, one per exit 1..k")
            params["weights"] = rows
        if "scheduler" in params:
            rows = _matrix(params["scheduler"], "learned scheduler")
            wrong = [row for row in rows if len(row) != len(FEATURES) + 1]
            if wrong:
                raise ValueError(f"learned scheduler rows must hold {len(FEATURES) + 1} numbers (weights of "
                                 f"{list(FEATURES)} and a bias), got {wrong[0]}")
            params["scheduler"] = rows
        object.__setattr__(self, "params", params)

    @property
    def info(self) -> RuleInfo:
        """The rule's metadata (:data:`RULES`)."""
        return RULES[self.name]

    @property
    def reads_history(self) -> bool:
        """Does the score at exit k read exits before k (then no exit branch can be skipped)?"""
        return self.info.reads_history

    @property
    def needs_fit(self) -> bool:
        """Is this a fitted rule whose parameters are not there yet?"""
        return self.info.fitted is not None and self.info.fitted not in self.params

    def check(self, num_exits: int) -> ExitRule:
        """This rule, after checking its parameters are complete and sized for ``num_exits`` exits."""
        key = self.info.fitted
        if key is None:
            return self
        if key not in self.params:
            raise ValueError(f"rule {self.name} needs its fitted {key} (fitted on the validation split by a search: "
                             f"policy.thresholds=search, or a thresholds.json of a {self.name} search)")
        rows = self.params[key]
        if len(rows) != num_exits:
            raise ValueError(f"rule {self.name} holds {key} for {len(rows)} exits, but the network has {num_exits}")
        return self

    def module(self, temperatures: Sequence[float]) -> RuleScore:
        """The rule as a (TorchScript-able) module scoring exit i from the logits seen so far."""
        return RuleScore(self, temperatures)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"rule": name, "rule_params": {...}}`` (the layout of ``thresholds.json``)."""
        return {"rule": self.name, "rule_params": {k: [list(r) for r in v] for k, v in self.params.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExitRule:
        """From ``thresholds.json``'s keys; a file without ``rule`` (written before rules existed) is max_softmax."""
        return cls(str(data.get("rule") or "max_softmax"), dict(data.get("rule_params") or {}))


def patience_thresholds(patience: int, num_exits: int) -> list[float]:
    """PABEE's patience t as thresholds: the score is (unchanged count) / K, so "count >= t" is "score > (t - 1/2) / K".
    Patience K (or more unchanged steps than exits follow) never fires before the fallback."""
    if isinstance(patience, bool) or not isinstance(patience, int) or not 1 <= patience <= num_exits:
        raise ValueError(f"patience={patience!r} must be an integer in 1..{num_exits} (the number of exits)")
    return [(patience - 0.5) / num_exits] * num_exits


def _negentropy(p: Tensor) -> Tensor:
    """1 - H(p) / log C per row, in [0, 1]."""
    c = p.shape[-1]
    h = -torch.xlogy(p, p).sum(-1)
    return (1.0 - h / math.log(float(c))).clamp(0.0, 1.0)


def _margin(p: Tensor) -> Tensor:
    """Top-1 minus top-2 probability per row."""
    top = torch.topk(p, 2, dim=-1)[0]
    return top[:, 0] - top[:, 1]


class RuleScore(nn.Module):
    """``forward(i, history)`` -> ``(score, prediction)`` at exit ``i`` (0-based) for the undecided samples.

    ``history``: the logits of exits 0..i of those samples, oldest first (a rule that does not read history only
    needs the last, ``[logits_i]``). The same module serves the cached scoring, the eager early-exit walk and, as a
    scripted submodule, the TorchScript export, so the three decide alike.
    """

    if TYPE_CHECKING:   # buffers (registered in __init__); a class annotation would reach torch.jit.script
        weights: Tensor
        scheduler: Tensor

    def __init__(self, rule: ExitRule, temperatures: Sequence[float]) -> None:
        super().__init__()
        self.rule_name = rule.name
        self.temperatures = [float(t) for t in temperatures]
        k = len(self.temperatures)
        self.num_exits = k
        self.reads_history = rule.reads_history
        weights = torch.zeros(k, k)
        for row, values in enumerate(rule.params.get("weights", [])):
            weights[row, : len(values)] = torch.tensor(values)
        scheduler = torch.zeros(k, len(FEATURES) + 1)
        for row, values in enumerate(rule.params.get("scheduler", [])):
            scheduler[row] = torch.tensor(values)
        self.register_buffer("weights", weights)
        self.register_buffer("scheduler", scheduler)

    def forward(self, i: int, history: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The rule's score at exit ``i`` and the class it predicts there."""
        logits = history[-1].float()
        pred = logits.argmax(-1)
        name = self.rule_name
        if name == "patience":
            return self._unchanged(history).float() / self.num_exits, pred
        if name == "running_ensemble":
            log_q = torch.zeros_like(logits)
            for j in range(i + 1):
                log_q = log_q + self.weights[i, j] * torch.log_softmax(history[j].float() / self.temperatures[j], -1)
            q = torch.softmax(log_q, -1)
            ens_pred = log_q.argmax(-1)
            return q.gather(-1, ens_pred.unsqueeze(-1)).squeeze(-1), ens_pred
        p = torch.softmax(logits / self.temperatures[i], -1)
        top = p.gather(-1, pred.unsqueeze(-1)).squeeze(-1)
        if name == "entropy":
            return _negentropy(p), pred
        if name == "margin":
            return _margin(p), pred
        if name == "learned":
            features = torch.stack([top, _margin(p), _negentropy(p), self._agreement(history, pred)], -1)
            coef = self.scheduler[i]
            return torch.sigmoid(features @ coef[:-1] + coef[-1]), pred
        return top, pred

    def _unchanged(self, history: list[Tensor]) -> Tensor:
        """PABEE's counter: how many times in a row, ending at the last exit, the argmax stayed the same."""
        if len(history) < 2:
            return torch.zeros(history[-1].shape[0], dtype=torch.long, device=history[-1].device)
        preds = torch.stack([h.argmax(-1) for h in history])
        same = (preds[1:] == preds[:-1]).flip(0).long()
        return same.cumprod(0).sum(0)

    def _agreement(self, history: list[Tensor], pred: Tensor) -> Tensor:
        """The fraction of earlier exits whose argmax is ``pred`` (0 at the first exit)."""
        if len(history) < 2:
            return torch.zeros(pred.shape[0], device=pred.device)
        earlier = torch.stack([h.argmax(-1) for h in history[:-1]])
        return (earlier == pred.unsqueeze(0)).float().mean(0)


def rule_outputs(module: RuleScore, logits: Tensor) -> tuple[Tensor, Tensor]:
    """Every exit's score and prediction on cached logits ``(K, N, C)``: ``(K, N)`` each."""
    scores, preds = [], []
    with torch.no_grad():
        for i in range(logits.shape[0]):
            history = list(logits[: i + 1]) if module.reads_history else [logits[i]]
            score, pred = module(i, history)
            scores.append(score)
            preds.append(pred)
    return torch.stack(scores), torch.stack(preds)


# --- fitting the rules' parameters on validation outputs --------------------------------------------------------
def _lbfgs(params: Tensor, loss_fn: Any, iterations: int = 100) -> Tensor:
    """Minimise ``loss_fn(params)`` with L-BFGS (strong Wolfe line search, float64; deterministic)."""
    params = params.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([params], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return params.detach()


def fit_running_ensemble(logits: Tensor, labels: Tensor, temperatures: Sequence[float]) -> list[list[float]]:
    """ZTW's ensemble weights: for each exit k, ``w_k >= 0`` (softplus-parametrised) minimising the NLL of
    ``softmax(sum_j w_kj log softmax(z_j / T_j))`` on ``logits`` (K, N, C); starts from exit k alone."""
    log_p = torch.stack([torch.log_softmax(lg.double() / t, -1) for lg, t in zip(logits, temperatures)])
    labels = labels.long()
    rows = []
    for k in range(logits.shape[0]):
        start = torch.full((k + 1,), -4.0, dtype=torch.float64)
        start[k] = math.log(math.e - 1.0)                     # softplus(start[k]) = 1: exit k alone

        def nll(u: Tensor, k: int = k) -> Tensor:
            w = F.softplus(u)
            return F.cross_entropy(torch.einsum("j,jnc->nc", w, log_p[: k + 1]), labels)

        rows.append(F.softplus(_lbfgs(start, nll)).tolist())
    return rows


def learned_features(logits: Tensor, temperatures: Sequence[float]) -> Tensor:
    """The learned scheduler's inputs (:data:`FEATURES`) at every exit: ``(K, N, len(FEATURES))``."""
    probe = RuleScore(ExitRule("learned", {"scheduler": [[0.0] * (len(FEATURES) + 1)] * logits.shape[0]}),
                      temperatures)
    out = []
    for i in range(logits.shape[0]):
        history = list(logits[: i + 1].float())
        pred = history[-1].argmax(-1)
        p = torch.softmax(history[-1] / probe.temperatures[i], -1)
        top = p.gather(-1, pred.unsqueeze(-1)).squeeze(-1)
        out.append(torch.stack([top, _margin(p), _negentropy(p), probe._agreement(history, pred)], -1))
    return torch.stack(out)


def fit_learned(logits: Tensor, labels: Tensor, temperatures: Sequence[float], l2: float = 1e-3
                ) -> list[list[float]]:
    """EENet-style per-exit schedulers: logistic regression of "exit k is right" on :func:`learned_features`, with a
    small L2 penalty (``l2``, weights only), one per exit."""
    features = learned_features(logits, temperatures).double()
    right = (logits.argmax(-1) == labels[None]).double()
    rows = []
    for k in range(logits.shape[0]):
        x, y = features[k], right[k]

        def loss(theta: Tensor, x: Tensor = x, y: Tensor = y) -> Tensor:
            z = x @ theta[:-1] + theta[-1]
            return F.binary_cross_entropy_with_logits(z, y) + l2 * (theta[:-1] ** 2).sum()

        rows.append(_lbfgs(torch.zeros(len(FEATURES) + 1, dtype=torch.float64), loss).tolist())
    return rows


def fit_rule(rule: ExitRule, logits: Tensor, labels: Tensor, temperatures: Sequence[float]) -> ExitRule:
    """``rule`` with its parameters fitted on validation outputs (``logits`` (K, N, C), ``labels``); a rule with
    nothing to fit, or already fitted, comes back as it is."""
    if not rule.needs_fit:
        return rule
    if rule.name == "running_ensemble":
        return ExitRule(rule.name, {"weights": fit_running_ensemble(logits, labels, temperatures)})
    return ExitRule(rule.name, {"scheduler": fit_learned(logits, labels, temperatures)})
