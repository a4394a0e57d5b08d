"""The REST service through FastAPI's TestClient: every endpoint's happy path, every bad input (a 4xx with a
one-line JSON error, never a 500), CORS, timeouts, a bounded fuzz loop, and the `digitlab serve` command.

The model is a k-NN trained in seconds on 6,000 real MNIST digits (a CNN takes 20-40 s on two busy cores),
which reads the test digits used here correctly; the service's code path is the same for every backend.
"""

import asyncio
import base64
import io
import json
import os
import re
import signal
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from digitlab.cli import app as cli_app
from digitlab.inference import Predictor
from digitlab.inference.rejection import REASON_UNSURE
from digitlab.inference.strings import compose_line
from digitlab.serve import ServeSettings, create_app, get_predictor
from digitlab.serve import app as serve_module
from digitlab.serve.batching import ImageJob, MicroBatcher
from digitlab.training import config_from_recipe, train_run

pytestmark = pytest.mark.mnist

MAX_BATCH = 4
FOREIGN = "https://evil.example"


def png(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def on_paper(digit: np.ndarray, size: int = 112) -> np.ndarray:
    """An MNIST digit drawn dark on white and enlarged: what a scan or a canvas looks like."""
    return np.asarray(Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BICUBIC))


def png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims ``width`` x ``height`` (IHDR patched, its CRC recomputed)."""
    data = png(np.zeros((28, 28), np.uint8))
    assert data[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + data[33:]


@pytest.fixture(scope="module")
def served(mnist_dataset, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIGITLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        config = config_from_recipe("knn", ["data.train_subset=6000", "data.n_val=500"])
        run = Path(train_run(config, out_root=root, show_progress=False).run_dir)
    # what `digitlab evaluate` writes (its figures take longer than this whole file): the keys the summary reads
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({
        "dataset": "mnist", "split": "test", "n": 10000, "accuracy": 0.91, "accuracy_ci95": [0.904, 0.915],
        "macro_avg": {"precision": 0.91, "recall": 0.9, "f1": 0.905}, "ece": 0.03, "per_class": {"0": {}},
        "confusion_matrix": [[0] * 10] * 10, "calibration": {"ece_after": 0.01, "temperature": 1.2}}))
    x, y = mnist_dataset.test_images[:12], [str(v) for v in mnist_dataset.test_labels[:12]]
    app = create_app(ServeSettings(model=run, max_batch=MAX_BATCH))
    with TestClient(app) as client:  # runs the lifespan: the model is loaded once, here
        yield SimpleNamespace(client=client, app=app, run=run, x=x, y=y,
                              pngs=[png(on_paper(d)) for d in x], digits=mnist_dataset.test_images,
                              labels=mnist_dataset.test_labels)


def error_of(r, status: int | tuple[int, ...], needle: str) -> str:
    """The response is a JSON error with ``status`` whose one-line message contains ``needle``."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses and r.status_code != 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    message = body["error"]
    assert needle.lower() in message.lower() and "\n" not in message and "Traceback" not in message, message
    return message


# ----------------------------------------------------------------------------------------- happy paths

def test_health_and_readiness(served) -> None:
    assert served.client.get("/healthz").json() == {"status": "ok"}
    assert served.client.get("/readyz").json() == {"status": "ready", "model": "knn"}
    # an app whose lifespan has not run has no model: alive, not ready, and predictions say why
    idle = TestClient(create_app(ServeSettings(model=served.run)))
    assert idle.get("/healthz").status_code == 200
    error_of(idle.get("/readyz"), 503, "not loaded")
    error_of(idle.post("/v1/predict", json={"pixels": served.x[0].tolist()}), 503, "not loaded")


def test_predict_reads_real_digits_uploaded_as_files(served) -> None:
    for data, label in zip(served.pngs, served.y, strict=True):
        r = served.client.post("/v1/predict", files={"file": ("digit.png", data, "image/png")})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["label"] == label and out["found"] and out["inverted"], (label, out)
        assert set(out["probabilities"]) == {str(i) for i in range(10)}
        assert sum(out["probabilities"].values()) == pytest.approx(1.0)
        assert len(out["top_k"]) == 3 and out["top_k"][0]["label"] == label
        assert out["confidence"] == pytest.approx(out["top_k"][0]["probability"])
        assert out["prepared"] is None and out["rejected"] is (out["reason"] is not None)


