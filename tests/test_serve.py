"""The Serve endpoint, deployed on the session's local Ray and called over HTTP on 127.0.0.1 with httpx."""
from __future__ import annotations

import asyncio
import base64
import functools
import http.client
import http.server
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from rayiqa.config import LLMIQAConfig, MLLMConfig, load_config
from rayiqa.config.serve import ServeConfig
from rayiqa.io.samples import samples_dir

KEY_ENV = "RAYIQA_TEST_API_KEY"
KEY = "s3cret-test-key"
LLM_DEPLOYMENT = "model-llm-iqa"
FETCH_TIMEOUT_S = 3.0  # limits.fetch_timeout_s of the test endpoint
STALL_S = 40.0  # how long the S3 proxy holds a request for a key under slow/
SLOW_ANSWERED = threading.Event()  # set once the stalling proxy has answered a request under slow/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(width: int, height: int, seed: int | None) -> bytes:
    """A PNG of random pixels (seed) or, with seed None, a flat grey one (a few hundred bytes)."""
    if seed is None:
        arr = np.full((height, width, 3), 128, dtype=np.uint8)
    else:
        arr = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> dict:
    return {"base64": base64.b64encode(data).decode()}


def serve_test_config(port: int, s3_endpoint: str, grmp_checkpoint: str) -> ServeConfig:
    overrides = [
        "app_name=rayiqa-test",
        "http.host=127.0.0.1",
        f"http.port={port}",
        "ingress.num_cpus=0.1",
        "limits.max_bytes=300000",
        "limits.max_pixels=1000000",
        "limits.max_images=8",
        f"limits.fetch_timeout_s={FETCH_TIMEOUT_S}",
        f"auth.api_key_env={KEY_ENV}",
        "fetch.allow_hosts=[127.0.0.1]",  # the test's image server (an internal host, so listed)
        f"storage={{endpoint_url: '{s3_endpoint}', region: us-east-1, key: testing, secret: testing}}",
        "models.llm-iqa.method.segmentation=false",
        "models.llm-iqa.deployment={min_replicas: 1, max_replicas: 2, target_ongoing_requests: 1, "
        "upscale_delay_s: 0.5, downscale_delay_s: 600, max_ongoing_requests: 4, num_cpus: 0.25, "
        "max_batch_size: 8, batch_wait_timeout_s: 0.01}",
        "models.tta-tiny-cnn={kind: tta, backbone: tiny-cnn, image_size: 64, iterations: 3, lr: 0.05, "
        "deployment: {num_cpus: 0.25, max_batch_size: 8, batch_wait_timeout_s: 0.2}}",
        f"models.grmp={{kind: grmp, checkpoint: '{grmp_checkpoint}', deployment: {{num_cpus: 0.2}}}}",
        "models.promptiqa={kind: promptiqa, deployment: {num_cpus: 0.2}}",
    ]
    return load_config(ServeConfig, "configs/serve.yaml", overrides)


