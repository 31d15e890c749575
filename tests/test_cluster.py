"""The cluster definitions in cluster/: schema-valid (KubeRay v1.7.0 CRDs, Ray's launcher schema), pointing at
jobs and configs that exist and validate, running real GPU configs (no tiny model, no idle GPU, nothing kept on
a disk the cluster loses, no open endpoint), with pods that fit the node types they name."""
from __future__ import annotations

import copy
import importlib
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

from rayiqa.config import load_config
from rayiqa.config.grmp import GRMPFinetuneConfig, GRMPTrainConfig
from rayiqa.config.promptiqa import PromptIQATrainConfig
from rayiqa.config.score import ScoreConfig
from rayiqa.config.serve import ServeConfig
from rayiqa.scorers.llm_iqa import LLMIQAScorerConfig
from rayiqa.scorers.llm_tta import LLMTTAScorerConfig
from rayiqa.config.study import StudyConfig
from rayiqa.io.fs import split_uri

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
IMAGE_ROOT = "/home/ray/rayiqa"  # where cluster/Dockerfile puts the checkout
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
CRDS = json.loads((Path(__file__).parent / "kuberay-crd-v1.7.0.json").read_text())
NODES = yaml.safe_load((CLUSTER / "node-types.yaml").read_text())
# job entrypoint -> the config class its --config must validate as
JOB_CONFIGS = {
    "jobs/score.py": ScoreConfig,
    "jobs/train_promptiqa.py": PromptIQATrainConfig,
    "jobs/study.py": StudyConfig,
    "jobs/train_grmp.py": GRMPTrainConfig,
    "jobs/finetune_grmp.py": GRMPFinetuneConfig,
    "jobs/deploy_serve.py": ServeConfig,
}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "": 1}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def repo_path(image_path: str) -> Path:
    """A path inside the image -> the same file in this checkout."""
    assert image_path.startswith(IMAGE_ROOT + "/"), image_path
    return REPO / image_path[len(IMAGE_ROOT) + 1 :]


def cpu(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(quantity)).groups()
    return float(number) * MEMORY_UNITS[unit] / 2**30


# ---- what a config asks of the cluster --------------------------------------------------------------


def used_models(cfg) -> list[str]:
    """The model presets/encoders a config actually loads (sections of other scorers left out)."""
    if isinstance(cfg, ScoreConfig):
        names = [m.preset for m in cfg.mllms] if cfg.scorer == "llm-iqa" else []
        names += [cfg.segmenter.preset] if cfg.scorer == "llm-iqa" and cfg.method.segmentation else []
        names += [cfg.adapt.backbone] if cfg.adapt.method != "none" else []
        return names + ([cfg.promptiqa.model.encoder] if cfg.scorer == "promptiqa" else [])
    if isinstance(cfg, PromptIQATrainConfig):
        return [cfg.model.encoder]
    if isinstance(cfg, (GRMPTrainConfig, GRMPFinetuneConfig)):
        return [cfg.model.clip]
    if isinstance(cfg, StudyConfig):
        return [m.preset for m in cfg.mllms] + [cfg.subset.clip_model]
    names = []
    for model in cfg.models.values():
        if isinstance(getattr(model, "scorer", None), LLMIQAScorerConfig):
            llm_iqa = model.scorer
            names += [m.preset for m in llm_iqa.mllms] + ([llm_iqa.segmenter.preset] if llm_iqa.method.segmentation else [])
        elif isinstance(model.scorer, LLMTTAScorerConfig):
            names += [model.scorer.backbone, model.scorer.ranker.preset]
    return names


