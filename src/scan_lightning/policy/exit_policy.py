"""The exit policy of scalable inference (SCAN Algorithm 1, any rule): rule, thresholds, temperatures and fallback.

One object, checked once when it is made, that every predictor, cached evaluation, search result and
exported artefact carries: a sample leaves at the first exit whose rule score (:mod:`scan_lightning.policy.rules`;
by default the max softmax at that exit's temperature) is above the exit's threshold; a sample no exit claims gets
the ``fallback``: the ensemble (mean of all exits' logits; the paper) or the deepest exit's answer.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import torch

from scan_lightning.policy.rules import ExitRule, RuleScore, check_rule_name, patience_thresholds

FALLBACKS = ("ensemble", "deepest")


def check_fallback(fallback: str) -> str:
    """``fallback`` itself when it is one of :data:`FALLBACKS`; one clear error otherwise."""
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback={fallback!r} is not allowed; choose one of {FALLBACKS}")
    return fallback


def check_thresholds(thresholds: Sequence[float], num_exits: int, temperatures: Sequence[float] | None = None) -> None:
    """One clear error for thresholds outside (0, 1], a wrong count, or temperatures <= 0."""
    values = [float(t) for t in thresholds]
    if len(values) != num_exits:
        raise ValueError(f"got {len(values)} thresholds {values}, but the network has {num_exits} exits: "
                         f"give one threshold per exit")
    bad = [t for t in values if not 0.0 < t <= 1.0]
    if bad:
        raise ValueError(f"thresholds {bad} are outside (0, 1]; every threshold must satisfy 0 < t <= 1")
    if temperatures is not None:
        temps = [float(t) for t in temperatures]
        if len(temps) != num_exits or any(t <= 0 for t in temps):
            raise ValueError(f"temperatures {temps} must be {num_exits} values > 0")


def exit_confidence(logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Max softmax probability at ``temperature`` and the predicted class (the logits' argmax, which a
    temperature never changes), per sample."""
    pred = logits.argmax(dim=-1)
    conf = torch.softmax(logits.float() / temperature, dim=-1).gather(-1, pred.unsqueeze(-1)).squeeze(-1)
    return conf, pred


def skipped_heads(thresholds: torch.Tensor, fallback: str, chained: bool) -> torch.Tensor:
    """Which exits' branches (attention, head) no decision reads, per threshold vector (``(..., K)`` -> bool).

    An exit at threshold 1 never fires (no rule's score is above 1). With the deepest-exit fallback and no ISC
    chain (``chained``: each exit reads the previous exit's logits; a rule that reads earlier exits counts as a
    chain too) nothing else reads its logits, so its branch is skipped: not run, not charged. The ensemble fallback averages every exit, so it skips none; the deepest
    exit always runs.
    """
    off = thresholds >= 1.0
    if fallback == "ensemble" or chained:
        return torch.zeros_like(off)
    off[..., -1] = False
    return off


def choose_exits(confidence: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """First exit whose confidence beats its threshold; ``K`` (the fallback) when none does.

    ``confidence``: (K, N). ``thresholds``: (K,) or (P, K) for a population. Returns (N,) or (P, N).
    """
    k = confidence.shape[0]
    thr = thresholds.reshape(-1, k)
    undecided = torch.ones((thr.shape[0], confidence.shape[1]), dtype=torch.bool)
    chosen = torch.zeros(undecided.shape, dtype=torch.uint8)
    for i in range(k):                       # count the exits a sample passes without firing
        undecided &= confidence[i][None] <= thr[:, i, None]
        chosen += undecided
    chosen = chosen.long()
    return chosen if thresholds.dim() == 2 else chosen[0]


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a ``thresholds.json``); one clear error naming the file when it is not valid JSON
    or holds no object (``what`` it should hold)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold {what}")
    return data