class Files(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; /to-localhost/NAME redirects to the same server under the name `localhost`."""

    def do_GET(self) -> None:
        if self.path.startswith("/to-localhost/"):
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/{self.path.split('/', 2)[2]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    """A plain HTTP server for https?:// image URIs (serves a temp folder on 127.0.0.1)."""
    root = tmp_path_factory.mktemp("www")
    (root / "ok.png").write_bytes(png_bytes(40, 40, 7))
    handler = functools.partial(Files, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def stalling_proxy(upstream: str) -> http.server.ThreadingHTTPServer:
    """An HTTP proxy on 127.0.0.1 in front of `upstream` (moto) that holds any request for a key under
    slow/ for STALL_S seconds before answering 503: an S3 store that has stopped answering."""
    target = upstream.removeprefix("http://")

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if "/slow/" in self.path:
                time.sleep(STALL_S)
                SLOW_ANSWERED.set()
                status, headers, payload = 503, {}, b""
            else:
                conn = http.client.HTTPConnection(target, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                status, headers, payload = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
                conn.close()
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", headers.get("content-length", "0") if self.command == "HEAD" else str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server holding s3://imgs/ok.png (and slow/*.png, which the endpoint reaches only through
    the stalling proxy whose address it gets)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="imgs")
    client.put_object(Bucket="imgs", Key="ok.png", Body=png_bytes(40, 40, 7))
    client.put_object(Bucket="imgs", Key="slow/a.png", Body=png_bytes(40, 40, 7))
    proxy = stalling_proxy(endpoint)
    yield f"http://127.0.0.1:{proxy.server_address[1]}"
    proxy.shutdown()
    server.stop()


@pytest.fixture(scope="module")
def grmp_checkpoint(tmp_path_factory) -> str:
    """A tiny GRMP-IQA checkpoint folder as its trainer writes it (random-weight tiny CLIP)."""
    from rayiqa.config.grmp import GRMPModelConfig
    from rayiqa.train.grmp import build_model, save_model

    cfg = GRMPModelConfig(clip="tiny", seed=3)
    with pytest.warns(UserWarning, match="random weights"):
        model = build_model(cfg)
    directory = tmp_path_factory.mktemp("grmp-ckpt")
    save_model(model, cfg, directory)
    return str(directory)


@pytest.fixture(scope="module")
def endpoint(ray_local, s3, grmp_checkpoint, monkeypatch_module):
    """The app deployed with tiny models, auth on; yields (base URL, config)."""
    from ray import serve

    from rayiqa.serve.app import build_app

    monkeypatch_module.setenv(KEY_ENV, KEY)
    port = free_port()
    cfg = serve_test_config(port, s3, grmp_checkpoint)
    serve.shutdown()  # HTTP options are fixed when Serve starts: drop any Serve an earlier test module left up
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}", cfg
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture
def client(endpoint):
    base, _ = endpoint
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


def direct_global_score(image_bytes: bytes) -> float:
    """The whole-image LLM-IQA score computed in this process with the same tiny model."""
    from rayiqa.io.decode import decode_image
    from rayiqa.methods import llm_iqa
    from rayiqa.models.mllm import LevelRequest, create_engine

    method = LLMIQAConfig(segmentation=False)
    prompt = llm_iqa.standard_prompt(method.levels, method.standard)
    engine = create_engine(MLLMConfig(preset="tiny-iqa"))
    image = decode_image(image_bytes, 10**7).image
    probs = engine.level_probs([LevelRequest(prompt, [image])])
    return float(llm_iqa.level_score(probs, prompt.level_values())[0])


def test_health_docs_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    docs = client.get("/docs").text
    assert "swagger" in docs.lower() and "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    js = client.get("/docs-assets/swagger-ui-bundle.js")  # served by the endpoint itself: /docs works offline
    assert js.status_code == 200 and len(js.content) > 100_000
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert "ImageInput" in spec["components"]["schemas"]
    listing = client.get("/v1/models")
    assert listing.status_code == 200, listing.text
    models = {m["name"]: m for m in listing.json()["models"]}
    assert set(models) == {"llm-iqa", "tta-tiny-cnn", "grmp", "promptiqa"}
    assert models["promptiqa"]["requirements"] is True
    assert models["llm-iqa"]["kind"] == "llm-iqa" and models["llm-iqa"]["replicas"] == [1, 2]
    assert models["tta-tiny-cnn"]["kind"] == "tta" and models["tta-tiny-cnn"]["requirements"] is False


