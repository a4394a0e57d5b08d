"""The REST service: a FastAPI app around one ``Predictor`` (all model and preprocessing work is ``inference``'s).

Usage::

    app = create_app(ServeSettings(model="runs/20261121-101500-cnn-default"))   # uvicorn.run(app)
    # or, for uvicorn's workers: DIGITLAB_SERVE_MODEL=... uvicorn --factory digitlab.serve.app:app_from_env

Endpoints (OpenAPI at ``/docs``): ``POST /v1/predict`` (one image: multipart ``file``, JSON
``{"image": base64}`` or ``{"pixels": 28x28}``, or a raw ``image/*`` body), ``POST /v1/predict/batch``,
``POST /v1/read`` (a line of digits), ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics`` (Prometheus), and the drawing page at ``/`` with its files under ``/static/``.

Bad input is the client's: every expected failure is a 4xx with ``{"error": "<one line>"}``. The
body is limited twice (its Content-Length, and the bytes actually received), model work runs in
the thread pool under a timeout (504), and no file path is ever taken from a request. Single-image
predictions are micro-batched: those that arrive while the model is busy share its next call.
"""

import asyncio
import base64
import binascii
import io
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import swagger_ui
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitlab import __version__
from digitlab.inference import ImageError, ImagePrediction, Predictor, PredictorError, Prepared, read_digits
from digitlab.inference.prepare import Polarity, parse_box
from digitlab.inference.sequence import StringReader
from digitlab.serve.batching import ImageJob, MicroBatcher
from digitlab.serve.memory import fix_allocator_thresholds
from digitlab.serve.settings import ServeSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
API = "/v1"
DOCS_ASSETS = "/docs-assets"  # Swagger UI 5's files (shipped in the swagger-ui-py package), served for /docs
SWAGGER_DIR = Path(swagger_ui.__file__).parent / "static"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by `digitlab serve --workers N` (N > 1) for its workers
EVAL_METRICS = Path("eval") / "metrics.json"  # in a run directory, written by `digitlab evaluate`
BATCH_LIMIT = 64  # the most single-image requests one model call takes
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
Prepare = Literal["none", "list", "png"]
T = TypeVar("T")


class ClientError(HTTPException):
    """A request the client got wrong: answered with its status and ``{"error": detail}``."""


class BodyTooLarge(ClientError):
    """Raised while the body is being received; an HTTPException so FastAPI's body parsing lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit:,}-byte limit")


class BodyTimeout(ClientError):
    """Raised when a request's body has not arrived within the deadline (a slow or stalled client)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s", headers={"Connection": "close"})


# ----------------------------------------------------------------------------------------- schemas