def test_predict_base64_json_with_the_prepared_image(served) -> None:
    r = served.client.post("/v1/predict", json={"image": b64(served.pngs[0]), "return_prepared": "png", "top_k": 5})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["label"] == served.y[0] and len(out["top_k"]) == 5
    prepared = Image.open(io.BytesIO(base64.b64decode(out["prepared"])))
    assert prepared.size == (28, 28)
    # a data: URL works too, the option from the query string, the image as a nested list
    r = served.client.post("/v1/predict?return_prepared=list&top_k=2",
                           json={"image": "data:image/png;base64," + b64(served.pngs[1])})
    out = r.json()
    assert out["label"] == served.y[1] and len(out["top_k"]) == 2
    a = np.array(out["prepared"])
    assert a.shape == (28, 28) and a.min() >= 0 and a.max() == 255
    # and a raw image body
    r = served.client.post("/v1/predict", content=served.pngs[2], headers={"content-type": "image/png"})
    assert r.json()["label"] == served.y[2]


def test_predict_pixels_skips_preparation(served) -> None:
    for digit, label in zip(served.x[:5], served.y[:5], strict=True):
        r = served.client.post("/v1/predict", json={"pixels": digit.tolist(), "return_prepared": "list"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["label"] == label and out["found"] and out["prepared"] == digit.tolist()
    direct = Predictor.from_path(served.run).predict(served.x[:1]).record(0)
    out = served.client.post("/v1/predict", json={"pixels": served.x[0].astype(float).tolist()}).json()
    assert out["probabilities"] == pytest.approx(direct["probabilities"])


def test_min_confidence_and_a_blank_image_reject(served) -> None:
    out = served.client.post("/v1/predict?min_confidence=1", json={"pixels": served.x[0].tolist()}).json()
    assert out["rejected"] is (out["confidence"] < 1.0)
    assert out["reason"] == (REASON_UNSURE if out["rejected"] else None)
    blank = png(np.full((64, 64), 250, np.uint8))
    out = served.client.post("/v1/predict", files={"file": ("blank.png", blank, "image/png")}).json()
    assert out["found"] is False and out["rejected"] and out["label"] is None and out["reason"] == "no digit found"


def test_batch_as_json_and_multipart(served) -> None:
    r = served.client.post("/v1/predict/batch", json={"images": [b64(d) for d in served.pngs[:MAX_BATCH]]})
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == served.y[:MAX_BATCH]
    files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(served.pngs[4:7])]
    r = served.client.post("/v1/predict/batch?return_prepared=png", files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == served.y[4:7] and all(p["prepared"] for p in preds)


def test_read_a_line_of_three_digits(served) -> None:
    picks = [7, 2, 9]  # the first test digits of these classes
    digits = np.stack([served.digits[int(np.flatnonzero(served.labels == c)[0])] for c in picks])
    line, _ = compose_line(digits, np.random.default_rng(0), gap=(8, 12))
    page = 255 - np.asarray(Image.fromarray(line).resize((line.shape[1] * 3, line.shape[0] * 3)))
    r = served.client.post("/v1/read", files={"file": ("line.png", png(page), "image/png")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == "729" and out["found"] and out["inverted"], out
    assert [d["label"] for d in out["digits"]] == ["7", "2", "9"]
    xs = [d["box"][0] for d in out["digits"]]
    assert xs == sorted(xs) and all(len(d["box"]) == 4 and 0 < d["confidence"] <= 1 for d in out["digits"])
    # the same as base64 JSON, with the number of digits given
    out = served.client.post("/v1/read", json={"image": b64(png(page)), "n_digits": 3}).json()
    assert out["text"] == "729"


def test_model_info(served) -> None:
    info = served.client.get("/v1/model").json()
    assert info["name"] == "knn" and info["kind"] == "classical"
    assert info["class_names"] == [str(i) for i in range(10)]
    assert info["preprocess"]["input_size"] == [28, 28] and info["preprocess"]["polarity"] == "light-on-dark"
    assert "threshold" in info and info["max_batch"] == MAX_BATCH and info["source"] == served.run.name
    ev = info["evaluation"]
    assert ev["accuracy"] == 0.91 and ev["macro_f1"] == 0.905 and ev["ece"] == 0.03 and ev["split"] == "test"
    assert "confusion_matrix" not in ev and "per_class" not in ev  # a summary, not the whole file


def test_openapi_documents_the_versioned_endpoints(served) -> None:
    schema = served.client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/batch", "/v1/read", "/v1/model"} <= set(schema["paths"])
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    docs = served.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # Offline: every script, style sheet and icon of the page comes from the app itself, not a CDN.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert len(assets) >= 3 and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        r = served.client.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_metrics_count_requests_and_latency(served) -> None:
    before = served.client.get("/metrics").text
    served.client.post("/v1/predict", json={"pixels": served.x[0].tolist()})
    served.client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
    r = served.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text
    ok = {"endpoint": "/v1/predict", "method": "POST", "status": "200"}
    bad = {**ok, "status": "422"}
    assert metric(after, "digitlab_requests_total", **ok) == metric(before, "digitlab_requests_total", **ok) + 1
    assert metric(after, "digitlab_requests_total", **bad) == metric(before, "digitlab_requests_total", **bad) + 1
    count = "digitlab_request_seconds_count"
    assert metric(after, count, endpoint="/v1/predict") == metric(before, count, endpoint="/v1/predict") + 2
    assert 'digitlab_request_seconds_bucket{endpoint="/v1/predict",le="0.05"}' in after


def test_page_and_static_files(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = serve_module.STATIC_DIR / "index.html"
    r = served.client.get("/")
    if index.is_file():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    else:
        error_of(r, 404, "not installed")
    error_of(served.client.get("/static/no-such-file.js"), 404, "not found")
    error_of(served.client.get("/static/../../pyproject.toml"), 404, "not found")
    monkeypatch.setattr(serve_module, "STATIC_DIR", tmp_path / "missing")  # the page not installed: a 404, no 500
    with TestClient(create_app(ServeSettings(), predictor=served.app.state.predictor)) as c:
        error_of(c.get("/"), 404, "not installed")
        error_of(c.get("/static/app.js"), 404, "not installed")


# ----------------------------------------------------------------------------------------- bad input

def _json(body: bytes) -> dict:
    return {"content": body, "headers": {"content-type": "application/json"}}


def _bad_cases(s) -> dict:
    """name -> (method, path, request kwargs, expected status(es), what the message must say)."""
    pixels = s.x[0].tolist()
    rows = [", ".join(["NaN" if i == j == 0 else "0" for j in range(28)]) for i in range(28)]
    nan_body = ('{"pixels": [' + ", ".join(f"[{r}]" for r in rows) + "]}").encode()  # NaN: JSON as Python writes it
    return {
        "body over the limit (declared)": ("post", "/v1/predict", _json(b" " * (10 * 1024 * 1024 + 1)), 413, "limit"),
        "bomb 100000x100000": ("post", "/v1/predict", {"files": {"file": ("b.png", png_claiming(100_000, 100_000),
                                                                           "image/png")}}, (413, 422), "pixel"),
        "bomb as base64": ("post", "/v1/predict", {"json": {"image": b64(png_claiming(100_000, 100_000))}},
                           (413, 422), "pixel"),
        "non-image": ("post", "/v1/predict", {"files": {"file": ("a.png", b"label,confidence\n7,0.9\n",
                                                                 "image/png")}}, 422, "not an image"),
        "truncated png": ("post", "/v1/predict", {"files": {"file": ("t.png", s.pngs[0][: len(s.pngs[0]) // 2],
                                                                     "image/png")}}, 422, "truncated"),
        "empty file": ("post", "/v1/predict", {"files": {"file": ("e.png", b"", "image/png")}}, 422, "empty"),
        "wrong content type": ("post", "/v1/predict", {"content": b"7", "headers": {"content-type": "text/plain"}},
                               422, "content type"),
        "no content type": ("post", "/v1/predict", {"content": b"7"}, 422, "content type"),
        "batch too large (json)": ("post", "/v1/predict/batch", {"json": {"images": [b64(s.pngs[0])] *
                                                                           (MAX_BATCH + 1)}}, 422, "at most"),
        "batch too large (multipart)": ("post", "/v1/predict/batch", {"files": [("files", ("a.png", s.pngs[0],
                                        "image/png"))] * (MAX_BATCH + 1)}, 422, "at most"),
        "batch far too large (multipart)": ("post", "/v1/predict/batch", {"files": [("files", ("a.png", s.pngs[0],
                                            "image/png"))] * (3 * MAX_BATCH)}, 422, "at most"),
        "two files for one": ("post", "/v1/predict", {"files": [("file", ("a.png", s.pngs[0], "image/png"))] * 2},
                              422, "at most 1"),
        "empty batch": ("post", "/v1/predict/batch", {"json": {"images": []}}, 422, "empty batch"),
        "bad image in a batch": ("post", "/v1/predict/batch", {"json": {"images": [b64(s.pngs[0]), b64(b"nope")]}},
                                 422, "image 1"),
        "malformed json": ("post", "/v1/predict", _json(b'{"image": '), 422, "malformed JSON"),
        "deeply nested json": ("post", "/v1/predict", _json(b"[" * 100_000 + b"]" * 100_000), 422, "nested"),
        "min_confidence nan (query)": ("post", "/v1/predict?min_confidence=nan", {"json": {"pixels": pixels}}, 422,
                                       "min_confidence"),
        "empty json body": ("post", "/v1/predict", _json(b""), 422, "empty body"),
        "json not an object": ("post", "/v1/predict", {"json": [1, 2, 3]}, 422, "must be an object"),
        "wrong shape 27x28": ("post", "/v1/predict", {"json": {"pixels": pixels[:27]}}, 422, "shape"),
        "ragged rows": ("post", "/v1/predict", {"json": {"pixels": [*pixels[:27], [0] * 5]}}, 422, "rows"),
        "flat array": ("post", "/v1/predict", {"json": {"pixels": [0] * 784}}, 422, "pixels"),
        "NaN": ("post", "/v1/predict", _json(nan_body), 422, "NaN"),
        "out of range": ("post", "/v1/predict", {"json": {"pixels": [[300] * 28] * 28}}, 422, "0-255"),
        "negative": ("post", "/v1/predict", {"json": {"pixels": [[-1] * 28] * 28}}, 422, "0-255"),
        "strings in pixels": ("post", "/v1/predict", {"json": {"pixels": [["a"] * 28] * 28}}, 422, "pixels"),
        "image and pixels": ("post", "/v1/predict", {"json": {"image": b64(s.pngs[0]), "pixels": pixels}}, 422,
                             "exactly one"),
        "neither": ("post", "/v1/predict", {"json": {"top_k": 3}}, 422, "exactly one"),
        "bad base64": ("post", "/v1/predict", {"json": {"image": "not base64 !!"}}, 422, "base64"),
        "unknown field": ("post", "/v1/predict", {"json": {"pixels": pixels, "path": "/etc/passwd"}}, 422, "path"),
        "top_k 0 (query)": ("post", "/v1/predict?top_k=0", {"json": {"pixels": pixels}}, 422, "top_k"),
        "top_k text (query)": ("post", "/v1/predict?top_k=many", {"json": {"pixels": pixels}}, 422, "top_k"),
        "min_confidence 2 (body)": ("post", "/v1/predict", {"json": {"pixels": pixels, "min_confidence": 2}}, 422,
                                    "min_confidence"),
        "bad return_prepared": ("post", "/v1/predict", {"json": {"pixels": pixels, "return_prepared": "jpeg"}}, 422,
                                "return_prepared"),
        "multipart without file": ("post", "/v1/predict", {"data": {"x": "1"}, "files": {"other": ("a", b"1")}},
                                   422, "'file'"),
        "file as a text field": ("post", "/v1/predict", {"data": {"file": "hello"},
                                                         "files": {"other": ("a", b"1")}}, 422, "file"),
        "broken multipart": ("post", "/v1/predict", {"content": b"--xyz\r\nnonsense",
                                                     "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
                             422, "file"),
        "read a non-image": ("post", "/v1/read", {"json": {"image": b64(b"hello world")}}, 422, "not an image"),
        "read n_digits 0": ("post", "/v1/read", {"json": {"image": b64(s.pngs[0]), "n_digits": 0}}, 422,
                            "n_digits"),
        "unknown route": ("get", "/v2/predict", {}, 404, "not found"),
        "wrong method": ("get", "/v1/predict", {}, 405, "not allowed"),
    }


BAD_NAMES = list(_bad_cases(SimpleNamespace(x=np.zeros((1, 28, 28), np.uint8), pngs=[b"x"])))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_is_a_json_4xx(served, name: str) -> None:
    method, path, kwargs, status, needle = _bad_cases(served)[name]
    error_of(getattr(served.client, method)(path, **kwargs), status, needle)


def test_body_over_the_limit_is_counted_while_reading(served) -> None:
    """No Content-Length (chunked): the bytes received are counted and reading stops at the limit."""
    r = served.client.post("/v1/predict", content=(b" " * (1024 * 1024) for _ in range(12)),
                           headers={"content-type": "application/json"})
    error_of(r, 413, "limit")
    # at the ASGI level (TestClient buffers the body first): the app stops pulling chunks past the limit
    pulled, sent = 0, []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * (1024 * 1024), "more_body": pulled < 100}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}, "app": served.app}
    asyncio.run(served.app(scope, receive, send))
    assert sent[0]["status"] == 413 and pulled == 11  # 10 MiB is the limit: the 11th MiB is refused
    assert "limit" in json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]


def test_a_small_body_limit_applies_to_every_form(served) -> None:
    small = create_app(ServeSettings(max_body_bytes=2048), predictor=served.app.state.predictor)
    with TestClient(small) as c:
        big = png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
        assert len(big) > 2048
        error_of(c.post("/v1/predict", files={"file": ("a.png", big, "image/png")}), 413, "2,048-byte limit")
        error_of(c.post("/v1/read", json={"image": b64(big)}), 413, "limit")
        assert c.post("/v1/predict", json={"pixels": [[255] * 28] * 28}).status_code == 413  # 3 KB of JSON
        assert c.get("/healthz").status_code == 200


def test_a_slow_model_times_out_with_504(served) -> None:
    class Slow:
        def __init__(self, inner: Predictor) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def predict(self, *args, **kwargs):
            time.sleep(0.5)
            return self.inner.predict(*args, **kwargs)

    app = create_app(ServeSettings(timeout_s=0.05), predictor=served.app.state.predictor)
    app.dependency_overrides[get_predictor] = lambda: Slow(app.state.predictor)
    with TestClient(app) as c:
        error_of(c.post("/v1/predict", json={"pixels": served.x[0].tolist()}), 504, "longer than")
        assert c.get("/healthz").status_code == 200


class Recording:
    """The served predictor, with each model call's batch size recorded and the first one slowed down."""

    def __init__(self, inner: Predictor, delay: float) -> None:
        self.inner, self.delay, self.batches = inner, delay, []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict_prepared(self, prepared, **kwargs):
        self.batches.append(len(prepared))
        if len(self.batches) == 1:
            time.sleep(self.delay)
        return self.inner.predict_prepared(prepared, **kwargs)


def test_concurrent_single_images_share_model_calls_and_a_bad_one_fails_alone(served) -> None:
    import httpx

    app = create_app(ServeSettings(), predictor=served.app.state.predictor)
    rec = Recording(app.state.predictor, delay=0.3)
    app.dependency_overrides[get_predictor] = lambda: rec

    async def go() -> list:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            first = asyncio.create_task(c.post("/v1/predict", files={"file": ("a.png", served.pngs[0], "image/png")}))
            await asyncio.sleep(0.1)  # the first request is in the model: the others queue behind it
            rest = [c.post("/v1/predict", files={"file": ("a.png", data, "image/png")}) for data in served.pngs[1:9]]
            bad = c.post("/v1/predict", content=b"not an image at all", headers={"content-type": "image/png"})
            return [await first, *await asyncio.gather(*rest, bad)]

    responses = asyncio.run(go())
    for r, label in zip(responses[:9], served.y[:9], strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["label"] == label
    error_of(responses[9], 422, "image")
    assert sum(rec.batches) == 9 and rec.batches[0] == 1 and max(rec.batches) > 1, rec.batches


class Faulty(Recording):
    """The recording predictor whose preparation of one payload fails with an unforeseen error, and
    whose model call fails for any batch holding one marked image."""

    def prepare(self, source, **kwargs):
        if source == b"crash-in-prepare":
            raise IndexError("index -1 is out of bounds for axis 0 with size 0")
        return self.inner.prepare(source, **kwargs)

    def predict_prepared(self, prepared, **kwargs):
        if any(p.image is not None and p.image[0, 0] == 1 for p in prepared):
            raise ValueError("the model choked on one image")
        return super().predict_prepared(prepared, **kwargs)


def test_a_thin_image_or_any_failing_job_fails_alone_among_concurrent_good_ones(served) -> None:
    import httpx

    app = create_app(ServeSettings(), predictor=served.app.state.predictor)
    rec = Faulty(app.state.predictor, delay=0.3)
    app.dependency_overrides[get_predictor] = lambda: rec
    thin = [png(np.full(shape, 255, np.uint8)) for shape in ((2, 700), (5000, 1), (10, 3300))]

    def post(c, data: bytes):
        return c.post("/v1/predict", files={"file": ("a.png", data, "image/png")})

    async def go() -> list:  # (the 500 is re-raised to the transport after it is sent: not here)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            first = asyncio.create_task(post(c, served.pngs[0]))
            await asyncio.sleep(0.1)  # the others queue behind the first and share the next model calls
            good = [post(c, data) for data in served.pngs[1:9]]
            bad = [post(c, t) for t in thin] + [post(c, b"crash-in-prepare")]
            return [await first, *await asyncio.gather(*good, *bad)]

    responses = asyncio.run(go())
    for r, label in zip(responses[:9], served.y[:9], strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["label"] == label
    for r in responses[9:12]:
        error_of(r, 422, "too thin to hold a digit")
    assert responses[12].status_code == 500, responses[12].text  # that one alone, in the usual one line
    assert responses[12].json() == {"error": "internal error (logged on the server)"}
    assert max(rec.batches) > 1, rec.batches

    # a model call that fails on one image of a batch is retried one by one: the others are answered
    prepared = [rec.inner.prepare(d) for d in served.pngs[:3]]
    marked = rec.inner.prepare(served.pngs[3])
    marked.image[0, 0] = 1
    jobs = [ImageJob(d, 3, None, "auto") for d in served.pngs[:4]]
    for job, p in zip(jobs, [*prepared, marked], strict=True):
        job.data = p  # type: ignore[assignment] - prepared already: prepare below hands it back
    batcher = MicroBatcher(rec, max_batch=8)
    rec.prepare = lambda source, **kw: source  # type: ignore[method-assign]
    outcomes = batcher._work(jobs)
    assert [o.label for o in outcomes[:3]] == served.y[:3], outcomes  # type: ignore[union-attr]
    assert isinstance(outcomes[3], ValueError)

    # the real endpoints answer a thin image in one line too (a line of digits: none found, not a 500)
    with TestClient(create_app(ServeSettings(), predictor=served.app.state.predictor)) as c:
        error_of(c.post("/v1/predict/batch", files=[("files", ("t.png", thin[0], "image/png"))]), 422, "too thin")
        r = c.post("/v1/read", files={"file": ("t.png", thin[1], "image/png")})
        assert r.status_code in (200, 422), r.text


def test_a_slow_model_times_out_with_504_for_images_too(served) -> None:
    app = create_app(ServeSettings(timeout_s=0.05), predictor=served.app.state.predictor)
    rec = Recording(app.state.predictor, delay=0.5)
    app.dependency_overrides[get_predictor] = lambda: rec
    with TestClient(app) as c:
        error_of(c.post("/v1/predict", files={"file": ("a.png", served.pngs[0], "image/png")}), 504, "longer than")
        time.sleep(0.6)  # the slow call finishes on its own; the next request is answered
        r = c.post("/v1/predict", files={"file": ("a.png", served.pngs[1], "image/png")})
        assert r.status_code == 200 and r.json()["label"] == served.y[1]


def test_an_unexpected_error_is_a_500_without_a_traceback(served) -> None:
    class Broken:
        def __getattr__(self, name: str):
            raise RuntimeError("secret internals /home/x/model.py line 3")

    app = create_app(ServeSettings(), predictor=served.app.state.predictor)
    app.dependency_overrides[get_predictor] = Broken
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", json={"pixels": served.x[0].tolist()})
        assert r.status_code == 500 and r.json() == {"error": "internal error (logged on the server)"}
        assert c.get("/healthz").status_code == 200


# ----------------------------------------------------------------------------------------- CORS

def test_cors_closed_by_default_and_open_when_configured(served) -> None:
    headers = {"Origin": FOREIGN}
    r = served.client.get("/v1/model", headers=headers)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = {**headers, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    r = served.client.options("/v1/predict", headers=pre)
    assert "access-control-allow-origin" not in r.headers and r.status_code != 500

    app = create_app(ServeSettings(cors_origins=["https://ok.example"]), predictor=served.app.state.predictor)
    with TestClient(app) as c:
        r = c.get("/v1/model", headers={"Origin": "https://ok.example"})
        assert r.headers["access-control-allow-origin"] == "https://ok.example"
        r = c.options("/v1/predict", headers={**pre, "Origin": "https://ok.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ok.example"
        assert "access-control-allow-origin" not in c.get("/v1/model", headers=headers).headers


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITLAB_SERVE_MODEL", "runs/x")
    monkeypatch.setenv("DIGITLAB_SERVE_MAX_BATCH", "8")
    monkeypatch.setenv("DIGITLAB_SERVE_CORS_ORIGINS", "https://a.example, https://b.example")
    s = ServeSettings()
    assert s.model == Path("runs/x") and s.max_batch == 8 and s.cors_origins == ["https://a.example",
                                                                                  "https://b.example"]
    assert s.max_body_bytes == 10 * 1024 * 1024 and s.top_k == 3
    monkeypatch.delenv("DIGITLAB_SERVE_CORS_ORIGINS")
    assert ServeSettings().cors_origins == []


# ----------------------------------------------------------------------------------------- fuzz

def test_fuzz_malformed_requests_never_500(served) -> None:
    """A bounded fuzz: random bytes, truncated and corrupted images, wrong fields and types; no 5xx."""
    rng = np.random.default_rng(7)
    c = served.client
    paths = ["/v1/predict", "/v1/predict/batch", "/v1/read"]
    good = served.pngs[0]
    types = ["application/json", "multipart/form-data; boundary=b", "image/png", "text/plain", "", "application/xml"]

    def junk() -> bytes:
        n = int(rng.integers(0, 3000))
        kind = rng.integers(0, 4)
        if kind == 0:
            return rng.bytes(n)
        if kind == 1:
            return good[: int(rng.integers(0, len(good)))]
        corrupt = bytearray(good)
        for i in rng.integers(8, len(corrupt), size=int(rng.integers(1, 20))):
            corrupt[i] = int(rng.integers(0, 256))
        return bytes(corrupt)

    def junk_json() -> object:
        choices = [
            lambda: {"image": b64(junk())}, lambda: {"pixels": rng.integers(-5, 300, (28, 28)).tolist()},
            lambda: {"pixels": rng.random((int(rng.integers(0, 40)), 28)).tolist()},
            lambda: {"images": [b64(junk()) for _ in range(int(rng.integers(0, 7)))]},
            lambda: {"image": 5}, lambda: {"pixels": "abc"}, lambda: {"top_k": -3, "image": b64(good)},
            lambda: None, lambda: "text", lambda: {"pixels": [[None] * 28] * 28}, lambda: {"images": "x"},
            lambda: {"image": b64(good), "n_digits": "two"}, lambda: {str(rng.integers(0, 9)): []},
        ]
        return choices[int(rng.integers(0, len(choices)))]()

    start, n, statuses = time.perf_counter(), 0, {}
    while n < 1000 and time.perf_counter() - start < 20:
        path = paths[int(rng.integers(0, len(paths)))]
        query = "" if rng.random() < 0.7 else f"?top_k={rng.integers(-2, 200)}&min_confidence={rng.normal():.2f}"
        form = rng.integers(0, 4)
        if form == 0:
            r = c.post(path + query, content=json.dumps(junk_json()).encode(),
                       headers={"content-type": "application/json"})
        elif form == 1:
            field = ["file", "files", "image", "x"][int(rng.integers(0, 4))]
            r = c.post(path + query, files=[(field, ("f.png", junk(), "image/png"))] * int(rng.integers(1, 7)))
        else:
            ct = types[int(rng.integers(0, len(types)))]
            r = c.post(path + query, content=junk(), headers={"content-type": ct} if ct else {})
        n += 1
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, query, r.status_code, r.text)
        if r.status_code >= 400:
            assert "error" in r.json(), r.text
    assert n >= 100, f"only {n} requests in the time bound"
    assert c.get("/readyz").status_code == 200  # still serving afterwards


# ----------------------------------------------------------------------------------------- slow and gone clients

def test_a_client_disconnect_is_one_info_line_without_a_traceback(served, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(ServeSettings(), predictor=served.app.state.predictor)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"t"), (b"content-type", b"image/png"), (b"content-length", b"5000")],
             "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80)}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}  # the client went away before sending its body

    async def send(message: dict) -> None:
        sent.append(message)

    with caplog.at_level("INFO"):
        asyncio.run(app(scope, receive, send))  # nothing escapes to the server (its "Exception in ASGI application")
    records = [r for r in caplog.records if r.name.startswith("digitlab")]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelname == "INFO" and records[0].exc_info is None
    assert "disconnected" in records[0].getMessage() and "\n" not in records[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= 30], [r.getMessage() for r in caplog.records]


@pytest.fixture
def real_server(served, monkeypatch: pytest.MonkeyPatch):
    """The app under a real uvicorn on 127.0.0.1 with the protocol and limits `digitlab serve` uses, and
    half-second head and body deadlines."""
    import socket
    import threading

    import uvicorn

    from digitlab.serve.protocol import HTTP_PROTOCOL

    monkeypatch.setenv("DIGITLAB_SERVE_HEADER_TIMEOUT_S", "0.5")
    app = create_app(ServeSettings(body_timeout_s=0.5), predictor=served.app.state.predictor)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=HTTP_PROTOCOL, log_level="warning",
                                           timeout_keep_alive=1, limit_concurrency=50, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield SimpleNamespace(port=port, png=served.pngs[0], label=served.y[0])
    server.should_exit = True
    thread.join(10)


def _closed_within(sock, seconds: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed (the test fails past ``seconds``)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the connection was still open after {seconds} s (received {data!r})")
    except OSError:  # reset by the server: closed too
        pass
    return data, time.monotonic() - start


def test_slow_clients_are_cut_off_at_the_head_and_body_deadlines(real_server) -> None:
    import socket

    import httpx

    port = real_server.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent, \
            socket.create_connection(("127.0.0.1", port), timeout=5) as partial_head, \
            socket.create_connection(("127.0.0.1", port), timeout=5) as partial_body:
        partial_head.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Ty")
        partial_body.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                             b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        data, took = _closed_within(partial_head, 5)
        assert data.startswith(b"HTTP/1.1 408"), data
        data, _ = _closed_within(silent, 5)  # a connection that never sends a byte is timed too
        assert data == b"", data  # (closed without a word: a browser's unused preconnect)
        data, _ = _closed_within(partial_body, 5)
        assert data.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in data, data
    assert took < 4, took
    with socket.create_connection(("127.0.0.1", port), timeout=5) as kept:  # a kept-alive connection's next head
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        first = b""
        while b'{"status":"ok"}' not in first:
            first += kept.recv(4096)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        data, _ = _closed_within(kept, 5)
        assert data.startswith(b"HTTP/1.1 408"), data
    # a client that keeps up is served as before, also on a kept-alive connection after its first request
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/predict", files={"file": ("a.png", real_server.png, "image/png")})
        assert r.status_code == 200 and r.json()["label"] == real_server.label, r.text


# ----------------------------------------------------------------------------------------- the command

def test_serve_command_runs_uvicorn(served, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv("DIGITLAB_SERVE_MODEL", "unset")  # restored (removed) after the test: the command sets it
    runner = CliRunner()
    r = runner.invoke(cli_app, ["serve", str(served.run), "--port", "8123"])
    assert r.exit_code == 0, r.output
    app, kw = calls[-1]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123 and app.state.predictor is not None
    # slow clients: the head deadline's protocol, the keep-alive timeout and the connection cap
    assert kw["http"] == "digitlab.serve.protocol:HeadTimeoutProtocol" and kw["timeout_keep_alive"] == 5
    assert kw["limit_concurrency"] == 1000
    monkeypatch.setenv("DIGITLAB_SERVE_MAX_CONNECTIONS", "200")
    assert runner.invoke(cli_app, ["serve", str(served.run)]).exit_code == 0
    assert calls[-1][1]["limit_concurrency"] == 200
    r = runner.invoke(cli_app, ["serve", str(served.run), "--workers", "2"])
    assert r.exit_code == 0, r.output
    app, kw = calls[-1]
    assert app == "digitlab.serve.app:app_from_env" and kw["factory"] and kw["workers"] == 2
    assert os.environ["DIGITLAB_SERVE_MODEL"] == str(served.run.resolve())


def test_two_workers_serve_and_metrics_count_both(served) -> None:
    """A real `digitlab serve --workers 2`: predictions from both, and /metrics sums their counts."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = str(Path(sys.executable).with_name("digitlab"))
    server = subprocess.Popen([exe, "serve", str(served.run), "--port", str(port), "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()[-2000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        n = 24
        for i in range(n):  # a connection each, so both workers take some (each accepts as it is free)
            data = served.pngs[i % len(served.pngs)]
            r = httpx.post(f"{url}/v1/predict", files={"file": ("d.png", data, "image/png")}, timeout=30)
            assert r.status_code == 200 and r.json()["label"] == served.y[i % len(served.y)]
        for _ in range(4):  # whichever worker answers, it reports both workers' requests
            with httpx.Client(base_url=url, timeout=30) as c:  # a new connection may reach the other worker
                text = c.get("/metrics").text
            assert metric(text, "digitlab_requests_total", endpoint="/v1/predict", method="POST", status="200") == n
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_serve_command_fails_in_one_line_on_a_bad_model(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli_app, ["serve", str(tmp_path)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digitlab: error: ") and "run directory" in lines[0], r.output


def test_predict_a_box_of_a_form(served) -> None:
    """A region of interest, in the query or the JSON body: only the digit inside it is read."""
    digit = np.asarray(Image.open(io.BytesIO(served.pngs[0])).convert("L"))
    other = np.asarray(Image.open(io.BytesIO(served.pngs[1])).convert("L"))
    form = np.concatenate([other, digit], axis=1)  # two fields side by side, the wanted one on the right
    buf = io.BytesIO()
    Image.fromarray(form).save(buf, format="PNG")
    h, w = digit.shape
    r = served.client.post(f"/v1/predict?box={other.shape[1]},0,{w},{h}", content=buf.getvalue(),
                           headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == served.y[0] and r.json()["box"][0] >= other.shape[1]
    r = served.client.post("/v1/predict", json={"image": b64(buf.getvalue()), "box": [0, 0, other.shape[1], h]})
    assert r.status_code == 200 and r.json()["label"] == served.y[1], r.text
    for bad in ("1,2", "0,0,0,5", f"{10 * w},0,5,5"):
        r = served.client.post(f"/v1/predict?box={bad}", content=buf.getvalue(), headers={"content-type": "image/png"})
        assert r.status_code == 422 and "box" in r.json()["error"], r.text