@dataclass(frozen=True)
class ExitPolicy:
    """The exit rule, its thresholds in (0, 1] and temperatures > 0 (one per exit), and the fallback; valid once
    made (a fitted rule must hold parameters for every exit)."""

    thresholds: tuple[float, ...]
    temperatures: tuple[float, ...]
    fallback: str = "ensemble"
    rule: ExitRule = ExitRule()

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        check_thresholds(self.thresholds, len(self.thresholds), self.temperatures)
        check_fallback(self.fallback)
        self.rule.check(len(self.thresholds))

    @classmethod
    def create(cls, thresholds: Sequence[float], temperatures: Sequence[float] | None = None,
               fallback: str = "ensemble", num_exits: int | None = None, rule: ExitRule | None = None) -> ExitPolicy:
        """Temperatures default to 1, the rule to max softmax; ``num_exits`` checks the policy fits a network."""
        thresholds = [float(t) for t in thresholds]
        if num_exits is not None and len(thresholds) != num_exits:
            raise ValueError(f"got {len(thresholds)} thresholds {thresholds}, but the network has {num_exits} exits: "
                             f"give one threshold per exit")
        return cls(tuple(thresholds), tuple(temperatures if temperatures is not None else [1.0] * len(thresholds)),
                   fallback, rule or ExitRule())

    @property
    def num_exits(self) -> int:
        """Exits the policy has thresholds for."""
        return len(self.thresholds)

    def for_exits(self, num_exits: int, source: str = "the policy") -> ExitPolicy:
        """This policy, after checking it has one threshold per exit of a network with ``num_exits``."""
        if self.num_exits != num_exits:
            raise ValueError(f"{source} holds thresholds for {self.num_exits} exits, but this network has "
                             f"{num_exits}: it belongs to another model")
        return self

    def with_temperatures(self, temperatures: Sequence[float]) -> ExitPolicy:
        """This policy with other per-exit temperatures."""
        return ExitPolicy(self.thresholds, tuple(temperatures), self.fallback, self.rule)

    def with_thresholds(self, thresholds: Sequence[float]) -> ExitPolicy:
        """This policy with other per-exit thresholds."""
        return ExitPolicy(tuple(thresholds), self.temperatures, self.fallback, self.rule)

    def skipped_heads(self, chained: bool) -> list[bool]:
        """Per exit: is its branch skipped (see :func:`skipped_heads`; none under a rule that reads earlier exits)?"""
        return skipped_heads(torch.tensor(self.thresholds, dtype=torch.float64), self.fallback,
                             chained or self.rule.reads_history).tolist()

    def scorer(self) -> RuleScore:
        """The rule at this policy's temperatures, as the module every early-exit walk runs."""
        return self.rule.module(self.temperatures)

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain data (the layout of ``thresholds.json``'s policy keys)."""
        return {"thresholds": list(self.thresholds), "temperatures": list(self.temperatures),
                "fallback": self.fallback, **self.rule.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], num_exits: int | None = None,
                  source: str = "the policy") -> ExitPolicy:
        """From ``{"thresholds", "temperatures"?, "fallback"?, "rule"?, "rule_params"?}`` (the layout of
        ``thresholds.json``; a file without ``rule`` is max softmax)."""
        if "thresholds" not in data:
            raise ValueError(f"{source} has no 'thresholds'")
        thresholds = list(data["thresholds"])
        if num_exits is not None and len(thresholds) != num_exits:
            raise ValueError(f"{source} holds thresholds for {len(thresholds)} exits, but this network has "
                             f"{num_exits}: it belongs to another model")
        try:
            return cls.create(thresholds, data.get("temperatures"), data.get("fallback", "ensemble"), num_exits,
                              ExitRule.from_dict(data))
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err

    @classmethod
    def load(cls, path: str | Path, num_exits: int | None = None, model: Mapping[str, Any] | None = None,
             rule: str | None = None) -> ExitPolicy:
        """From a ``thresholds.json``, checked against a network with ``num_exits`` exits, against ``rule`` (the
        rule the caller asked for, if any) and, when the file records the model it was searched for
        (:func:`model_identity`), against ``model``."""
        path = Path(path)
        data = read_json_object(path, "an exit policy (a JSON object with 'thresholds')")
        saved_rule = data.get("rule") or "max_softmax"
        if rule is not None and rule != saved_rule:
            raise ValueError(f"{path} holds a policy of rule {saved_rule}, but policy.rule={rule}: search thresholds "
                             f"for {rule} (policy.thresholds=search) or leave policy.rule unset")
        saved = data.get("model") or {}
        for key, value in (model or {}).items():
            if key in saved and saved[key] != value:
                raise ValueError(f"{path} was searched for another model ({key} {saved[key]}; this model: {value}); "
                                 f"search thresholds for this one (python -m scan_lightning.evaluate ... policy.thresholds=search)")
        return cls.from_dict(data, num_exits, source=str(path))


def model_identity(net: Any, input_shape: Sequence[int]) -> dict[str, Any]:
    """What a saved policy must match: input shape, exit count and class count of the network."""
    return {"input_shape": [int(d) for d in input_shape], "num_exits": int(net.num_exits),
            "num_classes": int(net.num_classes)}