class Options(BaseModel):
    """Options of a prediction; in a JSON body they override the query string's."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(None, ge=1, le=100, description="How many classes to list (default: the server's).")
    min_confidence: float | None = Field(None, ge=0, le=1, description="Reject below this calibrated confidence "
                                         "(default: the threshold chosen on validation).")
    return_prepared: Prepare | None = Field(None, description="Also return the 28x28 image the model saw: as a "
                                            "nested list of 0-255 values, or as a base64 PNG.")
    polarity: Polarity | None = Field(None, description="auto, dark-on-light (ink on paper) or light-on-dark.")
    box: tuple[NonNegativeInt, NonNegativeInt, PositiveInt, PositiveInt] | None = Field(
        None, description="Read only this region of the image: x, y, width, height in pixels (a form's field).")


class PredictRequest(Options):
    """One image: ``image`` (a base64 PNG, JPEG, ... file) or ``pixels`` (model-ready, e.g. 28x28 0-255,
    light ink on dark as in MNIST: no preparation)."""

    image: str | None = Field(None, description="The image file's bytes, base64 (a data: URL prefix is allowed).")
    pixels: list[list[float]] | None = Field(None, description="A model-ready array, rows of 0-255 values.")


class BatchRequest(Options):
    images: list[str] = Field(description="Image files' bytes, base64 each.")


class ReadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="The image file's bytes, base64: a line of digits.")
    min_confidence: float | None = Field(None, ge=0, le=1)
    n_digits: int | None = Field(None, ge=1, le=64, description="How many digits the line holds, when known.")
    polarity: Polarity | None = None


class TopK(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str | None = Field(description="The best class; None when no digit was found.")
    confidence: float
    probabilities: dict[str, float]
    top_k: list[TopK]
    rejected: bool
    reason: str | None = Field(description="Why it was not read, in plain words (\"no digit found\", \"not sure which "
                                            "digit this is\", \"does not look like a digit\", \"strokes too thick "
                                            "for a digit\"); null when it was read.")
    found: bool
    inverted: bool = False
    box: list[int] | None = None
    notes: list[str] = []
    prepared: list[list[int]] | str | None = None


class BatchResponse(BaseModel):
    predictions: list[Prediction]


class DigitOut(BaseModel):
    label: str = Field(description="A digit, or a separator (. , - /) read by the string model.")
    confidence: float
    box: list[int] | None = Field(description="x0, y0, x1, y1 in the image; null from the string model, which "
                                  "reads the line whole")
    rejected: bool


class ReadResponse(BaseModel):
    text: str = Field(description="As written, separators kept (\"1.480\"); \"?\" for a digit not read "
                      "(segmentation reader).")
    value: str = Field(description="The digits only (\"1480\").")
    confidence: float
    found: bool
    rejected: bool = Field(description="The string is not trusted (text is then a best guess).")
    reason: str | None
    reader: Literal["sequence", "segmentation"] = Field(description="sequence: the string model read the line "
                                                        "whole; segmentation: cut into digits, each classified.")
    inverted: bool
    digits: list[DigitOut] = Field(description="One per character of text.")
    notes: list[str]


class ErrorResponse(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (413, 422, 503, 504)}


# ----------------------------------------------------------------------------------------- middleware

class LimitAndMeasure:
    """ASGI middleware: refuses bodies over the limit (declared or received) with 413 and bodies that do not
    arrive within ``body_timeout_s`` with 408, logs a client that disconnects as one info line (status
    499 in the counts), and counts every request by endpoint and status, with its latency, for ``/metrics``."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, requests: Counter, latency: Histogram,
                 endpoints: Callable[[], set[str]], body_timeout_s: float = 30.0) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.requests = requests
        self.latency = latency
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        endpoint = (path if path in self.endpoints() else "/static" if path.startswith(("/static/", DOCS_ASSETS))
                    else "other")
        status = 500
        started = False

        async def counted_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
                raise BodyTooLarge(self.limit) if declared.isdigit() else ClientError(400, "bad Content-Length")
            received = 0
            deadline: float | None = None  # of the body, from the app's first read
            body_done = False

            async def limited_receive() -> Message:
                nonlocal received, deadline, body_done
                if body_done:
                    return await receive()
                loop = asyncio.get_running_loop()
                if deadline is None:
                    deadline = loop.time() + self.body_timeout_s
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
                except TimeoutError:
                    raise BodyTimeout(self.body_timeout_s) from None
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.limit:
                        raise BodyTooLarge(self.limit)
                    body_done = not message.get("more_body", False)
                return message

            await self.app(scope, limited_receive, counted_send)
        except ClientDisconnect:  # an ordinary event (a closed tab, a client's timeout): no traceback
            status = 499
            log.info("%s %s: the client disconnected before the response", scope.get("method", ""), path)
        except ClientError as e:
            if started:
                raise
            await JSONResponse({"error": e.detail}, e.status_code, headers={"Connection": "close"})(
                scope, receive, counted_send)
        finally:
            self.requests.labels(endpoint, scope.get("method", ""), str(status)).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - start)


class _Static(StaticFiles):
    """The drawing page's folder; a 404, not a 500, while it is missing."""

    async def check_config(self) -> None:  # checked again on each request until the folder is there
        if self.directory is None or not Path(self.directory).is_dir():
            raise HTTPException(404, "the drawing page is not installed")
        await super().check_config()


# ----------------------------------------------------------------------------------------- helpers

def one_line(text: str) -> str:
    return " ".join(str(text).split())