def storage_paths(cfg) -> dict[str, str]:
    """Where a config reads its working data and keeps what it writes (key -> path)."""
    if isinstance(cfg, ScoreConfig):
        paths = {"input.uri": cfg.input.uri, "output.uri": cfg.output.uri}
        return paths | ({"segmenter.checkpoint": cfg.segmenter.checkpoint} if cfg.segmenter.checkpoint else {})
    if isinstance(cfg, PromptIQATrainConfig):
        return {"storage_path": cfg.storage_path} | {f"datasets.{i}.root": d.root for i, d in enumerate(cfg.datasets)}
    if isinstance(cfg, (GRMPTrainConfig, GRMPFinetuneConfig)):
        paths = {"run.storage_path": cfg.run.storage_path, "data.root": cfg.data.root}
        init = getattr(getattr(cfg, "finetune", None), "init_checkpoint", None)
        return paths | ({"finetune.init_checkpoint": init} if init else {})
    if isinstance(cfg, StudyConfig):
        return {"output.uri": cfg.output.uri} | ({"data.root": cfg.data.root} if cfg.data.root else {})
    return {f"models.{name}.segmenter.checkpoint": m.scorer.segmenter.checkpoint for name, m in cfg.models.items()
            if isinstance(getattr(m, "scorer", None), LLMIQAScorerConfig) and m.scorer.segmenter.checkpoint}


@dataclass(frozen=True)
class Pool:
    """One actor pool (or Train worker group) of a config: at most `count` actors of `cpus` CPUs and `gpus` GPUs."""

    name: str
    count: int
    cpus: float
    gpus: float


def pools(cfg) -> list[Pool]:
    """The config's model actors: every pool that runs a model must ask for a GPU on a GPU cluster."""
    if isinstance(cfg, ScoreConfig):
        out = [Pool(f"score[{k}]", cfg.score.concurrency[1], cfg.score.num_cpus, cfg.score.num_gpus) for k in range(len(cfg.mllms))]
        if cfg.scorer == "llm-iqa" and cfg.method.segmentation:
            out.append(Pool("segment", cfg.segment.concurrency[1], cfg.segment.num_cpus, cfg.segment.num_gpus))
        if cfg.adapt.method != "none":
            out.append(Pool("adapt", cfg.adapt.stage.concurrency[1], cfg.adapt.stage.num_cpus, cfg.adapt.stage.num_gpus))
        return out
    if isinstance(cfg, PromptIQATrainConfig):
        return [Pool("train", cfg.num_workers, cfg.cpus_per_worker, float(cfg.use_gpu))]
    if isinstance(cfg, (GRMPTrainConfig, GRMPFinetuneConfig)):
        return [Pool("train", cfg.run.num_workers, cfg.run.cpus_per_worker, float(cfg.run.use_gpu))]
    if isinstance(cfg, StudyConfig):
        return [Pool(f"stage[{k}]", cfg.stage.concurrency[1], cfg.stage.num_cpus, cfg.stage.num_gpus) for k in range(len(cfg.mllms))]
    return [Pool(name, m.deployment.max_replicas, m.deployment.num_cpus, m.deployment.num_gpus) for name, m in cfg.models.items()]


def config_problems(cfg) -> list[str]:
    """What makes a config unfit for a GPU cluster: a tiny model, a pool without a GPU, a local path, an open endpoint."""
    problems = [f"tiny model {name!r}" for name in used_models(cfg) if name == "tiny" or name.startswith("tiny-")]
    problems += [f"pool {p.name} asks for no GPU" for p in pools(cfg) if p.gpus == 0]
    problems += [f"{key} is not on object storage: {path}" for key, path in storage_paths(cfg).items() if split_uri(path)[0] != "s3"]
    if isinstance(cfg, ServeConfig) and cfg.http.host not in LOOPBACK and not cfg.auth.api_key_env:
        problems.append(f"serves on {cfg.http.host} without auth.api_key_env")
    return problems


def gpus_needed(pools_: list[Pool]) -> float:
    return sum(p.count * p.gpus for p in pools_)


# ---- what a manifest runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One config a cluster file runs: its job file, config, command-line overrides and environment."""

    job: str
    config: Path
    overrides: list[str]
    env: dict[str, str]

    def load(self, monkeypatch: pytest.MonkeyPatch):
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        return load_config(JOB_CONFIGS[self.job], self.config, self.overrides)


def container_env(container: dict) -> dict[str, str]:
    """A container's env; values from Secrets stand in as 'secret' (the pod does not start without them)."""
    return {e["name"]: e.get("value", "secret") for e in container.get("env", [])}


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]


def worker_groups(doc: dict) -> list[dict]:
    return cluster_spec(doc)["workerGroupSpecs"]


