"""Real early exit over an exported ONNX directory (``export_onnx``) on onnxruntime.

Needs only numpy, onnxruntime and the directory's ``manifest.json`` - no model code, no config; install
with the ``deploy`` extra (``pip install scan_lightning[deploy]``). The rule is the predictor's: walk the
exits shallow to deep; a sample leaves at the first exit whose rule score (``manifest["policy"]["rule"]``, the
rules of :mod:`scan_lightning.policy.rules` restated in numpy float32: max_softmax, entropy, margin, patience,
running_ensemble, learned) is above the exit's threshold; after each exit only the undecided samples run the next
section, carrying the logits of the exits they passed when the rule reads them; a sample no exit claims gets the
fallback (mean of all exits' logits, or the deepest exit's) at temperature 1. An exit branch no decision reads
(threshold 1 with the deepest-exit fallback, no ISC and a rule that reads no earlier exit) is not run, nor charged.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "scan_lightning.onnx_early_exit"
FALLBACKS = ("ensemble", "deepest")
# rule -> (reads earlier exits, its fitted parameter): the table of scan_lightning.policy.rules.RULES
RULES: dict[str, tuple[bool, str | None]] = {
    "max_softmax": (False, None),
    "entropy": (False, None),
    "margin": (False, None),
    "patience": (True, None),
    "running_ensemble": (True, "weights"),
    "learned": (True, "scheduler"),
}
NUM_FEATURES = 4      # the learned scheduler's inputs: max prob, margin, negentropy, agreement (then a bias)
POLICY_KEYS = ("thresholds", "temperatures", "fallback", "rule", "rule_params")


class OnnxEarlyExitResult(NamedTuple):
    """What :class:`OnnxEarlyExit` returns per sample: class, exit taken (K = fallback), MACs paid and confidence."""
    prediction: np.ndarray   # (N,) int64 class per sample
    exit_index: np.ndarray   # (N,) int64 0..K-1, or K when no exit claimed the sample (fallback)
    macs: np.ndarray         # (N,) float64 MACs each sample paid
    confidence: np.ndarray   # (N,) float32 the rule's score of the answer; the fallback's max softmax at 1


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("running an exported ONNX model needs onnxruntime: pip install 'scan_lightning[deploy]' "
                          "(or pip install onnxruntime)") from err
    return onnxruntime


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32, as torch computes it (max subtracted first)."""
    z = z.astype(np.float32, copy=False)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis in float32."""
    z = z.astype(np.float32, copy=False)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Max softmax probability at ``temperature`` (float32, as torch computes it) and the predicted class (the
    logits' argmax)."""
    pred = logits.argmax(axis=-1).astype(np.int64)
    p = softmax(logits.astype(np.float32) / np.float32(temperature))
    return np.take_along_axis(p, pred[:, None], -1)[:, 0], pred


def negentropy(p: np.ndarray) -> np.ndarray:
    """``1 - H(p) / log C`` per row, clamped to [0, 1] (0 log 0 = 0)."""
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, np.float32(1))), np.float32(0))
    h = -plogp.sum(axis=-1)
    return np.clip(np.float32(1) - h / np.float32(math.log(p.shape[-1])), 0, 1).astype(np.float32)