def decode_base64(data: str, what: str = "image") -> bytes:
    """Base64 (or a ``data:...;base64,`` URL) -> bytes; a ClientError (422) when it is not base64."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(422, f"{what}: not valid base64") from None
    if not raw:
        raise ClientError(422, f"{what}: empty (0 bytes), not an image")
    return raw


def pixels_array(rows: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    """A JSON array -> ``shape`` uint8, or a ClientError naming what is wrong (shape, NaN, range)."""
    if len({len(r) for r in rows}) > 1:
        raise ClientError(422, f"pixels: rows of different lengths; want {shape[0]} rows of {shape[1]} numbers")
    a = np.asarray(rows, dtype=np.float64)
    if a.shape != shape:
        raise ClientError(422, f"pixels: an array of shape {a.shape}; the model takes {shape[0]} rows of "
                               f"{shape[1]} numbers (0-255, light ink on dark)")
    if not np.isfinite(a).all():
        raise ClientError(422, "pixels: NaN or infinite values; want numbers 0-255")
    if a.min() < 0 or a.max() > 255:
        raise ClientError(422, f"pixels: values from {a.min():g} to {a.max():g}; want numbers 0-255")
    return np.round(a).astype(np.uint8)


def encode_prepared(image: np.ndarray | None, how: Prepare | None) -> list[list[int]] | str | None:
    if image is None or how in (None, "none"):
        return None
    if how == "list":
        return image.tolist()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def prediction_out(p: ImagePrediction, class_names: list[str], how: Prepare | None) -> dict[str, Any]:
    r = p.record()
    proba = {c: float(v) for c, v in zip(class_names, p.proba, strict=True)} if p.proba is not None else {}
    return {"label": r["label"], "confidence": r["confidence"], "probabilities": proba, "top_k": r["top_k"],
            "rejected": r["rejected"], "reason": r["reason"], "found": r["found"], "inverted": r["inverted"],
            "box": r["box"], "notes": r["notes"], "prepared": encode_prepared(p.prepared.image, how)}


def validation_message(e: ValidationError | RequestValidationError) -> str:
    errors = e.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return one_line(f"{where}: {first.get('msg', 'invalid')}{more}")


def eval_summary(source: Path | None) -> dict[str, Any] | None:
    """A small summary of ``RUN/eval/metrics.json`` (None when the model is not an evaluated run)."""
    if source is None or not (source / EVAL_METRICS).is_file():
        return None
    try:
        m = json.loads((source / EVAL_METRICS).read_text())
        cal = m.get("calibration") or {}
        return {"dataset": m.get("dataset"), "split": m.get("split"), "n": m.get("n"),
                "accuracy": m.get("accuracy"), "accuracy_ci95": m.get("accuracy_ci95"),
                "macro_f1": (m.get("macro_avg") or {}).get("f1"), "ece": m.get("ece"),
                "ece_calibrated": cal.get("ece_after"), "temperature": cal.get("temperature")}
    except (OSError, ValueError, AttributeError):
        return None


async def read_body_json(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise ClientError(422, "empty body; send JSON or a multipart form")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ClientError(422, one_line(f"malformed JSON: {e}")) from None
    except RecursionError:
        raise ClientError(422, "malformed JSON: nested too deeply") from None


def parse(model: type[T], data: Any) -> T:
    if not isinstance(data, dict):
        raise ClientError(422, f"the JSON body must be an object, not {type(data).__name__}")
    try:
        return model.model_validate(data)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as e:
        raise ClientError(422, validation_message(e)) from None


async def form_files(request: Request, field: str, max_files: int) -> list[bytes]:
    """The files posted under ``field`` (multipart), read; a ClientError when none, too many or unreadable."""
    try:
        form = await request.form(max_files=max_files, max_fields=100)
    except ClientError:
        raise
    except HTTPException as e:  # starlette's multipart errors (too many files, bad boundary)
        if "too many files" in str(e.detail).lower():
            raise ClientError(422, f"more than {max_files} files: send at most {max_files}") from None
        raise ClientError(422, one_line(f"bad multipart form: {e.detail}")) from None
    except Exception as e:  # malformed multipart bytes surface as parser errors of several kinds
        raise ClientError(422, one_line(f"bad multipart form: {e}")) from None
    items = form.getlist(field)
    if not items:
        raise ClientError(422, f"multipart form without a {field!r} file field")
    out = []
    for item in items:
        if isinstance(item, str):
            raise ClientError(422, f"{field!r} must be a file, not a text field")
        out.append(await item.read())
        await item.close()
    return out


def content_kind(request: Request) -> str:
    ct = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ct == "application/json" or ct.endswith("+json"):
        return "json"
    if ct == "multipart/form-data":
        return "multipart"
    if ct.startswith("image/") or ct == "application/octet-stream":
        return "raw"
    raise ClientError(422, f"content type {ct or 'none'!r}: send multipart/form-data (a 'file' field), "
                           "application/json ({\"image\": base64} or {\"pixels\": [[...]]}) or image/*")


# ----------------------------------------------------------------------------------------- the app

async def get_predictor(request: Request) -> Predictor:
    """The model loaded in the lifespan (tests may override this dependency). Async, as is ``get_settings``:
    FastAPI runs a plain function dependency in the thread pool, a hop per request for a lookup."""
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise ClientError(503, "the model is not loaded")
    return predictor


async def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]


async def query_options(top_k: Annotated[int | None, Query(ge=1, le=100)] = None,
                        min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
                        return_prepared: Annotated[Prepare, Query()] = "none",
                        polarity: Annotated[Polarity, Query()] = "auto",
                        box: Annotated[str | None, Query(description="x,y,width,height in pixels", max_length=64)]
                        = None) -> Options:
    """The prediction options of the query string (one place for ``/v1/predict`` and its batch)."""
    try:
        region = None if box is None else parse_box(box)
    except ImageError as e:
        raise ClientError(422, str(e)) from None
    return Options(top_k=top_k, min_confidence=min_confidence, return_prepared=return_prepared, polarity=polarity,
                   box=region)


QueryOptions = Annotated[Options, Depends(query_options)]


def batcher_for(request: Request, predictor: Predictor) -> MicroBatcher:
    """The app's micro-batcher for ``predictor`` (made on first use; tests may swap the predictor)."""
    batcher: MicroBatcher | None = getattr(request.app.state, "batcher", None)
    if batcher is None or batcher.predictor is not predictor:
        batcher = request.app.state.batcher = MicroBatcher(predictor, max_batch=BATCH_LIMIT)
    return batcher


