"""The GPU install resolves: pip's resolver (`--dry-run`, metadata only, nothing installed) on the
project's own requirements, alone and with the `vllm` extra, exactly as the README's GPU command and the
cluster image ask for them. Needs the package index (as `make install` does)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def _resolve(*requirements: str) -> dict[str, str]:
    """{package: version} pip would install for `requirements` on this (Linux x86_64) machine."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--disable-pip-version-check", "--report", "-", *requirements]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, f"{shlex.join(cmd)} did not resolve:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


def _readme_gpu_install() -> list[str]:
    """The requirement arguments of the README's GPU install command."""
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if re.match(r"\s*pip install .*\[vllm\]", ln)]
    assert len(lines) == 1, lines
    args = shlex.split(lines[0].split("#")[0])[2:]
    return [a for a in args if not a.startswith("-")]


def test_readme_and_cluster_image_install_the_same_vllm_extra() -> None:
    assert _readme_gpu_install() == [".[vllm]"]
    assert "pip install --no-cache-dir -e '.[vllm]'" in (REPO / "cluster" / "Dockerfile").read_text()


def test_main_install_and_vllm_extra_resolve_together() -> None:
    with ThreadPoolExecutor(2) as pool:  # two independent resolver runs
        with_vllm, alone = pool.map(lambda reqs: _resolve(*reqs), [_readme_gpu_install(), ["."]])
    project = _resolve_project_requirements()
    for versions in (alone, with_vllm):
        for req in project:  # every pin of the main install holds in both resolutions
            name = canonicalize_name(req.name)
            assert name in versions and req.specifier.contains(versions[name], prereleases=True), (req, versions.get(name))
    vllm_pin = next(r for r in _extra("vllm") if r.name == "vllm")
    assert vllm_pin.specifier.contains(with_vllm["vllm"])
    print("with vllm:", {k: with_vllm[k] for k in ("vllm", "torch", "torchvision", "transformers", "ray")})


def _resolve_project_requirements() -> list[Requirement]:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [Requirement(d) for d in deps]


def _extra(name: str) -> list[Requirement]:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return [Requirement(d) for d in extras[name]]
