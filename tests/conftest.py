"""Shared fixtures: one real local Ray for the tests that need a cluster."""
import os
from pathlib import Path

import pytest

TESTS_DIR = str(Path(__file__).parent)

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray shared by the session's Ray tests: 4 logical CPUs on CI's 2 cores, enough for the
    scoring job's actor pools plus Ray Data's checkpoint-filter actor (1 CPU) when it resumes."""
    import ray

    if not ray.is_initialized():
        # Workers can import test helper modules (stand-ins passed into pipelines) from tests/.
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])),
               # Ray Train's preemption watcher (one more actor per worker group) watches nodes for spot
               # preemption notices; a one-node local Ray has none to watch
               "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
               # Ray Train's controller polls its workers every 2 s; the tests' runs last seconds, so poll
               # at 0.5 s to notice a finished or killed worker group sooner
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: on 2 shared cores, threads make tiny nets slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The bundled pristine photos shrunk to 48x48, so synthetic sets made from them are quick."""
    from PIL import Image

    from rayiqa.io.samples import samples_dir

    folder = tmp_path_factory.mktemp("pristine")
    for png in sorted(samples_dir().glob("*.png")):
        with Image.open(png) as im:
            im.convert("RGB").resize((48, 48)).save(folder / png.name)
    return folder
