"""The real early-exit predictor and the user-facing Predictor. runtime/early_exit.py: EarlyExitRunner takes
the same exits and answers as computing every exit and then choosing (Algorithm 1), at batch 1 and 64, with
either fallback, and agrees with the evaluation on cached outputs. serving/predictor.py: scan_lightning.Predictor from a
checkpoint (thresholds beside it, given, or from a budget) and from an export; predictions on tensors and
DataLoaders; bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import scan_lightning
from scan_lightning.cost import measure_costs
from scan_lightning.export import deploy
from scan_lightning.policy import ExitCache, ExitPolicy, evaluate_thresholds, exit_confidence
from scan_lightning.runtime.early_exit import EarlyExitRunner
from scan_lightning.training.module import MultiExitModule
from tests.helpers.networks import scan_net, small_net
from tests.helpers.references import compute_all_then_choose


# --- EarlyExitRunner (runtime/early_exit.py) ----------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("seed,fallback", [(0, "ensemble"), (1, "ensemble"), (2, "deepest"), (3, "deepest")])
def test_predictor_equals_compute_all_then_choose(batch, seed, fallback):
    g = torch.Generator().manual_seed(seed)
    net = small_net()
    costs = measure_costs(net, (3, 32, 32))
    x = torch.randn(64, 3, 32, 32, generator=g) * 3
    with torch.no_grad():
        conf = torch.stack([exit_confidence(lg)[0] for lg in net(x).logits])
    # random thresholds inside each exit's confidence range, so every path (and the fallback) is taken
    lo, hi = conf.min(1).values, conf.max(1).values
    thresholds = (lo + (hi - lo) * torch.rand(4, generator=g)).tolist()
    predictor = EarlyExitRunner(net, ExitPolicy.create(thresholds, fallback=fallback), costs)
    got = [predictor(xb) for xb in x.split(batch)]
    pred, exits = torch.cat([r.prediction for r in got]), torch.cat([r.exit_index for r in got])
    ref_pred, ref_exits = compute_all_then_choose(net, x, thresholds, fallback)
    assert torch.equal(exits, ref_exits) and torch.equal(pred, ref_pred)
    macs = torch.cat([r.macs for r in got])
    torch.testing.assert_close(macs, costs.exit_macs()[ref_exits])
    if batch == 64:
        assert len(set(exits.tolist())) >= 2


@pytest.mark.parametrize("fallback", ["ensemble", "deepest"])
def test_a_batch_compacted_down_to_one_sample_takes_the_one_sample_path_correctly(fallback):
    """Two samples, exit 1's threshold between their confidences: one leaves there, the other goes on alone (the
    loop's one-sample branch) to wherever compute-all-then-choose sends it."""
    net = small_net()
    costs = measure_costs(net, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 3
    with torch.no_grad():
        conf = torch.stack([exit_confidence(lg)[0] for lg in net(x).logits])
    first = conf[0].mean().item()                                   # between the two samples' exit-1 confidences
    for later in ([1.0, 1.0, 1.0], [conf[1:, :].min().item() / 2] * 3):   # the other sample: fallback, or exit 2
        thresholds = [first, *later]
        policy = ExitPolicy.create(thresholds, fallback=fallback)
        got = EarlyExitRunner(net, policy, costs)(x)
        ref_pred, ref_exits = compute_all_then_choose(net, x, thresholds, fallback)
        assert sorted(got.exit_index.tolist())[0] == 0 and torch.equal(got.exit_index, ref_exits)
        assert torch.equal(got.prediction, ref_pred)
        skipped = torch.tensor(policy.skipped_heads(chained=False))   # switched-off exits are neither run nor charged
        torch.testing.assert_close(got.macs, costs.exit_macs(skipped)[ref_exits])


def test_predictor_agrees_with_cached_evaluation():
    net = small_net()
    costs = measure_costs(net, (3, 32, 32))
    x, y = torch.randn(48, 3, 32, 32) * 3, torch.randint(3, (48,))
    with torch.no_grad():
        cache = ExitCache(torch.stack(net(x).logits), y)
    thresholds = [0.5, 0.45, 0.6, 0.5]
    for fallback in ("ensemble", "deepest"):
        res = EarlyExitRunner(net, ExitPolicy.create(thresholds, fallback=fallback), costs)(x)
        sim = evaluate_thresholds(cache, ExitPolicy.create(thresholds, fallback=fallback), costs.exit_macs())
        assert sim.accuracy == pytest.approx((res.prediction == y).float().mean().item())
        assert sim.mean_macs == pytest.approx(res.macs.double().mean().item())


def run_counting_exits(predictor: EarlyExitRunner, x: torch.Tensor):
    """The predictor's answers on ``x`` at batch 64 and 1, and how often each exit branch ran."""
    calls = [0] * predictor.net.num_exits
    hooks = [b.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, b in enumerate(predictor.net.exits)]
    try:
        batched, single = predictor(x), predictor(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return batched, single, calls


def test_an_exit_switched_off_is_not_run_and_not_charged():
    """Threshold 1 never fires; with the deepest-exit fallback nothing reads that exit, so it is skipped."""
    net = small_net()
    costs = measure_costs(net, (3, 32, 32))
    x, y = torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 3, torch.randint(3, (48,))
    with torch.no_grad():
        cache = ExitCache(torch.stack(net(x).logits), y)
    thresholds = [0.5, 1.0, 0.6, 0.5]
    off = ExitPolicy.create(thresholds, fallback="deepest")
    batched, single, calls = run_counting_exits(EarlyExitRunner(net, off, costs), x)
    assert calls[1] == 0 and min(calls[0], calls[2], calls[3]) > 0
    ref_pred, ref_exits = compute_all_then_choose(net, x, thresholds, "deepest")
    assert torch.equal(batched.exit_index, ref_exits) and torch.equal(batched.prediction, ref_pred)
    assert single.exit_index.item() == ref_exits[0].item()
    # a sample past exit 2 paid every section and the branches it ran, not exit 2's
    branch = [e.attention_macs + e.head_macs for e in costs.exits]
    past = batched.exit_index >= 2
    assert past.any() and torch.all(batched.macs[past] == costs.exit_macs()[batched.exit_index[past]] - branch[1])
    sim = evaluate_thresholds(cache, off, costs.exit_macs(torch.tensor(off.skipped_heads(chained=False))))
    assert sim.mean_macs == pytest.approx(batched.macs.double().mean().item())
    # "never exit" with the deepest fallback is the plain network, to the MAC
    never = EarlyExitRunner(net, ExitPolicy.create([1.0] * 4, fallback="deepest"), costs)(x)
    assert torch.all(never.macs == costs.plain_macs) and torch.equal(never.prediction, net(x).logits[-1].argmax(-1))
    # the ensemble fallback reads every exit, and so does ISC: then nothing is skipped
    _, _, calls = run_counting_exits(EarlyExitRunner(net, ExitPolicy.create(thresholds), costs), x)
    assert calls[1] > 0
    isc = scan_net(isc="linear")
    isc_costs = measure_costs(isc, (3, 32, 32))
    batched, _, calls = run_counting_exits(EarlyExitRunner(isc, off, isc_costs), x)
    assert isc_costs.chained and calls[1] > 0
    assert torch.all(batched.macs == isc_costs.exit_macs()[batched.exit_index])


# --- scan_lightning.Predictor (serving/predictor.py) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(short_run) -> tuple[Path, Path]:
    """The session's trained checkpoint (``short_run``) and the thresholds.json its post-fit search wrote."""
    return short_run.ckpt, short_run.ckpt.parent / "thresholds.json"


def test_predictor_from_checkpoint_really_exits_like_the_predictor(run):
    ckpt, thresholds = run
    predictor = scan_lightning.Predictor.from_checkpoint(ckpt, thresholds=thresholds)
    saved = json.loads(thresholds.read_text())
    assert predictor.policy == ExitPolicy.from_dict(saved)
    x = torch.randn(20, 3, 32, 32) * 3
    out = predictor.predict(x, batch_size=8)
    assert out.labels.shape == out.confidence.shape == out.exit_index.shape == out.macs.shape == (20,)
    assert len(out.batch_ms) == 3 and out.ms_per_image > 0
    net = MultiExitModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu").net
    ref = EarlyExitRunner(deploy(net), predictor.policy, measure_costs(net, (3, 32, 32)))
    expect = [ref(xb) for xb in x.split(8)]
    assert torch.equal(out.exit_index, torch.cat([r.exit_index for r in expect]))
    assert torch.equal(out.labels, torch.cat([r.prediction for r in expect]))
    assert bool(((out.confidence > 0) & (out.confidence <= 1)).all())
    # a DataLoader of (x, y) gives the same answers, one batch at a time
    loader = DataLoader(TensorDataset(x, torch.zeros(20, dtype=torch.long)), batch_size=8)
    again = predictor.predict(loader, progress=False)
    assert torch.equal(again.labels, out.labels) and torch.equal(again.exit_index, out.exit_index)


def test_given_thresholds_and_budgets(run):
    ckpt, thresholds = run
    everyone_first = scan_lightning.Predictor.from_checkpoint(ckpt, thresholds=[1e-6, 0.5, 0.5, 0.5])
    out = everyone_first.predict(torch.randn(5, 3, 32, 32))
    assert out.exit_index.tolist() == [0] * 5
    saved = json.loads(thresholds.read_text())
    rows = saved["budgeted"]
    cheap = min(r["val_mean_macs"] for r in rows)
    budgeted = scan_lightning.Predictor.from_checkpoint(ckpt, thresholds=thresholds, budget_macs=cheap)
    picked = next(r for r in rows if r["val_mean_macs"] == cheap)
    assert list(budgeted.policy.thresholds) == pytest.approx(picked["thresholds"])
    with pytest.raises(ValueError, match="below the cheapest budgeted point"):
        budgeted.with_budget(macs=cheap / 2)
    with pytest.raises(ValueError, match="got 3 thresholds"):
        scan_lightning.Predictor.from_checkpoint(ckpt, thresholds=[0.9, 0.9, 0.9])


def test_bad_input_is_one_clear_error(run, tmp_path):
    ckpt, thresholds = run
    predictor = scan_lightning.Predictor.from_checkpoint(ckpt, thresholds=thresholds)
    with pytest.raises(ValueError, match=r"images of shape \(1, 28, 28\) given; this network takes \(3, 32, 32\)"):
        predictor.predict(torch.randn(2, 1, 28, 28))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_lightning.Predictor.from_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="no thresholds"):
        scan_lightning.Predictor.from_checkpoint(shutil.copy(ckpt, tmp_path / "alone.ckpt"))   # no thresholds.json


def test_predictor_from_export_matches_the_checkpoint(run, tmp_path):
    ckpt, thresholds = run
    from_ckpt = scan_lightning.Predictor.from_checkpoint(ckpt, thresholds=thresholds)
    net = MultiExitModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu").net
    costs = measure_costs(net, (3, 32, 32))
    from scan_lightning.export.formats import export_onnx, export_torchscript

    paths = [export_torchscript(deploy(net), from_ckpt.policy, costs, tmp_path / "model.pt")]
    try:
        import onnxruntime  # noqa: F401
        paths.append(export_onnx(deploy(net), from_ckpt.policy, costs, tmp_path / "onnx", exporter="legacy"))
    except ImportError:
        pass
    x = torch.randn(12, 3, 32, 32) * 3
    ref = from_ckpt.predict(x, batch_size=4)
    for path in paths:
        exported = scan_lightning.Predictor.from_export(path)
        assert exported.policy == from_ckpt.policy
        out = exported.predict(x, batch_size=4)
        assert torch.equal(out.labels, ref.labels) and torch.equal(out.exit_index, ref.exit_index), path
        torch.testing.assert_close(out.macs.double(), ref.macs.double())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_lightning.Predictor.from_export(tmp_path / "nothing.pt")