def test_llm_iqa_json_multipart_and_direct_agree(client):
    a, b = png_bytes(48, 40, 1), png_bytes(64, 64, 2)
    r = client.post("/v1/score", json={"model": "llm-iqa", "images": [b64(a), b64(b), b64(a)]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    ev = results[0]["evidence"]
    assert ev["model_ids"] == ["tiny-iqa"] and ev["weights"] == ["rayiqa-trained (synthetic)"]  # configs/serve.yaml's default
    assert (ev["width"], ev["height"]) == (48, 40)
    assert len(ev["global_probs"][0]) == 7 and sum(ev["global_probs"][0]) == pytest.approx(1.0)
    # the score is the expected level of the returned probabilities, and images keep their order
    assert results[0]["score"] == pytest.approx(float(np.dot(ev["global_probs"][0], np.arange(1, 8))))
    assert results[0]["score"] == pytest.approx(results[2]["score"], abs=1e-6)
    assert ev["crop_boxes"] == [] and ev["local_score"] is None  # segmentation off
    multipart = client.post("/v1/score", data={"model": "llm-iqa"}, files=[("image", ("a.png", a, "image/png"))])
    assert multipart.status_code == 200, multipart.text
    # alone, not padded beside a larger image: float32 sums in another order (measured 1.7e-6 apart)
    assert multipart.json()["results"][0]["score"] == pytest.approx(results[0]["score"], abs=1e-5)
    assert results[0]["score"] == pytest.approx(direct_global_score(a), abs=1e-4)


def test_the_shipped_model_scores_each_pristine_sample_above_its_distorted_copies(client):
    """configs/serve.yaml's default MLLM (tiny-iqa) at /v1/score, on photographs it never saw in training."""
    folder = samples_dir()
    for photo in ("astronaut", "coffee"):
        names = [f"{photo}.png", f"{photo}_gaussian_blur_2.jpg", f"{photo}_gaussian_noise_2.jpg", f"{photo}_jpeg_2.jpg"]
        images = [b64((folder / n).read_bytes()) for n in names]
        r = client.post("/v1/score", json={"model": "llm-iqa", "images": images})
        assert r.status_code == 200, r.text
        pristine, *distorted = [x["score"] for x in r.json()["results"]]
        assert all(pristine > d for d in distorted), (photo, pristine, distorted)


def test_grmp_plugs_in_by_name(client):
    r = client.post("/v1/score", data={"model": "grmp"}, files=[
        ("image", ("a.png", png_bytes(40, 30, 5), "image/png")), ("image", ("b.png", png_bytes(30, 40, 6), "image/png"))])
    assert r.status_code == 200, r.text
    for res in r.json()["results"]:
        ev = res["evidence"]  # p(high | x) is the softmax of the two scaled cosine logits (Eq. 2)
        assert res["score"] == pytest.approx(1 / (1 + np.exp(ev["logit_low"] - ev["logit_high"])), abs=1e-6)


def test_s3_and_http_uris(client, image_server):
    same = b64(png_bytes(40, 40, 7))
    r = client.post("/v1/score", json={"model": "llm-iqa", "images": [
        {"uri": "s3://imgs/ok.png"}, {"uri": f"{image_server}/ok.png"}, same]})
    assert r.status_code == 200, r.text
    scores = [res["score"] for res in r.json()["results"]]
    assert scores[0] == pytest.approx(scores[2], abs=1e-6) and scores[1] == pytest.approx(scores[2], abs=1e-6)


def test_internal_addresses_are_not_fetched(client, image_server, endpoint):
    """Hosts outside fetch.allow_hosts are refused before any connection, redirects included; nothing the
    server fetched is echoed back."""
    base, _ = endpoint
    port = base.rsplit(":", 1)[1]
    for uri, words in [
        (f"http://localhost:{port}/healthz", "not in fetch.allow_hosts"),  # the endpoint's own health check
        ("http://169.254.169.254/latest/meta-data/", "not in fetch.allow_hosts"),  # cloud metadata
        (f"{image_server}/to-localhost/ok.png", "'localhost' is not in fetch.allow_hosts"),  # a redirect, re-checked
        ("file:///etc/passwd", "uri must be"),
    ]:
        r = client.post("/v1/score", json={"model": "llm-iqa", "images": [{"uri": uri}]})
        assert r.status_code == 400 and words in r.json()["detail"], (uri, r.text)
    own = client.post("/v1/score", json={"model": "llm-iqa", "images": [{"uri": f"{image_server}/healthz-ish"}]})
    assert own.status_code == 400 and "answered 404" in own.json()["detail"]
    text = client.post("/v1/score", json={"model": "llm-iqa", "images": [{"uri": f"{image_server}/"}]})  # an HTML listing
    assert text.status_code == 415 and "html" not in text.text.lower()


def test_slow_s3_fetches_time_out_and_do_not_stall_other_requests(endpoint):
    """Eight requests for objects behind a store that stopped answering end in 504 after
    limits.fetch_timeout_s; an ordinary request sent while they wait is answered long before they would."""
    base, _ = endpoint
    headers = {"X-API-Key": KEY}

    def post(body: dict) -> tuple[int, str, bool]:
        """Status, text, and whether the store had answered a stalled request by then."""
        r = httpx.post(f"{base}/v1/score", json=body, headers=headers, timeout=STALL_S * 3)
        return r.status_code, r.text, SLOW_ANSWERED.is_set()

    slow = {"model": "llm-iqa", "images": [{"uri": "s3://imgs/slow/a.png"}]}
    normal = {"model": "llm-iqa", "images": [b64(png_bytes(24, 24, 3))]}
    SLOW_ANSWERED.clear()
    with ThreadPoolExecutor(9) as pool:
        stalled = [pool.submit(post, slow) for _ in range(8)]
        time.sleep(0.5)
        ordinary = pool.submit(post, normal).result(timeout=STALL_S * 3)
        slow_results = [f.result(timeout=STALL_S * 3) for f in stalled]
    assert ordinary[0] == 200, ordinary
    assert not ordinary[2]  # answered before the stalled store answered anything: it did not wait behind it
    for code, text, store_answered in slow_results:
        assert code == 504 and "limits.fetch_timeout_s" in text, text
        assert not store_answered  # ended by the fetch timeout, before the store ever answered


def test_chunked_body_over_the_limit_is_cut_while_read(endpoint):
    """A body sent without Content-Length (chunked) is refused once it passes the limits, not after."""
    base, cfg = endpoint
    limits = cfg.limits
    allowed = limits.max_images * (limits.max_bytes * 4 // 3 + 4) + (1 << 20)
    sent = 0

    def chunks():
        nonlocal sent
        yield b'{"model": "llm-iqa", "images": [{"base64": "'
        while sent < 3 * allowed:
            sent += 1 << 16
            yield b"A" * (1 << 16)
        yield b'"}]}'

    try:
        r = httpx.post(f"{base}/v1/score", content=chunks(), timeout=120,
                       headers={"X-API-Key": KEY, "content-type": "application/json"})
        assert r.status_code == 413 and "allowed by the limits" in r.json()["detail"], r.text
    except httpx.TransportError:  # the server may close the connection while the client still sends
        pass
    assert httpx.get(f"{base}/healthz", timeout=60).status_code == 200


def test_api_key_is_in_no_ray_log(endpoint, client):
    """The key reaches the ingress as a salted hash: no file of the session's log folder contains it."""
    import ray

    assert client.post("/v1/score", json={"model": "llm-iqa", "images": [b64(png_bytes(16, 16, 1))]}).status_code == 200
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files
    assert [str(p) for p in files if KEY.encode() in p.read_bytes()] == []


def test_tta_adapts_batches_and_restores_the_source_model(client):
    images = [png_bytes(32 + 4 * i, 32, 10 + i) for i in range(8)]
    first = client.post("/v1/score", json={"model": "tta-tiny-cnn", "adapt": False, "images": [b64(images[0])]})
    assert first.status_code == 200, first.text
    base_before = first.json()["results"][0]
    assert base_before["evidence"]["adapted"] is False and base_before["score"] == base_before["evidence"]["base_score"]

    r = client.post("/v1/score", json={"model": "tta-tiny-cnn", "images": [b64(im) for im in images]})
    assert r.status_code == 200, r.text
    ev = [res["evidence"] for res in r.json()["results"]]
    assert all(e["adapted"] and e["batch_size"] == 8 for e in ev)
    p_good = np.array([e["p_good"] for e in ev])
    assert np.all((p_good > 0) & (p_good < 1))
    high = {i for i, e in enumerate(ev) if e["cluster"] == "high"}
    low = {i for i, e in enumerate(ev) if e["cluster"] == "low"}
    order = np.argsort(-p_good, kind="stable")
    assert high == set(order[:2].tolist()) and low == set(order[-2:].tolist())
    assert any(abs(e["adapted_score"] - e["base_score"]) > 1e-7 for e in ev)
    assert r.json()["results"][0]["score"] == ev[0]["adapted_score"]

    again = client.post("/v1/score", json={"model": "tta-tiny-cnn", "adapt": False, "images": [b64(images[0])]})
    assert again.json()["results"][0]["score"] == pytest.approx(base_before["score"], abs=1e-9)


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"json": {"model": "llm-iqa", "images": [{"base64": "***not base64***"}]}}, 400, "invalid base64"),
        ({"json": {"model": "llm-iqa", "images": [b64(b"just some text, no image")]}}, 415, "not_an_image"),
        ({"json": {"model": "nope", "images": [b64(b"x")]}}, 404, "unknown model"),
        ({"json": {"model": "llm-iqa", "images": [b64(b"x")] * 9}}, 413, "max_images"),
        ({"json": {"model": "llm-iqa", "images": [b64(b"\0" * 300_001)]}}, 413, "max_bytes"),
        ({"json": {"model": "llm-iqa", "images": [b64(png_bytes(1001, 1000, None))]}}, 413, "too_large"),
        ({"json": {"model": "llm-iqa", "images": [{"uri": "/etc/passwd"}]}}, 400, "uri must be"),
        ({"json": {"model": "llm-iqa", "images": [{"uri": "s3://imgs/missing.png"}]}}, 400, "read_error"),
        ({"json": {"model": "llm-iqa", "images": [{"uri": "http://10.0.0.1/a.png"}]}}, 400, "fetch.allow_hosts"),
        ({"json": {"model": "llm-iqa", "images": [{"base64": "AA==", "uri": "s3://imgs/ok.png"}]}}, 422, "exactly one"),
        ({"json": {"images": [b64(b"x")]}}, 422, "model"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "invalid ScoreRequest"),
        ({"content": b"raw", "headers": {"content-type": "text/plain"}}, 415, "content-type"),
        ({"data": {"model": "llm-iqa"}, "files": [("other", ("a.txt", b"x", "text/plain"))]}, 422, "'image'"),
        ({"data": {}, "files": [("image", ("a.png", png_bytes(8, 8, 0), "image/png"))]}, 422, "model"),
    ],
)
def test_bad_score_requests_get_4xx_and_the_app_stays_healthy(client, kwargs, status, words):
    r = client.post("/v1/score", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_promptiqa_requirements_register_list_and_score(client):
    ispp = [b64(png_bytes(32, 32, 20 + i)) for i in range(3)]
    r = client.post("/v1/requirements", json={"model": "promptiqa", "name": "sharp", "images": ispp, "scores": [0.2, 0.5, 0.9]})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"name": "sharp", "k": 3}
    assert "sharp" in client.get("/v1/requirements", params={"model": "promptiqa"}).json()["requirements"]
    image = b64(png_bytes(40, 40, 30))
    scored = client.post("/v1/score", json={"model": "promptiqa", "requirement": "sharp", "images": [image, image]})
    assert scored.status_code == 200, scored.text
    results = scored.json()["results"]
    assert all(res["evidence"] == {"requirement": "sharp", "ispp_size": 3} for res in results)
    assert results[0]["score"] == pytest.approx(results[1]["score"], abs=1e-6)
    unknown = client.post("/v1/score", json={"model": "promptiqa", "requirement": "never", "images": [image]})
    assert unknown.status_code == 404 and "unknown requirement" in unknown.json()["detail"]
    mismatch = client.post("/v1/requirements", json={"model": "promptiqa", "name": "x", "images": ispp, "scores": [1.0]})
    assert mismatch.status_code == 422 and "3 images but 1 scores" in mismatch.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_requirements_need_a_promptiqa_model(client):
    r = client.post("/v1/requirements", json={"model": "llm-iqa", "name": "x", "images": [b64(b"x")], "scores": [1]})
    assert r.status_code == 400 and "takes no requirements" in r.json()["detail"]
    assert client.get("/v1/requirements", params={"model": "nope"}).status_code == 404


