"""Export: TorchScript and ONNX artefacts exit early exactly like the eager predictor; they run without the
project (TorchScript with torch alone, the ONNX runner with numpy + onnxruntime); the export command."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scan_lightning.cli.export import export
from scan_lightning.cost import measure_costs
from scan_lightning.export import deploy
from scan_lightning.export.formats import (
    MANIFEST,
    TORCHSCRIPT_META,
    build_torchscript,
    export_onnx,
    export_torchscript,
    load_torchscript,
)
from scan_lightning.models import MultiExitNetwork, build_backbone
from scan_lightning.policy import ExitPolicy, exit_confidence
from scan_lightning.runtime import EarlyExitRunner
from scan_lightning.runtime.forms import fold_batchnorm
from tests.helpers.compose import compose_export
from tests.helpers.networks import small_msdnet

ONNX_RUNNER = Path(__file__).resolve().parents[1] / "src" / "scan_lightning" / "export" / "onnx_runner.py"
BATCH = 64


def resnet(**kw) -> tuple[MultiExitNetwork, tuple[int, int, int]]:
    return MultiExitNetwork(build_backbone("resnet18", width=0.125), 3, bottleneck_width=8, **kw), (3, 16, 16)


def msdnet(blocks: int = 3, **kw) -> tuple[MultiExitNetwork, tuple[int, int, int]]:
    """A tiny MSDNet: 3 scales, one exit per block, MSDNet classifiers."""
    return small_msdnet(num_blocks=blocks, **kw), (3, 16, 16)


# name -> (network, input shape); the policies' fallback and temperatures vary across them
NETWORKS = {
    "resnet": lambda: resnet(),
    "vgg": lambda: (MultiExitNetwork(build_backbone("vgg16_bn", width=0.0625), 4, bottleneck_width=8), (3, 32, 32)),
    "msdnet_isc_identity": lambda: msdnet(isc="identity"),
    "resnet_isc_linear": lambda: resnet(isc="linear"),
    "resnet_deployed": lambda: resnet(),     # exported from deploy(net): patchify GEMMs, channels-last
}
DEPLOYED = {"resnet_deployed"}
SLOW_NETWORKS = {"msdnet": lambda: msdnet(), "msdnet2_isc_linear": lambda: msdnet(2, isc="linear")}
SETTINGS = {  # name -> (seed, fallback, random temperatures)
    "resnet": (0, "ensemble", False),
    "vgg": (1, "deepest", False),
    "msdnet_isc_identity": (2, "ensemble", True),
    "resnet_isc_linear": (3, "deepest", True),
    "msdnet": (4, "deepest", False),
    "msdnet2_isc_linear": (5, "ensemble", True),
    "resnet_deployed": (6, "ensemble", True),
}
SWITCHED_OFF = {"vgg": 1, "msdnet": 1, "resnet_isc_linear": 1}   # exit at threshold 1: skipped unless ISC reads it


def spread_thresholds(logits: list[torch.Tensor], temperatures: list[float], g: torch.Generator) -> list[float]:
    """Per exit, a random midpoint between two neighbouring sorted confidences (30-90 % quantile), among the
    wider half of those gaps: samples leave at several exits, and none sits within float rounding (~1e-7) of
    its threshold."""
    thresholds = []
    for lg, t in zip(logits, temperatures):
        conf = exit_confidence(lg, t)[0].sort().values
        gaps, mids = conf[1:] - conf[:-1], (conf[1:] + conf[:-1]) / 2
        n = conf.numel()
        window = torch.arange(int(0.3 * n), int(0.9 * n))
        wide = window[gaps[window] >= max(gaps[window].median(), 1e-5)]
        thresholds.append(float(mids[wide[int(torch.randint(len(wide), (1,), generator=g))]]))
    return thresholds


class Case:
    """A BN-folded network, a policy with thresholds away from ties, inputs, and the eager predictor's
    answers at batch 64 and, for a few samples per exit taken, at batch 1."""

    def __init__(self, name: str) -> None:
        seed, fallback, temper = SETTINGS[name]
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        raw, shape = {**NETWORKS, **SLOW_NETWORKS}[name]()
        self.name, self.shape = name, shape
        self.net = deploy(raw.eval()) if name in DEPLOYED else fold_batchnorm(raw.eval())
        self.costs = measure_costs(raw, shape)
        self.x = torch.randn(BATCH, *shape, generator=g) * 3
        k = self.net.num_exits
        temperatures = (0.5 + 1.5 * torch.rand(k, generator=g)).tolist() if temper else [1.0] * k
        with torch.no_grad():
            logits = self.net.all_exits(self.x) if name in DEPLOYED else self.net(self.x).logits
        thresholds = spread_thresholds(logits, temperatures, g)
        if name in SWITCHED_OFF:
            thresholds[SWITCHED_OFF[name]] = 1.0
        self.policy = ExitPolicy.create(thresholds, temperatures, fallback=fallback)
        self.skipped = self.policy.skipped_heads(chained=self.net.isc is not None)
        assert any(self.skipped) == (name in SWITCHED_OFF and fallback == "deepest" and self.net.isc is None)
        predictor = EarlyExitRunner(self.net, self.policy, self.costs)
        self.batched = predictor(self.x)
        exits = self.batched.exit_index
        assert len(set(exits.tolist())) >= 3, exits.bincount()     # several exits are taken
        # batch 1: up to 3 samples per exit taken (the fallback included)
        self.few = torch.cat([(exits == e).nonzero()[:3, 0] for e in range(k + 1)])
        singles = [predictor(self.x[i:i + 1]) for i in self.few.tolist()]
        self.single = [torch.cat([getattr(r, f) for r in singles]) for f in ("prediction", "exit_index")]
        # the eager predictor agrees with itself across batch sizes
        assert torch.equal(self.single[0], self.batched.prediction[self.few])
        assert torch.equal(self.single[1], self.batched.exit_index[self.few])

    def assert_matches(self, prediction, exit_index, macs, confidence) -> None:
        prediction, exit_index = torch.as_tensor(prediction), torch.as_tensor(exit_index)
        assert torch.equal(exit_index, self.batched.exit_index)
        assert torch.equal(prediction, self.batched.prediction)
        torch.testing.assert_close(torch.as_tensor(macs), self.batched.macs)
        torch.testing.assert_close(torch.as_tensor(confidence), self.batched.confidence, atol=1e-5, rtol=1e-5)

    def assert_matches_one_by_one(self, run) -> None:
        got = [run(self.x[i:i + 1]) for i in self.few.tolist()]
        prediction = torch.cat([torch.as_tensor(r[0]) for r in got])
        exit_index = torch.cat([torch.as_tensor(r[1]) for r in got])
        assert torch.equal(exit_index, self.single[1]) and torch.equal(prediction, self.single[0])


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: a second thread only adds contention


_CASES: dict[str, Case] = {}


def get_case(name: str) -> Case:
    """One Case per network for the whole module."""
    if name not in _CASES:
        _CASES[name] = Case(name)
    return _CASES[name]


@pytest.fixture(params=sorted(NETWORKS))
def case(request) -> Case:
    return get_case(request.param)


# --- TorchScript ------------------------------------------------------------------------------------------
def test_torchscript_exits_like_the_eager_predictor(case, tmp_path):
    path = export_torchscript(case.net, case.policy, case.costs, tmp_path / "model.pt")
    model = torch.jit.load(str(path))
    case.assert_matches(*model(case.x))
    case.assert_matches_one_by_one(model)
    # policy, costs and shape ride along, as attributes and as the file's JSON entry
    assert list(model.thresholds) == list(case.policy.thresholds) and model.fallback == case.policy.fallback
    assert list(model.skipped) == case.skipped
    _, meta = load_torchscript(path)
    assert meta["policy"] == case.policy.to_dict() and meta["costs"] == case.costs.to_dict()
    assert meta["input_shape"] == list(case.shape) and meta["num_classes"] == case.net.num_classes
    assert json.loads(model.metadata) == meta
    with pytest.raises(Exception, match="input must be a batch of shape"):
        model(torch.zeros(2, 1, 8, 8))


def test_torchscript_unfrozen_and_optimized_for_inference(tmp_path):
    case = get_case("msdnet_isc_identity")
    unfrozen = torch.jit.load(str(export_torchscript(case.net, case.policy, case.costs, tmp_path / "m.pt",
                                                     freeze=False)))
    case.assert_matches(*unfrozen(case.x))
    optimised, _ = build_torchscript(case.net, case.policy, case.costs, optimize=True)   # in memory only
    case.assert_matches(*optimised(case.x))


def test_torchscript_file_runs_with_torch_alone(tmp_path):
    case = get_case("msdnet_isc_identity")
    export_torchscript(case.net, case.policy, case.costs, tmp_path / "model.pt")
    torch.save(case.x, tmp_path / "x.pt")
    code = (
        "import json, sys, torch\n"
        f"extra = {{{TORCHSCRIPT_META!r}: ''}}\n"
        "m = torch.jit.load('model.pt', _extra_files=extra)\n"
        "out = m(torch.load('x.pt'))\n"
        "torch.save(list(out), 'out.pt')\n"
        f"meta = json.loads(extra[{TORCHSCRIPT_META!r}])\n"
        "print(json.dumps({'exits': meta['num_exits'], 'project': sorted(n for n in sys.modules if n.split('.')[0] == 'scan_lightning')}))\n"
    )
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"exits": case.net.num_exits, "project": []}
    case.assert_matches(*torch.load(tmp_path / "out.pt"))


# --- ONNX -------------------------------------------------------------------------------------------------
def check_onnx(case: Case, directory: Path, exporter: str) -> None:
    from scan_lightning.export.onnx_runner import OnnxEarlyExit

    manifest = json.loads((directory / MANIFEST).read_text())
    k = case.net.num_exits
    assert manifest["exporter"] == exporter and len(manifest["sections"]) == len(manifest["exits"]) == k
    assert [e["uses_previous"] for e in manifest["exits"]] == [case.net.isc is not None and i > 0 for i in range(k)]
    assert manifest["policy"] == case.policy.to_dict() and manifest["input_shape"] == list(case.shape)
    assert manifest["costs"] == case.costs.to_dict() and manifest["num_classes"] == case.net.num_classes
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [MANIFEST, *(f"section{i}.onnx" for i in range(k)), *(f"exit{i}.onnx" for i in range(k))])
    runner = OnnxEarlyExit(directory)
    assert runner.skipped == case.skipped
    case.assert_matches(*runner(case.x))             # a tensor
    case.assert_matches(*runner(case.x.numpy()))     # or a numpy array
    case.assert_matches_one_by_one(runner)


def test_onnx_exits_like_the_eager_predictor(case, tmp_path):
    pytest.importorskip("onnxruntime")
    # the legacy exporter is several times faster to run; the dynamo one (the default) is tested below
    check_onnx(case, export_onnx(case.net, case.policy, case.costs, tmp_path / "onnx", exporter="legacy"), "legacy")


@pytest.mark.parametrize("name", [
    "msdnet2_isc_linear",   # two blocks: multi-scale lists, ISC; 4 graphs
    *(pytest.param(n, marks=pytest.mark.slow) for n in [*sorted(NETWORKS), "msdnet"]),
])
def test_onnx_dynamo_exporter(name, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    case = get_case(name)
    check_onnx(case, export_onnx(case.net, case.policy, case.costs, tmp_path / "onnx", exporter="dynamo"), "dynamo")


def test_onnx_runner_needs_neither_torch_nor_the_project(tmp_path):
    pytest.importorskip("onnxruntime")
    case = get_case("resnet_isc_linear")
    export_onnx(case.net, case.policy, case.costs, tmp_path / "onnx", exporter="legacy")
    np.save(tmp_path / "x.npy", case.x.numpy())
    code = (
        "import importlib.util, json, sys\n"
        "sys.modules['torch'] = None  # importing torch now fails\n"
        "import numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('onnx_runner', {str(ONNX_RUNNER)!r})\n"
        "runner = importlib.util.module_from_spec(spec); spec.loader.exec_module(runner)\n"
        "out = runner.OnnxEarlyExit('onnx')(np.load('x.npy'))\n"
        "np.savez('out.npz', *out)\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] == 'scan_lightning')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    out = np.load(tmp_path / "out.npz")
    case.assert_matches(*(torch.from_numpy(out[f"arr_{i}"]) for i in range(4)))


def test_onnx_runner_bad_input(tmp_path):
    pytest.importorskip("onnxruntime")
    from scan_lightning.export.onnx_runner import OnnxEarlyExit

    with pytest.raises(FileNotFoundError, match="manifest.json does not exist"):
        OnnxEarlyExit(tmp_path)
    case = get_case("msdnet2_isc_linear")
    runner = OnnxEarlyExit(export_onnx(case.net, case.policy, case.costs, tmp_path / "o", exporter="legacy"))
    with pytest.raises(ValueError, match=r"input must be a batch of shape \(N, 3, 16, 16\)"):
        runner(np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="must be 2 values in"):
        OnnxEarlyExit(tmp_path / "o", thresholds=[0.5, 0.5, 0.5])


# --- the export command -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(short_run, tmp_path_factory) -> Path:
    """The session's trained checkpoint (``short_run``) and its thresholds.json, copied so exports land elsewhere."""
    tmp = tmp_path_factory.mktemp("trained")
    shutil.copy(short_run.ckpt.parent / "thresholds.json", tmp / "thresholds.json")
    return Path(shutil.copy(short_run.ckpt, tmp / "model.ckpt"))


