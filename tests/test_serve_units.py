"""The serving layer's pure parts, without Ray: config validation, deployment options, input checks,
start-up refusals, which addresses a fetch may reach."""
from __future__ import annotations

import asyncio
import base64
import io
import logging

import numpy as np
import pytest
from fastapi import HTTPException
from PIL import Image

from rayiqa.config import ConfigError, load_config
from rayiqa.config.serve import DeploymentConfig, FetchConfig, LimitsConfig, ServeConfig
from rayiqa.methods.llm_tta import to_batch_tensor
from rayiqa.serve.app import check_exposure, decode_b64, to_image
from rayiqa.serve.fetch import checked_address, is_public
from rayiqa.serve.metrics import status_class


def test_shipped_config_loads_with_two_models():
    cfg = load_config(ServeConfig, "configs/serve.yaml")
    assert {name: m.kind for name, m in cfg.models.items()} == {"llm-iqa": "llm-iqa", "tta-tiny-cnn": "tta"}
    assert cfg.models["llm-iqa"].deployment.max_replicas == 2


def test_deployment_options_map_onto_serve_keywords():
    opts = DeploymentConfig(min_replicas=1, max_replicas=3, num_cpus=0.25, num_gpus=0.5, max_ongoing_requests=5,
                            health_check_period_s=1.5).serve_options()
    assert (opts["max_ongoing_requests"], opts["health_check_period_s"]) == (5, 1.5)
    assert opts["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.5}
    assert (opts["autoscaling_config"]["min_replicas"], opts["autoscaling_config"]["max_replicas"]) == (1, 3)
    assert DeploymentConfig(min_replicas=0).serve_options()["autoscaling_config"]["initial_replicas"] == 1


@pytest.mark.parametrize(
    "override, words",
    [
        ("models.llm-iqa.deployment.min_replicas=3", "max_replicas (2) < min_replicas (3)"),
        ("models.x={kind: nope}", "models.x"),
        ("models.llm-iqa.bogus=1", "models.llm-iqa.llm-iqa.bogus: unknown key"),
        ("limits.max_images=0", "limits.max_images"),
    ],
)
def test_bad_serve_configs_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(ServeConfig, "configs/serve.yaml", [override])
    assert words in str(err.value)


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_checks_map_to_client_errors():
    limits = LimitsConfig(max_bytes=10_000, max_pixels=100 * 100)
    assert to_image(png(100, 100), 0, limits)[0, 0].tolist() == [10, 20, 30]
    cases = [
        (lambda: to_image(png(101, 100), 2, limits), 413, "image 2: too_large"),
        (lambda: to_image(b"hello", 1, limits), 415, "image 1: not_an_image"),
        (lambda: to_image(b"", 0, limits), 415, "empty"),
        (lambda: to_image(b"\0" * 10_001, 0, limits), 413, "max_bytes"),
        (lambda: decode_b64("@@@", 3, limits), 400, "image 3: invalid base64"),
        (lambda: decode_b64("A" * 20_000, 0, limits), 413, "max_bytes"),
    ]
    for call, status, words in cases:
        with pytest.raises(HTTPException) as err:
            call()
        assert err.value.status_code == status and words in err.value.detail
    assert decode_b64(base64.b64encode(b"abc").decode(), 0, limits) == b"abc"


def test_status_classes():
    assert [status_class(c) for c in (200, 404, 413, 500)] == ["2xx", "4xx", "4xx", "5xx"]


def test_tta_batches_are_resized_floats_in_unit_range():
    images = [np.full((10, 20, 3), 255, np.uint8), np.zeros((30, 15, 3), np.uint8)]
    x = to_batch_tensor(images, 8)
    assert tuple(x.shape) == (2, 3, 8, 8)
    assert float(x[0].min()) == pytest.approx(1.0) and float(x[1].max()) == 0.0


def test_serve_is_closed_by_default_and_refuses_an_open_interface_without_a_key(monkeypatch, caplog):
    default = load_config(ServeConfig, "configs/serve.yaml")
    assert default.http.host == "127.0.0.1" and default.auth.api_key_env is None
    check_exposure(default)  # loopback, no key: fine
    with pytest.raises(ConfigError, match=r"http.host='0.0.0.0' serves other machines, but auth.api_key_env is null"):
        check_exposure(load_config(ServeConfig, "configs/serve.yaml", ["http.host=0.0.0.0"]))
    check_exposure(load_config(ServeConfig, "configs/serve.yaml", ["http.host=0.0.0.0", "auth.api_key_env=K"]))
    with caplog.at_level(logging.WARNING, logger="rayiqa.serve.app"):
        check_exposure(load_config(ServeConfig, "configs/serve.yaml", ["http.host=0.0.0.0", "auth.open=true"]))
    assert "WITHOUT an API key" in caplog.text


@pytest.mark.parametrize("overrides, words", [
    (["http.host=0.0.0.0"], "config error: http.host='0.0.0.0' serves other machines"),
    (["auth.api_key_env=RAYIQA_UNSET_KEY_VAR"],
     "config error: auth.api_key_env='RAYIQA_UNSET_KEY_VAR': that environment variable is unset or empty"),
])
def test_serve_start_up_errors_are_one_line_before_ray(overrides, words, monkeypatch, capsys):
    from rayiqa import cli
    from rayiqa import runtime

    monkeypatch.delenv("RAYIQA_UNSET_KEY_VAR", raising=False)
    monkeypatch.setattr(runtime, "ensure_ray", lambda *a, **k: pytest.fail("Ray started for a refused config"))
    assert cli.main(["serve", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err == words or (err.startswith(words) and len(err.splitlines()) <= 2), err


@pytest.mark.parametrize("address, public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False), ("fe80::1", False),
    ("fd00:ec2::254", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False),
    ("93.184.216.34", True), ("2606:4700:4700::1111", True),
])
def test_only_global_addresses_are_public(address, public):
    assert is_public(address) is public


def test_fetch_targets_are_checked_after_resolution():
    def check(url: str, fetch: FetchConfig = FetchConfig()) -> str:
        return asyncio.run(checked_address(url, 0, fetch))

    for url in ["http://localhost:8000/healthz", "http://127.0.0.1/", "http://169.254.169.254/latest/", "http://[::1]:80/"]:
        with pytest.raises(HTTPException) as err:
            check(url)
        assert err.value.status_code == 400 and "non-public address" in err.value.detail
    assert check("http://93.184.216.34/a.png") == "93.184.216.34"  # a literal public address resolves offline
    # an allowlist admits its hosts, internal ones included, and nothing else
    allow = FetchConfig(allow_hosts=["localhost"])
    assert check("http://localhost:9/a.png", allow) in ("127.0.0.1", "::1")
    with pytest.raises(HTTPException, match="not in fetch.allow_hosts"):
        check("http://93.184.216.34/a.png", allow)
    with pytest.raises(HTTPException, match="uri must be"):
        check("ftp://93.184.216.34/a.png")
