"""The HTTP endpoint: one FastAPI ingress on Ray Serve in front of one deployment per configured model.

Routes: `POST /v1/score` (multipart files, or JSON with base64 / s3:// / https:// images),
`POST|GET /v1/requirements` (PromptIQA), `GET /v1/models`, `GET /healthz`; OpenAPI at `/docs`.
Client mistakes get a 4xx with a `detail` message (400 bad base64 / URI or an internal address,
401 auth, 404 unknown model or requirement, 413 over a limit, 415 not an image, 422 malformed
request); a request whose model replica dies under it, or whose s3:// store is down, gets a 503
with Retry-After, and a remote image not fetched within limits.fetch_timeout_s a 504. Remote
fetches follow `rayiqa.serve.fetch`. The ingress decodes every image with
`rayiqa.io.decode.decode_image` before any model sees it.
"""

import asyncio
import base64
import binascii
import hashlib
import importlib
import ipaddress
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError, model_validator
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from rayiqa.config import ConfigError, load_config
from rayiqa.config.serve import LimitsConfig, ServeConfig
from rayiqa.io.decode import decode_image
from rayiqa.io.errors import ERROR_KINDS
from rayiqa.serve import fetch as remote
from rayiqa.serve.base import ScorerDeployment, UnknownRequirement
from rayiqa.serve.metrics import EndpointMetrics

log = logging.getLogger(__name__)

# Models with their own request API (PromptIQA's requirements), imported on demand; every other kind is
# a registered scorer behind ScorerDeployment (a request's options are its scorer's call options).
DEPLOYMENTS: dict[str, str] = {"promptiqa": "rayiqa.serve.promptiqa:PromptIQADeployment"}
REQUIREMENT_KINDS = frozenset({"promptiqa"})
DECODE_STATUS = {"too_large": 413, "too_many_bytes": 413}  # other decode failures: 415
FORM_OVERHEAD_BYTES = 1 << 20  # allowance for multipart/JSON framing in the Content-Length check
RETRY_AFTER_S = 1  # Retry-After of a 503 for a request whose model replica died (another one takes it)
FETCH_THREADS = 16  # per ingress replica: s3:// reads wait here, never in the threads that decode images
DOCS_ASSETS = "/docs-assets"  # Swagger UI's files, served from the swagger-ui-bundle package (no CDN)


class ImageInput(BaseModel):
    """One image: exactly one of base64 bytes or an s3:// / https:// URI."""

    base64: str | None = None
    uri: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "ImageInput":
        if (self.base64 is None) == (self.uri is None):
            raise ValueError("give exactly one of 'base64' or 'uri'")
        return self


class ScoreOptions(BaseModel):
    """What a score request asks besides its images (the multipart form's text fields)."""

    model: str = Field(description="a name from GET /v1/models")
    requirement: str | None = Field(default=None, description="PromptIQA: a registered requirement name")
    adapt: bool | None = Field(default=None, description="llm-tta models: false for source-model scores")


class ScoreRequest(ScoreOptions):
    images: list[ImageInput] = Field(min_length=1)


class RequirementRequest(BaseModel):
    model: str = "promptiqa"
    name: str = Field(min_length=1)
    images: list[ImageInput] = Field(min_length=1)
    scores: list[float] = Field(min_length=1)


def client_error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def validate(model: type[BaseModel], data: bytes | dict) -> Any:
    """A JSON body or form fields -> `model`; a malformed one is a 422 naming the fields at fault."""
    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise client_error(422, f"invalid {model.__name__}: {problems}") from None