async def predict_batched(request: Request, predictor: Predictor, settings: ServeSettings,
                          job: ImageJob) -> ImagePrediction:
    """``job`` through the micro-batcher, answered 504 after ``settings.timeout_s`` and 422 for a bad image."""
    return await _answered(settings, batcher_for(request, predictor).submit(job))


async def run_limited(settings: ServeSettings, fn: Callable[[], T]) -> T:
    """``fn`` in the thread pool, answered 504 after ``settings.timeout_s`` (the thread finishes on its own)."""
    return await _answered(settings, run_in_threadpool(fn))


async def _answered(settings: ServeSettings, work: Awaitable[T]) -> T:
    """``work``'s result; past ``settings.timeout_s`` a 504, and a bad image or model input a 422."""
    try:
        return await asyncio.wait_for(work, settings.timeout_s)
    except TimeoutError:
        raise ClientError(504, f"the model took longer than {settings.timeout_s:g} s; try a smaller image") \
            from None
    except (ImageError, PredictorError) as e:
        raise ClientError(422, one_line(str(e))) from None


def warm_up(predictor: Predictor | StringReader) -> None:
    """Read one small line before serving: the first client does not wait for the string reader's imports
    and the model's first call, and a memory measurement taken after start-up sees only what requests add."""
    line = np.zeros((28, 64), np.float32)
    line[6:22, 12:15] = 1.0  # two upright strokes, two pieces for the reader
    line[6:22, 44:47] = 1.0
    read_digits(line, predictor, polarity="light-on-dark")