POLICY_KEYS = ("rule", "params", "thresholds", "temperatures", "fallback", "thresholds_path")


def spec_rule(spec: Mapping[str, Any]) -> ExitRule:
    """The rule a ``policy`` node asks for (``rule``: null is max softmax; ``params``: its fitted parameters, or
    ``patience`` for the patience rule, which becomes thresholds, not a parameter)."""
    params = {k: v for k, v in (spec.get("params") or {}).items() if v is not None}
    params.pop("patience", None)
    return ExitRule(str(spec.get("rule") or "max_softmax"), params)


def check_policy_spec(spec: Mapping[str, Any], allow_search: bool = False) -> None:
    """One clear error for a bad ``policy`` config node, before any checkpoint is read: unknown keys, thresholds
    together with a thresholds_path, a path that does not exist, thresholds that are not a list (``search``, a fresh
    search, where ``allow_search``; it takes no other policy key)."""
    unknown = sorted(set(spec) - set(POLICY_KEYS))
    if unknown:
        raise ValueError(f"policy has unknown keys {unknown}; allowed: {list(POLICY_KEYS)}")
    if spec.get("rule") is not None:
        check_rule_name(spec["rule"])
    params = spec.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"policy.params={params!r} must be a mapping of the rule's parameters")
    thresholds, path = spec.get("thresholds"), spec.get("thresholds_path")
    if params.get("patience") is not None:
        if spec.get("rule") != "patience":
            raise ValueError(f"policy.params.patience is the patience rule's; policy.rule={spec.get('rule')}")
        if thresholds is not None or path:
            raise ValueError("give policy.params.patience or policy.thresholds / thresholds_path, not both")
    spec_rule(spec)                          # parameters of the wrong rule, type or sign
    if allow_search and thresholds == "search":
        extra = [k for k in ("thresholds_path", "temperatures") if spec.get(k) is not None]
        if extra:
            raise ValueError(f"policy.thresholds=search searches a new policy; it takes no policy.{extra[0]}")
        return
    if thresholds is not None and path:
        raise ValueError("give either policy.thresholds or policy.thresholds_path, not both")
    if thresholds is not None and (isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence)):
        allowed = " or search" if allow_search else ""
        raise ValueError(f"policy.thresholds={thresholds!r} must be a list with one value per exit{allowed}")
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"policy.thresholds_path={path} does not exist")


@overload
def resolve_policy(num_exits: int, ckpt: str | Path, spec: Mapping[str, Any] | None = None,
                   required: Literal[True] = True, model: Mapping[str, Any] | None = None) -> ExitPolicy: ...


@overload
def resolve_policy(num_exits: int, ckpt: str | Path, spec: Mapping[str, Any] | None, required: bool,
                   model: Mapping[str, Any] | None = None) -> ExitPolicy | None: ...


def resolve_policy(num_exits: int, ckpt: str | Path, spec: Mapping[str, Any] | None = None, required: bool = True,
                   model: Mapping[str, Any] | None = None) -> ExitPolicy | None:
    """The exit policy for a checkpoint (``evaluate``, ``export``, ``Predictor``) from a ``policy`` config node
    (``spec``: ``thresholds``, ``temperatures``, ``fallback``, ``thresholds_path``): the ``thresholds`` given, else
    ``thresholds_path``, else the ``thresholds.json`` beside ``ckpt``. ``None`` when nothing is saved and the policy
    is not ``required``. ``model`` (:func:`model_identity`): a saved file searched for another model is refused."""
    spec = dict(spec or {})
    check_policy_spec(spec)
    thresholds, thresholds_path = spec.get("thresholds"), spec.get("thresholds_path")
    patience = (spec.get("params") or {}).get("patience")
    if patience is not None:
        thresholds = patience_thresholds(patience, num_exits)
    if thresholds is not None:
        return ExitPolicy.create(thresholds, spec.get("temperatures"), spec.get("fallback") or "ensemble", num_exits,
                                 spec_rule(spec))
    if thresholds_path:
        return ExitPolicy.load(thresholds_path, num_exits, model, spec.get("rule"))
    beside = Path(ckpt).parent / "thresholds.json"
    if beside.is_file():
        return ExitPolicy.load(beside, num_exits, model, spec.get("rule"))
    if required:
        raise FileNotFoundError(f"no thresholds: {beside} does not exist (the post-fit search writes it beside the "
                                f"selected checkpoint); give policy.thresholds_path=... or policy.thresholds=[...] "
                                f"(one per exit)")
    return None