def test_export_command_writes_both_formats(trained, tmp_path, caplog):
    saved = json.loads((trained.parent / "thresholds.json").read_text())
    with caplog.at_level("INFO", logger="scan_lightning"):
        ts = export(compose_export(f"ckpt_path={trained}", "format=torchscript"))
    assert ts["output"] == str(trained.with_suffix(".pt")) and ts["check"] == {"samples": 16, "agree": 16}
    assert ts["form"] == "deploy"
    model, meta = load_torchscript(ts["output"])
    assert meta["policy"]["thresholds"] == saved["thresholds"] and meta["input_shape"] == [3, 32, 32]
    assert model(torch.randn(5, 3, 32, 32))[0].shape == (5,)
    assert "16/16 random images take the same exit" in caplog.text

    if importlib.util.find_spec("onnxruntime") is not None:
        given = export(compose_export(f"ckpt_path={trained}", "format=onnx", f"output={tmp_path / 'onnx'}",
                                      "onnx_exporter=legacy", "policy.thresholds=[0.6,0.7,0.8,0.9]",
                                      "policy.fallback=deepest",
                                      "form=fold_batchnorm"))
        assert given["check"] == {"samples": 16, "agree": 16}
        manifest = json.loads((tmp_path / "onnx" / MANIFEST).read_text())
        assert manifest["policy"] == {"thresholds": [0.6, 0.7, 0.8, 0.9], "temperatures": [1.0] * 4,
                                      "fallback": "deepest", "rule": "max_softmax", "rule_params": {}}
    with pytest.raises(ValueError, match="got 2 thresholds"):
        export(compose_export(f"ckpt_path={trained}", "policy.thresholds=[0.5,0.5]"))
    with pytest.raises(FileNotFoundError, match="policy.thresholds_path=.*nope.json does not exist"):
        export(compose_export(f"ckpt_path={trained}", f"policy.thresholds_path={tmp_path / 'nope.json'}"))
    with pytest.raises(ValueError, match="onnx_exporter='fx' is not allowed"):
        export(compose_export(f"ckpt_path={trained}", "format=onnx", "onnx_exporter=fx"))


@pytest.mark.parametrize("override,needle", [
    ("format=tflite", "format='tflite' is not allowed; choose one of ('torchscript', 'onnx')"),
    ("format=onnx", "nope.ckpt does not exist"),
    ("form=compiled", "form='compiled' is not allowed; choose one of ('deploy', 'fold_batchnorm', 'none')"),
])
def test_cli_bad_input_is_one_clear_error(tmp_path, override, needle):
    proc = subprocess.run([sys.executable, "-m", "scan_lightning.export", f"ckpt_path={tmp_path / 'nope.ckpt'}",
                           override], check=False, cwd=tmp_path, env={**os.environ, "SCAN_ROOT": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