def manifest_run(doc: dict) -> Run:
    """The job and config a RayJob's entrypoint or a RayService's application runs, with the env it gets."""
    workers = [container_env(g["template"]["spec"]["containers"][0]) for g in worker_groups(doc)]
    worker_env = {k: v for env in workers for k, v in env.items()}
    if doc["kind"] == "RayJob":
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "python" and argv[2] == "--config", argv
        env = yaml.safe_load(doc["spec"].get("runtimeEnvYAML", "{}")).get("env_vars", {})
        job = str(repo_path(argv[1]).relative_to(REPO))
        return Run(job, repo_path(argv[3]), argv[4:], worker_env | env)
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    overrides = app["args"].get("overrides", [])
    env = app.get("runtime_env", {}).get("env_vars", {})
    return Run("jobs/deploy_serve.py", repo_path(app["args"]["config"]),
               overrides.split() if isinstance(overrides, str) else overrides, worker_env | env)


def launcher_runs() -> list[Run]:
    """The `ray job submit` commands of cluster/README.md's launcher walk-through, with the variables it exports
    and the env_vars of its runtime env."""
    text = (CLUSTER / "README.md").read_text().replace("\\\n", " ")
    shell = dict(re.findall(r"^export (\w+)=(\S+)", text, re.M))
    runtime_env = re.search(r"^RUNTIME_ENV='(.*)'$", text, re.M)[1]
    env = json.loads(re.sub(r"'\$(\w+)'", lambda m: shell[m[1]], runtime_env))["env_vars"]
    runs = []
    for line in re.findall(r"ray job submit [^\n]*-- (python jobs/[^\n]+)", text):
        argv = shlex.split(line.split("#")[0])
        overrides = [re.sub(r"\$(\w+)", lambda m: shell[m[1]], a) for a in argv[4:]]
        runs.append(Run(argv[1], REPO / argv[3], overrides, env))
    return runs


# ---- schemas ------------------------------------------------------------------------------------------


