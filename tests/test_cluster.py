"""The cluster definitions in cluster/: they parse, carry the fields their tools require, and point at
configs and job entrypoints that exist in this repository."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from rayiqa.config import load_config
from rayiqa.config.serve import ServeConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
IMAGE_ROOT = "/home/ray/rayiqa"  # where cluster/Dockerfile puts the checkout
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
# job entrypoint -> the config class its --config must validate as
JOB_CONFIGS = {
    "jobs/score.py": "rayiqa.config.score:ScoreConfig",
    "jobs/train_promptiqa.py": "rayiqa.config.promptiqa:PromptIQATrainConfig",
    "jobs/study.py": "rayiqa.config.study:StudyConfig",
    "jobs/train_grmp.py": "rayiqa.config.grmp:GRMPTrainConfig",
    "jobs/finetune_grmp.py": "rayiqa.config.grmp:GRMPFinetuneConfig",
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def repo_path(image_path: str) -> Path:
    """A path inside the image -> the same file in this checkout."""
    assert image_path.startswith(IMAGE_ROOT + "/"), image_path
    return REPO / image_path[len(IMAGE_ROOT) + 1 :]


def test_launcher_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(CLUSTER / "gpu-cluster.yaml")
    validate_config(prepare_config(raw))  # Ray's own ray-schema.json, after its defaults are filled in
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert any(t["max_workers"] > t["min_workers"] for t in workers)  # autoscaling workers
    assert all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers)  # GPU instances
    assert any("pip install" in c and "rayiqa" in c for c in raw["setup_commands"])


def test_launcher_schema_check_catches_a_misspelt_field():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(CLUSTER / "gpu-cluster.yaml")
    raw["available_node_types"]["head"]["min_worker"] = 0
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(raw))


def test_every_kuberay_manifest_has_the_documented_shape():
    kinds = {}
    for path in KUBERAY:
        doc = load(path)
        assert doc["apiVersion"] == "ray.io/v1", path
        assert doc["metadata"]["name"], path
        kinds.setdefault(doc["kind"], []).append(path.name)
        spec = doc["spec"]
        cluster = spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec["rayClusterConfig"]
        assert cluster["rayVersion"] == "2.60.0"
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["image"] and head["resources"]["limits"]
        gpu_groups = [
            g for g in cluster["workerGroupSpecs"]
            if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
        ]
        assert gpu_groups and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in gpu_groups), path
        if doc["kind"] == "RayJob":
            assert isinstance(spec["entrypoint"], str) and spec["shutdownAfterJobFinishes"] is True
            yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))  # a YAML string, as KubeRay expects
    assert kinds["RayService"] == ["rayservice.yaml"]
    assert set(kinds["RayJob"]) == {f"rayjob-{job}.yaml" for job in ("score", "train-promptiqa", "train-grmp", "finetune-grmp")}


@pytest.mark.parametrize("path", [p for p in KUBERAY if load(p)["kind"] == "RayJob"], ids=lambda p: p.name)
def test_rayjob_entrypoints_run_existing_jobs_with_existing_configs(path):
    argv = shlex.split(load(path)["spec"]["entrypoint"])
    assert argv[0] == "python"
    assert repo_path(argv[1]).is_file()
    config = repo_path(argv[argv.index("--config") + 1])
    assert config.is_file()
    module, _, name = JOB_CONFIGS[str(repo_path(argv[1]).relative_to(REPO))].partition(":")
    load_config(getattr(importlib.import_module(module), name), config)  # the config validates, not just exists


def test_rayservice_imports_the_app_builder_with_an_existing_config():
    serve_config = yaml.safe_load(load(CLUSTER / "kuberay" / "rayservice.yaml")["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    config = repo_path(app["args"]["config"])
    cfg = load_config(ServeConfig, config)
    assert cfg.models and app["route_prefix"] == cfg.http.route_prefix


def test_readme_commands_name_files_that_exist():
    text = (CLUSTER / "README.md").read_text()
    named = set(re.findall(r"\b((?:cluster|configs|jobs)/[\w./-]+\.(?:ya?ml|py))", text))
    assert {"cluster/gpu-cluster.yaml", "cluster/kuberay/rayservice.yaml", "jobs/score.py"} <= named
    missing = sorted(p for p in named if not (REPO / p).is_file())
    assert not missing, missing