def test_api_key_is_required(endpoint):
    base, _ = endpoint
    body = {"model": "llm-iqa", "images": [b64(png_bytes(16, 16, 0))]}
    assert httpx.post(f"{base}/v1/score", json=body, timeout=60).status_code == 401
    wrong = httpx.post(f"{base}/v1/score", json=body, headers={"X-API-Key": "wrong"}, timeout=60)
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    assert httpx.get(f"{base}/v1/models", timeout=60).status_code == 401
    assert httpx.get(f"{base}/healthz", timeout=60).status_code == 200  # probes need no key
    assert httpx.post(f"{base}/v1/score", json=body, headers={"X-API-Key": KEY}, timeout=60).status_code == 200


def running_replicas(app_name: str, deployment: str) -> int:
    from ray import serve

    states = serve.status().applications[app_name].deployments[deployment].replica_states
    return int(states.get("RUNNING", 0))


def test_concurrent_load_has_no_5xx_and_scales_up(endpoint):
    base, cfg = endpoint
    assert running_replicas(cfg.app_name, LLM_DEPLOYMENT) == 1
    bodies = [{"model": "llm-iqa", "images": [b64(png_bytes(24, 24, i))]} for i in range(20)]
    seen_replicas: list[int] = []

    async def load() -> list[int]:
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}, timeout=300) as c:
            async def one(i: int) -> int:
                async with sem:
                    return (await c.post("/v1/score", json=bodies[i % len(bodies)])).status_code

            async def watch() -> None:
                while True:
                    seen_replicas.append(running_replicas(cfg.app_name, LLM_DEPLOYMENT))
                    await asyncio.sleep(0.5)

            watcher = asyncio.create_task(watch())
            codes: list[int] = []
            deadline = time.monotonic() + 90  # waves of 100 until a second replica runs: one wave can end
            try:                              # before the autoscaler's metrics have seen it
                while not codes or (max(seen_replicas) < 2 and time.monotonic() < deadline):
                    codes += await asyncio.gather(*(one(i) for i in range(100)))
                return codes
            finally:
                watcher.cancel()

    codes = asyncio.run(load())
    assert len(codes) >= 100 and set(codes) == {200}
    deadline = time.monotonic() + 90  # a replica that started under load may still be loading its model
    while max(seen_replicas) < 2 and time.monotonic() < deadline:
        seen_replicas.append(running_replicas(cfg.app_name, LLM_DEPLOYMENT))
        time.sleep(1)
    assert max(seen_replicas) == 2


