"""The configs ship inside the wheel: `python -m scan_lightning.train` works from a regular install."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, unpacked as site-packages would hold it."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp.glob("scan_lightning-*.whl"))
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def test_wheel_carries_every_config(installed):
    shipped = {p.relative_to(installed / "scan_lightning" / "conf") for p in (installed / "scan_lightning" / "conf").rglob("*.yaml")}
    repo = {p.relative_to(ROOT / "conf") for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped == repo


def test_installed_copy_composes_without_the_repo(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    code = ("import scan_lightning, scan_lightning.utils.defaults as c; print(scan_lightning.__file__); print(c.config_dir())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0].startswith(str(installed)) and out[1] == str(installed / "scan_lightning" / "conf")
    job = subprocess.run([sys.executable, "-m", "scan_lightning.train", "--cfg", "job", "experiment=scan_cifar100_resnet18"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr
    assert "task_name: scan_cifar100_resnet18" in job.stdout and "milestones" in job.stdout