def create_app(settings: ServeSettings | None = None, *, predictor: Predictor | None = None,
               string_reader: StringReader | None = None) -> FastAPI:
    """The service for ``settings.model`` (loaded once, in the lifespan), or for ``predictor`` when given; lines
    (``/v1/read``) are read by the string model ``settings.strings`` (or ``string_reader``) when there is one,
    else cut into digits for ``predictor``.

    Raises:
        PredictorError, StringReaderError: (at startup) a model cannot be loaded.
    """
    settings = settings or ServeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        fix_allocator_thresholds()  # large decoded images must not ratchet the heap up
        if app.state.predictor is None:
            if settings.model is None:
                raise PredictorError(f"no model: pass one or set {settings.model_config['env_prefix']}MODEL")
            app.state.predictor = await run_in_threadpool(Predictor.from_path, settings.model)
        if app.state.string_reader is None and settings.strings is not None:
            app.state.string_reader = await run_in_threadpool(StringReader.from_path, settings.strings)
        await run_in_threadpool(warm_up, app.state.predictor)
        if app.state.string_reader is not None:
            await run_in_threadpool(warm_up, app.state.string_reader)
        yield
        if getattr(app.state, "batcher", None) is not None:
            await app.state.batcher.close()
        app.state.predictor = None

    app = FastAPI(title="digitlab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Handwritten digit recognition: one digit, a batch, or a line of digits.")
    app.state.settings = settings
    app.state.predictor = predictor
    app.state.string_reader = string_reader
    registry = CollectorRegistry()  # one per app: several apps (tests) never share counters
    requests = Counter("digitlab_requests", "HTTP requests by endpoint, method and status",
                       ["endpoint", "method", "status"], registry=registry)
    latency = Histogram("digitlab_request_seconds", "Request latency by endpoint", ["endpoint"],
                        buckets=LATENCY_BUCKETS, registry=registry)
    paths: set[str] = set()
    app.add_middleware(LimitAndMeasure, max_body_bytes=settings.max_body_bytes, requests=requests, latency=latency,
                       endpoints=lambda: paths, body_timeout_s=settings.body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    _add_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request) -> dict[str, str]:
        """The model is loaded and requests can be served."""
        p = await get_predictor(request)
        return {"status": "ready", "model": p.name}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus: requests by endpoint and status, and a latency histogram (all workers together)."""
        if os.environ.get(MULTIPROC_ENV):  # several workers: each writes its counts to files in that folder
            summed = CollectorRegistry()
            multiprocess.MultiProcessCollector(summed)
            return Response(generate_latest(summed), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(f"{API}/model", tags=["model"])
    async def model_info(request: Request, p: PredictorDep, s: SettingsDep) -> dict[str, Any]:
        """The model: name, kind, classes, rejection threshold, preprocessing spec, evaluation summary; and what
        reads lines (``/v1/read``): the string model, or the segmentation reader over this model."""
        sr: StringReader | None = request.app.state.string_reader
        lines = {"reader": "sequence", "name": sr.info.name, "n_params": sr.info.n_params,
                 "min_confidence": sr.min_confidence} if sr is not None else {"reader": "segmentation"}
        return {"name": p.name, "kind": p.kind, "backend": p.backend.name, "n_params": p.info.n_params,
                "digitlab_version": __version__,
                "source": p.source.name if p.source else None, "class_names": p.class_names,
                "threshold": p.threshold, "detector_threshold": p.detector_threshold,
                "temperature": p.temperature if p.rejection else None,
                "preprocess": p.spec.model_dump(mode="json"), "top_k_default": s.top_k,
                "max_batch": s.max_batch, "max_body_bytes": s.max_body_bytes,
                "evaluation": eval_summary(p.source if p.source and p.source.is_dir() else None), "lines": lines}

    body_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}}

    @app.post(f"{API}/predict", tags=["predict"], response_model=Prediction, responses=ERRORS,
              openapi_extra=body_doc)
    async def predict(
        request: Request, p: PredictorDep, s: SettingsDep, opts: QueryOptions,
    ) -> dict[str, Any]:
        """One digit: a multipart ``file``, JSON ``{"image": base64}``, JSON ``{"pixels": [[...]]}`` (model-ready,
        no preparation) or a raw image body. JSON options override the query string's."""
        kind = content_kind(request)
        data: bytes | None = None
        pixels: np.ndarray | None = None
        if kind == "multipart":
            data = (await form_files(request, "file", 1))[0]
        elif kind == "raw":
            data = await request.body()
        else:
            body = parse(PredictRequest, await read_body_json(request))
            opts = _merge(opts, body)
            if (body.image is None) == (body.pixels is None):
                raise ClientError(422, "send exactly one of 'image' (base64) and 'pixels' (a 28x28 array)")
            if body.image is not None:
                data = decode_base64(body.image)
            else:
                pixels = pixels_array(body.pixels or [], tuple(p.spec.input_size))  # type: ignore[arg-type]
        if data is not None and not data:
            raise ClientError(422, "empty image (0 bytes)")
        k = opts.top_k or s.top_k
        if pixels is not None:
            preds = await run_limited(s, lambda: p.predict(pixels, top_k=k, min_confidence=opts.min_confidence))
            r = preds.record(0)
            r.update(reason=preds.reason(0), found=True,
                     prepared=encode_prepared(pixels, opts.return_prepared))
            return r
        assert data is not None
        result = await predict_batched(request, p, s, ImageJob(data, k, opts.min_confidence, opts.polarity or "auto",
                                                                  opts.box))
        return prediction_out(result, p.class_names, opts.return_prepared)

    batch_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": BatchRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}, "required": ["files"]}}}}}

    @app.post(f"{API}/predict/batch", tags=["predict"], response_model=BatchResponse, responses=ERRORS,
              openapi_extra=batch_doc)
    async def predict_batch(
        request: Request, p: PredictorDep, s: SettingsDep, opts: QueryOptions,
    ) -> dict[str, Any]:
        """Up to ``max_batch`` images in one call: multipart ``files`` (repeated) or JSON ``{"images": [...]}``."""
        kind = content_kind(request)
        if kind == "multipart":
            files = await form_files(request, "files", s.max_batch)
        elif kind == "json":
            body = parse(BatchRequest, await read_body_json(request))
            opts = _merge(opts, body)
            if len(body.images) > s.max_batch:
                raise ClientError(422, f"{len(body.images)} images: a batch holds at most {s.max_batch}")
            files = [decode_base64(x, f"images[{i}]") for i, x in enumerate(body.images)]
        else:
            raise ClientError(422, "a batch is multipart/form-data ('files' fields) or JSON {\"images\": [...]}")
        if len(files) > s.max_batch:
            raise ClientError(422, f"{len(files)} images: a batch holds at most {s.max_batch}")
        if not files:
            raise ClientError(422, "an empty batch: send at least one image")

        def work() -> list[ImagePrediction]:
            prepared: list[Prepared] = []
            for i, data in enumerate(files):
                try:
                    prepared.append(p.prepare(data, polarity=opts.polarity or "auto", box=opts.box))
                except ImageError as e:
                    raise ImageError(f"image {i}: {e}") from None
            return p.predict_prepared(prepared, names=[f"#{i}" for i in range(len(files))],
                                      top_k=opts.top_k or s.top_k, min_confidence=opts.min_confidence)

        results = await run_limited(s, work)
        return {"predictions": [prediction_out(r, p.class_names, opts.return_prepared) for r in results]}

    read_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ReadRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}}

    @app.post(f"{API}/read", tags=["predict"], response_model=ReadResponse, responses=ERRORS, openapi_extra=read_doc)
    async def read(
        request: Request, p: PredictorDep, s: SettingsDep,
        min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
        n_digits: Annotated[int | None, Query(ge=1, le=64)] = None,
        polarity: Annotated[Polarity, Query()] = "auto",
    ) -> dict[str, Any]:
        """A line of digits (a postal code, an amount) read left to right, with each digit's box."""
        kind = content_kind(request)
        if kind == "multipart":
            data = (await form_files(request, "file", 1))[0]
        elif kind == "raw":
            data = await request.body()
        else:
            body = parse(ReadRequest, await read_body_json(request))
            data = decode_base64(body.image)
            min_confidence = body.min_confidence if body.min_confidence is not None else min_confidence
            n_digits = body.n_digits or n_digits
            polarity = body.polarity or polarity
        if not data:
            raise ClientError(422, "empty image (0 bytes)")
        reader = request.app.state.string_reader or p  # the string model when the service has one
        line = await run_limited(s, lambda: read_digits(data, reader, polarity=polarity,
                                                        min_confidence=min_confidence, n_digits=n_digits))
        return line.record()

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise HTTPException(404, "the drawing page is not installed (serve/static/index.html)")
        return FileResponse(index)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:  # Swagger UI from the app itself (FastAPI's default loads it from a CDN)
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="digitlab API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

    app.mount("/static", _Static(directory=STATIC_DIR, check_dir=False), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=SWAGGER_DIR), name="docs-assets")
    paths.update(r.path for r in app.routes if not r.path.startswith(("/static", DOCS_ASSETS)))  # type: ignore[attr-defined]
    return app


def app_from_env() -> FastAPI:
    """The app configured from ``DIGITLAB_SERVE_*`` variables: uvicorn's factory for several workers."""
    return create_app(ServeSettings())


def _merge(opts: Options, body: Options) -> Options:
    given = body.model_dump(include=set(Options.model_fields), exclude_none=True)
    return opts.model_copy(update=given)


def _add_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"not found: {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} not allowed on {request.url.path}"
        return JSONResponse({"error": one_line(str(detail))}, exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"error": validation_message(exc)}, 422)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error (logged on the server)"}, 500)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


__all__ = ["ServeSettings", "app_from_env", "create_app", "get_predictor"]