def margin(p: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row."""
    top = np.sort(p, axis=-1)
    return top[:, -1] - top[:, -2]


def unchanged(history: Sequence[np.ndarray]) -> np.ndarray:
    """PABEE's counter: how many times in a row, ending at the last exit, the argmax stayed the same."""
    preds = np.stack([h.argmax(axis=-1) for h in history])
    same = (preds[1:] == preds[:-1])[::-1].astype(np.int64)
    return np.cumprod(same, axis=0).sum(axis=0) if len(history) > 1 else np.zeros(preds.shape[1], np.int64)


def agreement(history: Sequence[np.ndarray], pred: np.ndarray) -> np.ndarray:
    """The fraction of earlier exits whose argmax is ``pred`` (0 at the first exit)."""
    if len(history) < 2:
        return np.zeros(pred.shape[0], dtype=np.float32)
    earlier = np.stack([h.argmax(axis=-1) for h in history[:-1]])
    return (earlier == pred[None]).astype(np.float32).mean(axis=0, dtype=np.float32)


class RuleScorer:
    """The exit rules in numpy: ``scorer(i, history)`` -> ``(score, prediction)`` at exit ``i`` (0-based) for the
    undecided samples, ``history`` the logits of exits 0..i (only the last is read by a rule that reads no
    earlier exit); float32 throughout, like :class:`scan_lightning.policy.rules.RuleScore`."""

    def __init__(self, policy: Mapping[str, Any], num_exits: int) -> None:
        self.name = str(policy["rule"])
        self.reads_history = RULES[self.name][0]
        self.temperatures = [float(t) for t in policy["temperatures"]]
        self.num_exits = int(num_exits)
        params = policy.get("rule_params") or {}
        self.weights = np.zeros((num_exits, num_exits), dtype=np.float32)
        for row, values in enumerate(params.get("weights", [])):
            self.weights[row, : len(values)] = np.asarray(values, dtype=np.float32)
        self.scheduler = np.zeros((num_exits, NUM_FEATURES + 1), dtype=np.float32)
        for row, values in enumerate(params.get("scheduler", [])):
            self.scheduler[row] = np.asarray(values, dtype=np.float32)

    def __call__(self, i: int, history: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The rule's score at exit ``i`` and the class it predicts there."""
        logits = history[-1].astype(np.float32, copy=False)
        pred = logits.argmax(axis=-1).astype(np.int64)
        if self.name == "patience":
            return unchanged(history).astype(np.float32) / np.float32(self.num_exits), pred
        if self.name == "running_ensemble":
            log_q = np.zeros_like(logits)
            for j in range(i + 1):
                z = history[j].astype(np.float32, copy=False) / np.float32(self.temperatures[j])
                log_q = log_q + self.weights[i, j] * log_softmax(z)
            ens_pred = log_q.argmax(axis=-1).astype(np.int64)
            return np.take_along_axis(softmax(log_q), ens_pred[:, None], -1)[:, 0], ens_pred
        p = softmax(logits / np.float32(self.temperatures[i]))
        top = np.take_along_axis(p, pred[:, None], -1)[:, 0]
        if self.name == "entropy":
            return negentropy(p), pred
        if self.name == "margin":
            return margin(p), pred
        if self.name == "learned":
            features = np.stack([top, margin(p), negentropy(p), agreement(history, pred)], axis=-1)
            coef = self.scheduler[i]
            z = features @ coef[:-1] + coef[-1]
            with np.errstate(over="ignore"):
                return (np.float32(1) / (np.float32(1) + np.exp(-z))).astype(np.float32), pred
        return top, pred


def _numbers(value: Any, what: str) -> list[float]:
    """``value`` as a list of finite numbers; ValueError naming ``what`` otherwise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list of numbers, got {value!r}")
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must hold numbers only, got {value!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must hold finite numbers, got {out}")
    return out


def check_policy(policy: Any, num_exits: int, source: str = "policy") -> dict[str, Any]:
    """A policy dict (the layout of ``ExitPolicy.to_dict``: thresholds, temperatures, fallback, rule, rule_params;
    rule defaults to max_softmax, temperatures to 1, fallback to the ensemble) checked for a network with
    ``num_exits`` exits, with its defaults filled in; one clear ValueError otherwise."""
    if not isinstance(policy, Mapping):
        raise ValueError(f"{source} must be a dict with 'thresholds' (and 'temperatures', 'fallback', 'rule', "
                         f"'rule_params'), got {policy!r}")
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise ValueError(f"{source} has unknown keys {unknown}; allowed: {list(POLICY_KEYS)}")
    if "thresholds" not in policy:
        raise ValueError(f"{source} has no 'thresholds'")
    rule = policy.get("rule") or "max_softmax"
    if rule not in RULES:
        raise ValueError(f"{source}: rule={rule!r} is not allowed; choose one of {list(RULES)}")
    thresholds = _numbers(policy["thresholds"], f"{source} thresholds")
    if len(thresholds) != num_exits or not all(0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"{source}: thresholds {thresholds} must be {num_exits} values in (0, 1]")
    temperatures = _numbers(policy.get("temperatures") or [1.0] * num_exits, f"{source} temperatures")
    if len(temperatures) != num_exits or not all(t > 0 for t in temperatures):
        raise ValueError(f"{source}: temperatures {temperatures} must be {num_exits} values > 0")
    fallback = policy.get("fallback") or "ensemble"
    if fallback not in FALLBACKS:
        raise ValueError(f"{source}: fallback={fallback!r} is not allowed; choose one of {FALLBACKS}")
    params = policy.get("rule_params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{source}: rule_params={params!r} must be a dict of the rule's fitted parameters")
    fitted = RULES[rule][1]
    extra = sorted(set(params) - {fitted})
    if extra:
        raise ValueError(f"{source}: rule {rule} takes parameters {[fitted] if fitted else 'none'}; got {extra}")
    checked: dict[str, list[list[float]]] = {}
    if fitted is not None:
        rows = params.get(fitted)
        if rows is None:
            raise ValueError(f"{source}: rule {rule} needs its fitted {fitted} in rule_params")
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or len(rows) != num_exits:
            raise ValueError(f"{source}: rule {rule} needs {fitted} for {num_exits} exits (one row each), got "
                             f"{rows!r}")
        checked[fitted] = [_numbers(row, f"{source} {fitted} row {k}") for k, row in enumerate(rows)]
        for k, row in enumerate(checked[fitted]):
            if fitted == "weights" and (len(row) != k + 1 or min(row) < 0):
                raise ValueError(f"{source}: running_ensemble weights row {k} = {row}: row k must hold k + 1 "
                                 f"weights >= 0, one per exit 1..k")
            if fitted == "scheduler" and len(row) != NUM_FEATURES + 1:
                raise ValueError(f"{source}: learned scheduler row {k} = {row} must hold {NUM_FEATURES + 1} numbers "
                                 f"(weights of max prob, margin, negentropy, agreement and a bias)")
    return {"thresholds": thresholds, "temperatures": temperatures, "fallback": fallback, "rule": rule,
            "rule_params": checked}


class OnnxEarlyExit:
    """``OnnxEarlyExit(directory)(x)`` -> :class:`OnnxEarlyExitResult`, exiting early like ``EarlyExitRunner``.

    ``providers``: onnxruntime execution providers (default: CPU). ``threads``: intra-op threads (default:
    onnxruntime's). ``spinning=False``: idle worker threads sleep rather than spin. ``policy``: a policy dict (the
    layout of ``ExitPolicy.to_dict()``: thresholds, temperatures, fallback, rule, rule_params) that replaces the
    exported one, so one export runs under any rule. ``thresholds``: replace the (exported or given) policy's
    thresholds (one per exit, in (0, 1]).
    """

    def __init__(self, directory: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 thresholds: Sequence[float] | None = None, spinning: bool = True,
                 policy: dict[str, Any] | None = None) -> None:
        ort = _onnxruntime()
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: export with "
                                    f"`python -m scan_lightning.export ckpt_path=... format=onnx`")
        manifest: dict[str, Any] = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not a scan_lightning ONNX manifest (format={manifest.get('format')!r})")
        self.manifest = manifest
        self.num_exits = int(manifest["num_exits"])
        self.num_classes = int(manifest["num_classes"])
        self.input_shape = tuple(int(s) for s in manifest["input_shape"])
        given: Any = policy if policy is not None else manifest["policy"]
        source = "policy" if policy is not None else f"{path} policy"
        if thresholds is not None and isinstance(given, Mapping):
            given = {**given, "thresholds": thresholds}     # thresholds= replaces those of either policy
        self.policy = check_policy(given, self.num_exits, source)
        self.thresholds: list[float] = self.policy["thresholds"]
        self.temperatures: list[float] = self.policy["temperatures"]
        self.fallback: str = self.policy["fallback"]
        self.rule: str = self.policy["rule"]
        self.scorer = RuleScorer(self.policy, self.num_exits)
        chained = any(bool(e["uses_previous"]) for e in manifest["exits"]) or self.scorer.reads_history
        self.skipped = [t >= 1.0 and i < self.num_exits - 1 and self.fallback == "deepest" and not chained
                        for i, t in enumerate(self.thresholds)]   # the rule of ``policy.skipped_heads``
        per_exit = [e["section_macs"] + (0 if off else e["attention_macs"] + e["head_macs"])
                    for e, off in zip(manifest["costs"]["exits"], self.skipped)]
        cum = np.cumsum(np.asarray(per_exit, dtype=np.float64))
        self.exit_macs = np.append(cum, cum[-1])                  # the fallback ran every section
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        if not spinning:   # idle worker threads sleep instead of spinning (they share the cores with torch)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]

        def session(entry: dict[str, Any]):
            return ort.InferenceSession(str(self.directory / entry["file"]), sess_options=options,
                                        providers=providers)

        self.sections = [(session(e), e["inputs"], e["outputs"]) for e in manifest["sections"]]
        self.exits = [(session(e), e["inputs"], bool(e["uses_previous"])) for e in manifest["exits"]]

    def __call__(self, x: Any) -> OnnxEarlyExitResult:
        if hasattr(x, "detach"):                    # a torch tensor
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input must be a batch of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")
        n, k = x.shape[0], self.num_exits
        prediction = np.zeros(n, dtype=np.int64)
        confidence = np.zeros(n, dtype=np.float32)
        exit_index = np.full(n, k, dtype=np.int64)
        alive = np.arange(n)                        # original indices of undecided samples
        h: list[np.ndarray] = [x]
        logits: np.ndarray | None = None
        logit_sum: np.ndarray | None = None
        history: list[np.ndarray] = []              # the logits the rule reads: every exit's, or the last
        for i, ((section, names_in, _), (exit_session, exit_in, uses_previous)) in enumerate(
                zip(self.sections, self.exits)):
            if alive.size == 0:
                break
            h = section.run(None, dict(zip(names_in, h)))
            if self.skipped[i]:
                continue
            feed = {exit_in[0]: h[-1]}
            if uses_previous:
                assert logits is not None   # with ISC no exit is skipped: exit i - 1 ran
                feed[exit_in[1]] = logits
            logits = exit_session.run(None, feed)[0]
            logit_sum = logits if logit_sum is None else logit_sum + logits
            history = [*history, logits] if self.scorer.reads_history else [logits]
            conf, pred = self.scorer(i, history)
            fire = conf > np.float32(self.thresholds[i])
            if fire.any():
                gone = alive[fire]
                prediction[gone], confidence[gone], exit_index[gone] = pred[fire], conf[fire], i
                keep = ~fire
                alive, logits, logit_sum = alive[keep], logits[keep], logit_sum[keep]
                history = [past[keep] for past in history]
                h = [np.ascontiguousarray(t[keep]) for t in h]
        if alive.size:
            # samples left: every section ran, and the deepest exit is never skipped, so both are set
            assert logits is not None and logit_sum is not None
            last = logit_sum / np.float32(k) if self.fallback == "ensemble" else logits
            conf, pred = max_softmax(last)
            prediction[alive], confidence[alive] = pred, conf
        return OnnxEarlyExitResult(prediction, exit_index, self.exit_macs[exit_index], confidence)
