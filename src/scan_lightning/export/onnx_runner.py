"""Real early exit over an exported ONNX directory (``export_onnx``) on onnxruntime.

Needs only numpy, onnxruntime and the directory's ``manifest.json`` - no model code, no config; install
with the ``deploy`` extra (``pip install scan_lightning[deploy]``). The rule is the predictor's: walk the
exits shallow to deep; a sample leaves at the first exit whose max softmax of logits / temperature is above
the exit's threshold; after each exit only the undecided samples run the next section; a sample no exit
claims gets the fallback (mean of all exits' logits, or the deepest exit's) at temperature 1. An exit
branch no decision reads (threshold 1 with the deepest-exit fallback and no ISC) is not run, nor charged.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "scan_lightning.onnx_early_exit"


class OnnxEarlyExitResult(NamedTuple):
    """What :class:`OnnxEarlyExit` returns per sample: class, exit taken (K = fallback), MACs paid and confidence."""
    prediction: np.ndarray   # (N,) int64 class per sample
    exit_index: np.ndarray   # (N,) int64 0..K-1, or K when no exit claimed the sample (fallback)
    macs: np.ndarray         # (N,) float64 MACs each sample paid
    confidence: np.ndarray   # (N,) float32 max softmax of the answer


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("running an exported ONNX model needs onnxruntime: pip install 'scan_lightning[deploy]' "
                          "(or pip install onnxruntime)") from err
    return onnxruntime


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Max softmax probability at ``temperature`` (float32, as torch computes it) and the predicted class."""
    z = logits.astype(np.float32) / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=-1, keepdims=True)
    return p.max(axis=-1), p.argmax(axis=-1).astype(np.int64)


class OnnxEarlyExit:
    """``OnnxEarlyExit(directory)(x)`` -> :class:`OnnxEarlyExitResult`, exiting early like ``EarlyExitRunner``.

    ``providers``: onnxruntime execution providers (default: CPU). ``threads``: intra-op threads (default:
    onnxruntime's). ``spinning=False``: idle worker threads sleep rather than spin. ``thresholds``: replace the exported policy's thresholds (one per exit, in (0, 1]).
    """

    def __init__(self, directory: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 thresholds: Sequence[float] | None = None, spinning: bool = True) -> None:
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
        policy = manifest["policy"]
        self.thresholds = [float(t) for t in (thresholds if thresholds is not None else policy["thresholds"])]
        self.temperatures = [float(t) for t in policy["temperatures"]]
        if len(self.thresholds) != self.num_exits or not all(0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds {self.thresholds} must be {self.num_exits} values in (0, 1]")
        self.fallback = policy["fallback"]
        chained = any(bool(e["uses_previous"]) for e in manifest["exits"])
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
            conf, pred = max_softmax(logits, self.temperatures[i])
            fire = conf > np.float32(self.thresholds[i])
            if fire.any():
                gone = alive[fire]
                prediction[gone], confidence[gone], exit_index[gone] = pred[fire], conf[fire], i
                keep = ~fire
                alive, logits, logit_sum = alive[keep], logits[keep], logit_sum[keep]
                h = [np.ascontiguousarray(t[keep]) for t in h]
        if alive.size:
            # samples left: every section ran, and the deepest exit is never skipped, so both are set
            assert logits is not None and logit_sum is not None
            last = logit_sum / np.float32(k) if self.fallback == "ensemble" else logits
            conf, pred = max_softmax(last)
            prediction[alive], confidence[alive] = pred, conf
        return OnnxEarlyExitResult(prediction, exit_index, self.exit_macs[exit_index], confidence)