def strict(schema):
    """The CRD schema with undeclared fields rejected (the API server would silently prune them)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(strict({**CRDS[kind], "$defs": CRDS["$defs"]}))


def cel_fields_used(schema: dict, doc, path: str = "") -> list[str]:
    """Fields of `doc` whose schema carries CEL rules (x-kubernetes-validations), which jsonschema cannot check."""
    if "$ref" in schema:
        schema = CRDS["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    found = [path] if "x-kubernetes-validations" in schema else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in schema.get("properties", {}):
                found += cel_fields_used(schema["properties"][key], value, f"{path}.{key}")
    elif isinstance(doc, list) and "items" in schema:
        for i, value in enumerate(doc):
            found += cel_fields_used(schema["items"], value, f"{path}[{i}]")
    return found


def test_vendored_crds_are_kuberay_v1_7_0():
    assert CRDS["kuberay_version"] == "v1.7.0" and "v1.7.0" in CRDS["source"]
    for kind in ("RayJob", "RayService"):
        jsonschema.Draft202012Validator.check_schema(CRDS[kind])


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_validates_against_the_crd(path):
    doc = load(path)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)]
    assert not errors, errors
    assert cel_fields_used(CRDS[doc["kind"]], doc) == []  # no field whose operator rule this test cannot evaluate


def test_crd_check_catches_a_misspelt_and_a_mistyped_field():
    doc = load(CLUSTER / "kuberay" / "rayjob-score.yaml")
    validator = crd_validator("RayJob")
    misspelt = copy.deepcopy(doc)
    misspelt["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplica"] = 1
    assert any("minReplica" in e.message for e in validator.iter_errors(misspelt))
    mistyped = copy.deepcopy(doc)
    mistyped["spec"]["shutdownAfterJobFinishes"] = "yes"
    assert any(list(e.absolute_path) == ["spec", "shutdownAfterJobFinishes"] for e in validator.iter_errors(mistyped))


def test_launcher_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(CLUSTER / "gpu-cluster.yaml")
    validate_config(prepare_config(raw))  # Ray's own ray-schema.json, after its defaults are filled in
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert any(t["max_workers"] > t["min_workers"] for t in workers)  # autoscaling workers
    assert any("pip install" in c and "rayiqa" in c for c in raw["setup_commands"])


def test_launcher_schema_check_catches_a_misspelt_field():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(CLUSTER / "gpu-cluster.yaml")
    raw["available_node_types"]["head"]["min_worker"] = 0
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(raw))


# ---- what the manifests run ------------------------------------------------------------------------


def test_every_kuberay_manifest_is_there_with_a_gpu_worker_group():
    kinds: dict[str, list[str]] = {}
    for path in KUBERAY:
        doc = load(path)
        kinds.setdefault(doc["kind"], []).append(path.name)
        cluster = cluster_spec(doc)
        assert cluster["rayVersion"] == "2.60.0" and cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        assert all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in worker_groups(doc)), path
        if doc["kind"] == "RayJob":
            assert doc["spec"]["shutdownAfterJobFinishes"] is True
        images = {c["image"] for g in [cluster["headGroupSpec"], *worker_groups(doc)] for c in g["template"]["spec"]["containers"]}
        assert images == {"REGISTRY/rayiqa:0.1.0"}, images  # one placeholder, set as cluster/README.md says
    assert kinds["RayService"] == ["rayservice.yaml"]
    assert set(kinds["RayJob"]) == {f"rayjob-{job}.yaml" for job in ("score", "train-promptiqa", "train-grmp", "finetune-grmp")}


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_manifest_runs_an_existing_job_with_a_gpu_config(path, monkeypatch):
    doc = load(path)
    run = manifest_run(doc)
    assert (REPO / run.job).is_file() and run.config.is_file(), run
    cfg = run.load(monkeypatch)  # validates, with every ${VAR} the config names set by the manifest
    assert config_problems(cfg) == []
    pods = [g["template"]["spec"]["containers"][0]["resources"]["requests"] for g in worker_groups(doc)]
    gpu_pods = [(g, pod) for g, pod in zip(worker_groups(doc), pods) if float(pod.get("nvidia.com/gpu", 0)) > 0]
    assert gpu_pods, "no worker group asks for a GPU"
    # the pools fit: every actor on one pod, and the GPU pods can hold the pools at their largest
    assert all(p.cpus <= cpu(pods[0]["cpu"]) for p in pools(cfg)), (pools(cfg), pods[0])
    capacity = sum(g["maxReplicas"] * float(pod["nvidia.com/gpu"]) for g, pod in gpu_pods)
    assert math.ceil(gpus_needed(pools(cfg))) <= capacity, (pools(cfg), capacity)
    if isinstance(cfg, ServeConfig) and cfg.auth.api_key_env:
        assert cfg.auth.api_key_env in run.env, "the API key variable is not set on the worker pods"


def test_config_checks_catch_the_demo_configs(monkeypatch):
    demos = [(ScoreConfig, "score"), (ServeConfig, "serve"), (GRMPTrainConfig, "train-grmp"),
             (PromptIQATrainConfig, "train-promptiqa"), (StudyConfig, "study")]
    problems = "\n".join(p for cls, name in demos for p in config_problems(load_config(cls, REPO / "configs" / f"{name}.yaml")))
    for expected in ("tiny model 'tiny'", "pool score[0] asks for no GPU", "output.uri is not on object storage",
                     "storage_path is not on object storage", "pool train asks for no GPU", "pool stage[0] asks for no GPU"):
        assert expected in problems
    monkeypatch.setenv("RAYIQA_BUCKET", "my-bucket")
    open_serve = load_config(ServeConfig, REPO / "configs" / "serve-gpu.yaml", ["auth.api_key_env=null"])
    assert "serves on 0.0.0.0 without auth.api_key_env" in config_problems(open_serve)


def test_a_config_variable_the_manifest_does_not_set_fails(monkeypatch):
    doc = load(CLUSTER / "kuberay" / "rayjob-finetune-grmp.yaml")
    run = manifest_run(doc)
    env = {k: v for k, v in run.env.items() if k != "RAYIQA_GRMP_PRETRAINED"}
    monkeypatch.delenv("RAYIQA_GRMP_PRETRAINED", raising=False)
    with pytest.raises(Exception, match="finetune.init_checkpoint: environment variable RAYIQA_GRMP_PRETRAINED"):
        Run(run.job, run.config, run.overrides, env).load(monkeypatch)


def test_rayservice_imports_the_app_builder_and_keeps_its_route(monkeypatch):
    doc = load(CLUSTER / "kuberay" / "rayservice.yaml")
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    cfg = manifest_run(doc).load(monkeypatch)
    assert app["route_prefix"] == cfg.http.route_prefix
    secret = [e for g in worker_groups(doc) for e in g["template"]["spec"]["containers"][0]["env"] if e["name"] == cfg.auth.api_key_env]
    assert secret and all(not e["valueFrom"]["secretKeyRef"].get("optional", False) for e in secret)  # no key, no replica


# ---- pods that fit their nodes -------------------------------------------------------------------


def test_node_type_table_follows_its_formula():
    for name, t in NODES["types"].items():
        reserved = [0.06, 0.01, 0.005, 0.005] + [0.0025] * (t["vcpu"] - 4)
        assert t["cpu"] == pytest.approx(t["vcpu"] - sum(reserved), abs=0.005), name
        memory = t["memory_gib"] * 0.975 - (255 + 11 * t["max_pods"]) / 1024 - 100 / 1024
        assert t["allocatable_memory_gib"] == math.floor(memory * 2) / 2, name


def pod_groups(doc: dict) -> list[tuple[str, dict]]:
    cluster = cluster_spec(doc)
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in worker_groups(doc)]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_pods_fit_the_node_type_they_name(path):
    for name, group in pod_groups(load(path)):
        spec = group["template"]["spec"]
        node = NODES["types"][spec["nodeSelector"]["node.kubernetes.io/instance-type"]]
        (container,) = spec["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert requests == limits, (path.name, name)  # Guaranteed QoS: what Ray is told is what it gets
        assert cpu(requests["cpu"]) <= node["cpu"] - NODES["headroom"]["cpu"], (path.name, name)
        assert gib(requests["memory"]) <= node["allocatable_memory_gib"] - NODES["headroom"]["memory_gib"], (path.name, name)
        assert float(requests.get("nvidia.com/gpu", 0)) <= node["gpu"], (path.name, name)
        shm = [v for v in spec.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
        store = int(group["rayStartParams"].get("object-store-memory", 0))
        assert all(gib(v["emptyDir"]["sizeLimit"]) * 2**30 >= store for v in shm), (path.name, name)


def test_launcher_node_types_are_in_the_table_and_hold_the_readme_jobs(monkeypatch):
    raw = load(CLUSTER / "gpu-cluster.yaml")
    types = {name: NODES["types"][t["node_config"]["InstanceType"]] for name, t in raw["available_node_types"].items()}
    workers = {name: t for name, t in types.items() if name != raw["head_node_type"]}
    gpus = sum(raw["available_node_types"][name]["max_workers"] * t["gpu"] for name, t in workers.items())
    runs = launcher_runs()
    assert {r.job for r in runs} >= {"jobs/score.py", "jobs/train_promptiqa.py", "jobs/train_grmp.py",
                                     "jobs/finetune_grmp.py", "jobs/deploy_serve.py"}
    for run in runs:
        if run.job == "jobs/study.py":
            continue  # the study ships no GPU config
        cfg = run.load(monkeypatch)
        assert config_problems(cfg) == [], run
        assert math.ceil(gpus_needed(pools(cfg))) <= gpus, run
        assert all(p.cpus <= min(t["vcpu"] for t in workers.values()) for p in pools(cfg)), run


def test_readme_commands_name_files_that_exist():
    text = (CLUSTER / "README.md").read_text()
    named = set(re.findall(r"\b((?:cluster|configs|jobs)/[\w./-]+\.(?:ya?ml|py|sh))", text))
    assert {"cluster/gpu-cluster.yaml", "cluster/kuberay/rayservice.yaml", "jobs/score.py", "cluster/node-types.yaml"} <= named
    missing = sorted(p for p in named if not (REPO / p).is_file())
    assert not missing, missing