def decode_b64(text: str, index: int, limits: LimitsConfig) -> bytes:
    """Strict base64 -> bytes, refusing more than max_bytes before decoding."""
    if len(text) * 3 // 4 > limits.max_bytes + 3:
        raise client_error(413, f"image {index}: more than max_bytes {limits.max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise client_error(400, f"image {index}: invalid base64 ({e})") from None


def to_image(data: bytes, index: int, limits: LimitsConfig) -> np.ndarray:
    """Bytes -> RGB uint8 with the ingress's limits; a bad image is a 413/415 naming the image."""
    if len(data) > limits.max_bytes:
        raise client_error(413, f"image {index}: {len(data)} bytes > max_bytes {limits.max_bytes}")
    res = decode_image(data, limits.max_pixels)
    if not res.ok:  # no bytes echoed back: an image may have been fetched from anywhere the server reaches
        reason = ERROR_KINDS["not_an_image"] if res.error_kind == "not_an_image" else res.error
        raise client_error(DECODE_STATUS.get(res.error_kind, 415), f"image {index}: {res.error_kind}: {reason}")
    return res.image


class Ingress:
    """Routes requests to the model deployments' handles; holds no model itself."""

    def __init__(self, cfg: ServeConfig, handles: dict[str, DeploymentHandle], key_digest: tuple[str, str] | None = None) -> None:
        self.cfg = cfg
        self.handles = handles
        self.key_digest = key_digest  # (salt, sha256(salt + key)) in hex: the key itself never leaves the driver
        self.fetch_pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")

    def check_key(self, request: Request) -> None:
        """401 unless the request carries the API key (`Authorization: Bearer KEY` or `X-API-Key`)."""
        if self.key_digest is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        salt, digest = self.key_digest
        if not secrets.compare_digest(key_digest(given, salt)[1], digest):
            raise client_error(401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key')")

    def handle_for(self, request: Request, model: str, needs_requirements: bool = False) -> DeploymentHandle:
        request.state.model = model if model in self.handles else "unknown"
        if model not in self.handles:
            raise client_error(404, f"unknown model {model!r}; available: {sorted(self.handles)}")
        if needs_requirements and self.cfg.models[model].kind not in REQUIREMENT_KINDS:
            raise client_error(400, f"model {model!r} ({self.cfg.models[model].kind}) takes no requirements")
        return self.handles[model]

    def limited(self, request: Request) -> Request:
        """The request with its body bounded by the limits: a declared Content-Length over them is a 413
        at once, and any body (chunked or not) is cut with a 413 as soon as it is read past them."""
        limits = self.cfg.limits
        allowed = limits.max_images * (limits.max_bytes * 4 // 3 + 4) + FORM_OVERHEAD_BYTES
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > allowed:
            raise client_error(413, f"request body of {length} bytes > {allowed} allowed by the limits")
        received = 0

        async def receive() -> dict[str, Any]:
            nonlocal received
            message = await request.receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > allowed:
                    raise client_error(413, f"request body larger than the {allowed} bytes allowed by the limits")
            return message

        return Request(request.scope, receive)

    async def fetch(self, image: ImageInput, index: int) -> bytes:
        """The bytes of one JSON image: base64, an s3:// object or an http(s) URL (never a server path);
        a remote fetch is bounded by limits.fetch_timeout_s (504 past it)."""
        if image.base64 is not None:
            return decode_b64(image.base64, index, self.cfg.limits)
        uri = image.uri
        scheme = uri.partition("://")[0].lower() if "://" in uri else ""
        timeout = self.cfg.limits.fetch_timeout_s
        if scheme in ("s3", "s3a"):
            remote.check_bucket(uri, index, self.cfg.fetch)
            pending = asyncio.get_running_loop().run_in_executor(self.fetch_pool, self.read_s3, uri, index)
        elif scheme in ("http", "https"):
            pending = remote.read_http(uri, index, self.cfg.limits, self.cfg.fetch)
        else:
            raise client_error(400, f"image {index}: uri must be s3:// or http(s)://, got {uri!r}")
        try:
            return await asyncio.wait_for(pending, timeout)
        except asyncio.TimeoutError:
            raise client_error(504, f"image {index}: {uri} was not fetched within limits.fetch_timeout_s={timeout}") from None

    def read_s3(self, uri: str, index: int) -> bytes:
        """One s3:// object, size-checked before download. Through s3fs, not pyarrow: pyarrow's S3 calls
        share a small I/O pool, so a few stalled requests would hold up every other fetch."""
        from rayiqa.io.errors import is_permanent
        from rayiqa.io.fs import resolve_fsspec

        try:
            fs, path = resolve_fsspec(uri, self.cfg.storage, timeout_s=self.cfg.limits.fetch_timeout_s)
        except ValueError as e:
            raise client_error(400, f"image {index}: {e}") from None
        try:
            size = fs.size(path)
            if size > self.cfg.limits.max_bytes:
                raise client_error(413, f"image {index}: too_many_bytes: {uri}: {size} bytes > max_bytes {self.cfg.limits.max_bytes}")
            return fs.cat_file(path)
        except HTTPException:
            raise
        except Exception as e:  # s3fs: FileNotFoundError / PermissionError, or botocore's connection errors
            if is_permanent(e):
                raise client_error(400, f"image {index}: read_error: {uri}: {type(e).__name__}") from None
            raise HTTPException(503, f"image {index}: the store of {uri} is unavailable; retry",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    async def json_images(self, images: list[ImageInput]) -> list[np.ndarray]:
        if len(images) > self.cfg.limits.max_images:
            raise client_error(413, f"{len(images)} images > max_images {self.cfg.limits.max_images}")
        blobs = await asyncio.gather(*(self.fetch(im, i) for i, im in enumerate(images)))
        return await self.decode_all(blobs)

    async def decode_all(self, blobs: list[bytes]) -> list[np.ndarray]:
        """Decode off the event loop, so one large image does not stall the replica's other requests."""
        return await asyncio.to_thread(lambda: [to_image(b, i, self.cfg.limits) for i, b in enumerate(blobs)])

    async def form_request(self, request: Request) -> tuple[ScoreOptions, list[np.ndarray]]:
        """multipart/form-data: fields model, requirement, adapt; one or more files named `image`."""
        limits = self.cfg.limits
        form = await request.form(max_files=limits.max_images + 1, max_fields=16)
        files = [f for f in form.getlist("image") if hasattr(f, "read")]
        if not files:
            raise client_error(422, "multipart request needs at least one file field named 'image'")
        if len(files) > limits.max_images:
            raise client_error(413, f"{len(files)} images > max_images {limits.max_images}")
        fields = {k: form.get(k) for k in ScoreOptions.model_fields if isinstance(form.get(k), str)}
        req = validate(ScoreOptions, fields)
        blobs = [await f.read(limits.max_bytes + 1) for f in files]
        return req, await self.decode_all(blobs)

    async def score(self, request: Request) -> dict[str, Any]:
        self.check_key(request)
        request = self.limited(request)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            req, images = await self.form_request(request)
            handle = self.handle_for(request, req.model)
        elif ctype.startswith("application/json"):
            req = validate(ScoreRequest, await request.body())
            handle = self.handle_for(request, req.model)  # before fetching anything
            images = await self.json_images(req.images)
        else:
            raise client_error(415, f"content-type must be multipart/form-data or application/json, got {ctype!r}")
        options = {k: v for k, v in (("requirement", req.requirement), ("adapt", req.adapt)) if v is not None}
        results = await self.call(handle.score, images, options)
        return {"model": req.model, "results": results}

    async def call(self, method: Any, *args: Any) -> Any:
        """Await a deployment method; its UnknownRequirement is a 404, its ValueError a 422, and a model
        replica that died under the request a 503 with Retry-After (Serve replaces the replica)."""
        try:
            return await method.remote(*args)
        except UnknownRequirement as e:
            raise client_error(404, f"unknown requirement: {e.args[0] if e.args else e}") from None
        except ValueError as e:
            raise client_error(422, str(e)) from None
        except RayActorError as e:
            log.warning("model replica lost during a request: %s", e)
            raise HTTPException(503, "the model replica serving this request died; retry",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    async def add_requirement(self, request: Request) -> dict[str, Any]:
        self.check_key(request)
        req = validate(RequirementRequest, await self.limited(request).body())
        handle = self.handle_for(request, req.model, needs_requirements=True)
        if len(req.images) != len(req.scores):
            raise client_error(422, f"{len(req.images)} images but {len(req.scores)} scores")
        images = await self.json_images(req.images)
        result = await self.call(handle.register_requirement, req.name, images, req.scores)
        return {"model": req.model, "name": req.name, "result": result}

    async def list_requirements(self, request: Request, model: str) -> dict[str, Any]:
        self.check_key(request)
        handle = self.handle_for(request, model, needs_requirements=True)
        return {"model": model, "requirements": await self.call(handle.list_requirements)}

    def models(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "kind": m.kind,
                "requirements": m.kind in REQUIREMENT_KINDS,
                "replicas": [m.deployment.min_replicas, m.deployment.max_replicas],
                "max_batch_size": m.deployment.max_batch_size,
            }
            for name, m in self.cfg.models.items()
        ]


app = FastAPI(
    title="rayiqa",
    version="0.1.0",
    description="No-reference image quality scores (LLM-IQA, LLM-TTA backbones, PromptIQA, GRMP-IQA) on Ray Serve.",
    docs_url=None,  # /docs below serves Swagger UI from local files, not from a CDN
    redoc_url=None,
)


def _swagger_assets() -> str:
    import swagger_ui_bundle

    return swagger_ui_bundle.swagger_ui_path


app.mount(DOCS_ASSETS, StaticFiles(directory=_swagger_assets()), name="docs-assets")
_metrics: list[EndpointMetrics] = []  # one per replica process, made on its first request


@app.middleware("http")
async def observe(request: Request, call_next: Any) -> Any:
    """Count every request and its latency per endpoint and model; a crash counts as a 500."""
    if not _metrics:
        _metrics.append(EndpointMetrics())
    started, code = time.perf_counter(), 500
    try:
        response = await call_next(request)
        code = response.status_code
        return response
    finally:  # the route template, not the raw path: unknown paths are one series, "unmatched"
        route = getattr(request.scope.get("route"), "path", "unmatched")
        model = getattr(request.state, "model", "-")
        _metrics[0].observe(route, model, code, 1000 * (time.perf_counter() - started))


def _score_openapi() -> dict[str, Any]:
    multipart = {
        "type": "object",
        "required": ["model", "image"],
        "properties": {
            "model": {"type": "string"},
            "requirement": {"type": "string"},
            "adapt": {"type": "boolean"},
            "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}},
                "multipart/form-data": {"schema": multipart},
            },
        }
    }


def custom_openapi() -> dict[str, Any]:
    """FastAPI's schema plus the request models that the handlers parse themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ScoreRequest, RequirementRequest):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = custom_openapi  # type: ignore[method-assign]


@serve.deployment
@serve.ingress(app)
class IngressDeployment(Ingress):
    """The Serve ingress: FastAPI routes over `Ingress`."""

    @app.post("/v1/score", openapi_extra=_score_openapi(), summary="Score images with one model")
    async def score_route(self, request: Request) -> dict[str, Any]:
        return await self.score(request)

    @app.post(
        "/v1/requirements",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/RequirementRequest"}}}}},
        summary="Register a PromptIQA requirement (image-score pairs)",
    )
    async def add_requirement_route(self, request: Request) -> dict[str, Any]:
        return await self.add_requirement(request)

    @app.get("/v1/requirements", summary="Registered PromptIQA requirements")
    async def list_requirements_route(self, request: Request, model: str = "promptiqa") -> dict[str, Any]:
        return await self.list_requirements(request, model)

    @app.get("/v1/models", summary="The models this endpoint serves")
    async def models_route(self, request: Request) -> dict[str, Any]:
        self.check_key(request)
        return {"models": self.models()}

    @app.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Any:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} API",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        )


def deployment_class(kind: str) -> Any:
    """The deployment class of a model kind: its own (imported on demand) or ScorerDeployment."""
    if kind not in DEPLOYMENTS:
        return ScorerDeployment
    module, _, name = DEPLOYMENTS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def build_app(cfg: ServeConfig) -> serve.Application:
    """The Serve application: one deployment per model, bound into the ingress by name."""
    handles = {}
    for name, model in cfg.models.items():
        options = {"name": f"model-{name}", **model.deployment.serve_options()}
        handles[name] = deployment_class(model.kind).options(**options).bind(model)
    digest = None
    if cfg.auth.api_key_env:  # the replicas get a salted hash of the key: the key itself is in no Ray log
        digest = key_digest(api_key(cfg), secrets.token_hex(16))
    return IngressDeployment.options(name="ingress", **cfg.ingress.serve_options()).bind(cfg, handles, digest)


def key_digest(key: str, salt: str) -> tuple[str, str]:
    """(salt, sha256(salt + key)) in hex: what the ingress compares a request's key against."""
    return salt, hashlib.sha256(bytes.fromhex(salt) + key.encode()).hexdigest()


def api_key(cfg: ServeConfig) -> str:
    """The API key from the variable that auth.api_key_env names; ConfigError if it is unset or empty."""
    key = os.environ.get(cfg.auth.api_key_env or "")
    if not key:
        raise ConfigError(f"auth.api_key_env={cfg.auth.api_key_env!r}: that environment variable is unset or empty")
    return key


def check_exposure(cfg: ServeConfig) -> None:
    """Refuse to listen beyond loopback without an API key unless auth.open says so (then warn)."""
    host = cfg.http.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or cfg.auth.api_key_env:
        return
    if not cfg.auth.open:
        raise ConfigError(
            f"http.host={host!r} serves other machines, but auth.api_key_env is null: set an API key "
            "(auth.api_key_env), bind 127.0.0.1, or set auth.open: true to serve without one"
        )
    log.warning("rayiqa: serving http://%s:%d WITHOUT an API key (auth.open: true)", host, cfg.http.port)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve's application-builder hook (`serve run rayiqa.serve.app:app_builder config=...`, RayService)."""
    overrides = args.get("overrides", [])
    cfg = load_config(ServeConfig, args.get("config"), overrides.split() if isinstance(overrides, str) else overrides)
    return build_app(cfg)


def run_serve(cfg: ServeConfig, blocking: bool = False) -> DeploymentHandle:
    """Start Serve's HTTP proxy on cfg.http and deploy the app (blocking: until interrupted)."""
    from rayiqa.runtime import ensure_ray

    check_exposure(cfg)  # before Ray starts: a refused config costs no start-up
    if cfg.auth.api_key_env:
        api_key(cfg)
    ensure_ray(cfg.ray)
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    log.info("rayiqa: deploying %s on http://%s:%d%s (docs at /docs)",
             sorted(cfg.models), cfg.http.host, cfg.http.port, cfg.http.route_prefix)
    return serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.http.route_prefix, blocking=blocking)


def main_serve(config_path: str | None, overrides: list[str], blocking: bool = True) -> int:
    """`rayiqa serve CONFIG [key=value ...]`: deploy and, by default, keep serving until Ctrl-C."""
    run_serve(load_config(ServeConfig, config_path, overrides), blocking=blocking)
    return 0