def test_prometheus_metrics_count_requests_and_errors_per_model(endpoint):
    """The ingress's counters reach the node's Prometheus endpoint with model and status tags."""
    import ray

    base, _ = endpoint
    headers = {"X-API-Key": KEY}
    for i in range(3):
        good = httpx.post(f"{base}/v1/score", json={"model": "llm-iqa", "images": [b64(png_bytes(16, 16, i))]},
                          headers=headers, timeout=60)
        assert good.status_code == 200
    httpx.post(f"{base}/v1/score", json={"model": "no-such-model", "images": [b64(b"x")]}, headers=headers, timeout=60)
    for i in range(3):  # unknown paths collapse into one series
        assert httpx.get(f"{base}/no/such/path-{i}", timeout=60).status_code == 404
    port = ray._private.worker.global_worker.node.metrics_export_port

    def ours(lines: list[str]) -> list[str]:
        return [ln for ln in lines if ln.startswith("ray_rayiqa_requests")]

    checks = {  # each series is exported on its own schedule: poll until all are there
        "llm-iqa 2xx >= 3": lambda lines: sum(float(ln.rsplit(" ", 1)[1]) for ln in ours(lines)
                                              if 'model="llm-iqa"' in ln and 'status="2xx"' in ln) >= 3,
        "unknown model 404": lambda lines: any(ln.startswith("ray_rayiqa_errors") and 'model="unknown"' in ln
                                               and 'code="404"' in ln for ln in lines),
        "latency histogram": lambda lines: any(ln.startswith("ray_rayiqa_request_latency_ms_bucket")
                                               and 'model="llm-iqa"' in ln for ln in lines),
        "route template label": lambda lines: any('endpoint="/v1/score"' in ln for ln in ours(lines)),
        "unmatched label": lambda lines: any('endpoint="unmatched"' in ln for ln in ours(lines)),
    }
    deadline = time.monotonic() + 120
    while True:
        lines = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text.splitlines()
        missing = [name for name, check in checks.items() if not check(lines)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, missing
    assert not any("path-" in ln for ln in ours(lines))  # unknown paths collapse into one series
