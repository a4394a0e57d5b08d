"""Malformed requests and slow clients against ``digitlab serve``: 5xx, tracebacks, open connections, memory.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_fuzz.py RUN [--requests 6000]
        [--clients 4] [--slow 500] [--header-timeout 5] [--body-timeout 10] [--max-seconds 600]

RUN is a trained run directory (nothing is trained here). ``digitlab serve RUN`` is started on
127.0.0.1 (a free port) in its own process group, its log captured to a file, with
``DIGITLAB_SERVE_HEADER_TIMEOUT_S`` / ``DIGITLAB_SERVE_BODY_TIMEOUT_S`` set from the options (lower than
the defaults of 10 s / 30 s, to keep the run short). Then:

1. ``--requests`` malformed requests over raw sockets from ``--clients`` threads (bad JSON, wrong
   content types, truncated or corrupt PNG/JPEG, headers claiming huge dimensions, thin images
   1x5000 / 2x700 / 10x3300, base64 garbage, pixel arrays of the wrong shape or type or with NaN,
   bodies over the limit, path traversal in paths and filenames, unknown routes and methods, bad
   query values, multipart without a file, mismatched or invalid Content-Length, broken request
   lines), every tenth request a good one (a real MNIST test digit) whose answer must be 200;
2. ``--slow`` slow connections (a third send part of a request head, a third a head and part of the
   body, a third nothing), ``/healthz`` timed while they are open, and a count of those still open
   after the timeouts (plus a few seconds).

Reported: answers per status code, 5xx, good requests that failed, requests with no answer, any
answer to a traversal that leaked a file, "Traceback" lines in the server log, slow connections still
open, ``/healthz`` p50 / p99, the server's resident memory (VmRSS of the serving process and its
children) after a warm-up and at the end. Bounded in count and time; the server gets SIGTERM, then
SIGKILL. Results: benchmarks/results/fuzz.json.
"""

import argparse
import base64
import contextlib
import io
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from digitlab.data.loading import load_dataset
from machine_info import machine
from processes import free_port, rss_mb

HOST = "127.0.0.1"
BOUNDARY = "fuzzboundary7"


def _image(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR claims ``width`` x ``height`` (CRC recomputed)."""
    data = _image(np.zeros((28, 28), np.uint8))
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + data[33:]


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 marker claims ``width`` x ``height``."""
    data = bytearray(_image(np.zeros((28, 28), np.uint8), "JPEG"))
    i = data.find(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _request(method: str, path: str, body: bytes = b"", content_type: str | None = None,
             headers: list[tuple[str, str]] | None = None, length: int | str | None = -1) -> bytes:
    """Raw HTTP/1.1 request bytes; ``length`` -1: the true Content-Length, None: no header."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length == -1:
        length = len(body)
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _multipart(parts: list[tuple[str, str | None, bytes, str]], boundary: str = BOUNDARY) -> bytes:
    """(field, filename, data, content type) parts as a multipart/form-data body."""
    out = []
    for field, filename, data, ctype in parts:
        disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode("latin-1")
                   + data + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


MP = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"


def _exchange(port: int, raw: bytes, timeout: float, shut_write: bool = False) -> tuple[int | None, bytes]:
    """Send ``raw`` on a new connection, read the answer to EOF; (status or None, the answer's bytes).

    Without an answer the bytes say why: b"timeout", b"reset" (the server closed while this side was
    still sending) or b"closed" (closed without a byte).
    """
    data = b""
    why = b"closed"
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            with contextlib.suppress(OSError):  # the server may answer (413) and close before the body is sent
                s.sendall(raw)
            if shut_write:
                s.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            else:
                why = b"timeout"
    except TimeoutError:
        why = b"timeout"
    except OSError:
        why = b"reset"
    if data.startswith(b"HTTP/1."):
        with contextlib.suppress(ValueError):
            return int(data.split(b" ", 2)[1]), data
    return None, data or why


def _cases(good_png: bytes, good_pixels: list[list[int]], rng: random.Random) -> list[tuple[str, Callable]]:
    """(family, a function returning (raw request, shut the write side)) for each malformed request."""
    jpeg = _image(np.full((28, 28), 255, np.uint8), "JPEG")
    thin = {f"{w}x{h}": _image(np.full((h, w), 255, np.uint8)) for w, h in [(1, 5000), (2, 700), (10, 3300)]}
    thin["5000x1"] = _image(np.full((1, 5000), 255, np.uint8))
    b64 = lambda d: base64.b64encode(d).decode()  # noqa: E731
    routes = ["/v1/predict", "/v1/read", "/v1/predict/batch"]

    def on(route: str, payload: bytes, as_: str) -> bytes:
        """An image upload as multipart, raw body or base64 JSON (a list of one for the batch route)."""
        if as_ == "multipart":
            field = "files" if route.endswith("batch") else "file"
            return _request("POST", route, _multipart([(field, "x.png", payload, "image/png")]), MP)
        if as_ == "raw":
            return _request("POST", route, payload, "image/png")
        body = {"images": [b64(payload)]} if route.endswith("batch") else {"image": b64(payload)}
        return _request("POST", route, json.dumps(body).encode(), JSON)

    def corrupt(data: bytes) -> bytes:
        b = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)

    def image_case(make: Callable[[], bytes]) -> Callable:
        return lambda: (on(rng.choice(routes), make(), rng.choice(["multipart", "raw", "json"])), False)

    def body_case(route: str, body: Callable[[], bytes], ctype: str | None = JSON) -> Callable:
        return lambda: (_request("POST", route, body(), ctype), False)

    good_json = json.dumps({"pixels": good_pixels}).encode()
    pixels_bad = [
        {"pixels": good_pixels[:27]}, {"pixels": [*good_pixels[:27], [0] * 5]}, {"pixels": [0] * 784},
        {"pixels": [["a"] * 28] * 28}, {"pixels": [[300] * 28] * 28}, {"pixels": [[-1] * 28] * 28},
        {"pixels": None}, {"pixels": True}, {"pixels": [[[0] * 28] * 28] * 3}, {"pixels": [[0.5] * 5000] * 2},
        {"pixels": [[None] * 28] * 28}, {"pixels": "x" * 1000}, {"pixels": []}, {"pixels": [[]]},
        {"image": b64(good_png), "pixels": good_pixels}, {}, {"pixels": good_pixels, "top_k": -3},
        {"pixels": good_pixels, "min_confidence": "high"}, {"pixels": good_pixels, "return_prepared": "gif"},
    ]
    families: list[tuple[str, Callable]] = [
        ("bad json", body_case(rng.choice(routes), lambda: good_json[: rng.randrange(1, len(good_json))])),
        ("bad json", body_case("/v1/predict", lambda: rng.choice([b"{", b"}", b"nul", b'{"image": ', b"[" * 100_000,
                                                                  b"\xff\xfe{}", b'{"a":1,}', b"NaN", b"1e999999"]))),
        ("bad json", body_case("/v1/predict", lambda: bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))),
        ("wrong content type", lambda: (_request("POST", rng.choice(routes), good_json, rng.choice(
            ["text/plain", "application/xml", "image/png", "image/gif", "multipart/form-data", "application/x-www-form-"
             "urlencoded", "application/json; charset=utf-32", "*/*", "", "multipart/form-data; boundary="])), False)),
        ("wrong content type", lambda: (_request("POST", rng.choice(routes), good_png, None), False)),
        ("truncated png", image_case(lambda: good_png[: rng.randrange(1, len(good_png))])),
        ("corrupt png", image_case(lambda: corrupt(good_png))),
        ("truncated jpeg", image_case(lambda: jpeg[: rng.randrange(1, len(jpeg))])),
        ("corrupt jpeg", image_case(lambda: corrupt(jpeg))),
        ("huge dimensions", image_case(lambda: _png_claiming(rng.choice([100_000, 65_535, 1, 2**31 - 1]),
                                                             rng.choice([100_000, 1, 65_535, 2**31 - 1])))),
        ("huge dimensions", image_case(lambda: _jpeg_claiming(rng.choice([65_500, 1]), rng.choice([65_500, 30_000])))),
        ("thin image", image_case(lambda: thin[rng.choice(list(thin))])),
        ("base64 garbage", body_case("/v1/predict", lambda: json.dumps({"image": rng.choice(
            ["!!!", "====", "data:image/png;base64,", "data:image/png;base64,@@@", b64(os.urandom(50)), "a",
             "data:text/html;base64," + b64(b"<script>"), "\u2603" * 10, b64(good_png)[:-7]])}).encode())),
        ("base64 garbage", body_case("/v1/predict/batch", lambda: json.dumps(
            {"images": [b64(good_png), rng.choice(["%%%", b64(b"not an image"), ""])]}).encode())),
        ("bad pixels", body_case(rng.choice(["/v1/predict"]), lambda: json.dumps(rng.choice(pixels_bad)).encode())),
        ("bad pixels", body_case("/v1/predict", lambda: b'{"pixels": [' + b",".join(
            [b"[" + b",".join([rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400"])] * 28) + b"]"] * 28)
            + b"]}")),
        ("over the limit", lambda: (_request("POST", rng.choice(routes), b"x" * 100,
                                             rng.choice([JSON, MP, "image/png"]),
                                             length=rng.choice([10 * 1024 * 1024 + 1, 10**12, 2**63])), True)),
        ("over the limit", lambda: (_request("POST", "/v1/predict", b" " * (10 * 1024 * 1024 + rng.randint(1, 10**6)),
                                             JSON), False)),
        ("over the limit", lambda: (_request("POST", "/v1/predict", b"{}" * 10, JSON, length=None,
                                             headers=[("Transfer-Encoding", "chunked")])
                                    .replace(b"{}" * 10, b"FFFFFFF\r\n" + b" " * 5000), True)),
        ("path traversal", lambda: (_request("GET", rng.choice(
            ["/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
             "/static/..%2f..%2fetc/passwd",
             "/static/....//....//etc/passwd", "/docs-assets/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
             "/static/%252e%252e/etc/passwd", "/static//etc/passwd", "/static/..\\..\\etc\\passwd",
             "/static/%00../../etc/passwd", "/../../../../etc/passwd", "/static/" + "../" * 50 + "etc/passwd"])),
            False)),
        ("path traversal", lambda: (_request("POST", rng.choice(routes), _multipart(
            [("files" if rng.random() < 0.3 else "file", rng.choice(
                ["../../etc/passwd", "..\\..\\x.png", "/etc/passwd", "a\x00.png", "%2e%2e/x.png", "x" * 5000]),
              good_png, "image/png")]), MP), False)),
        ("unknown route", lambda: (_request(rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]),
                                            rng.choice(["/v2/predict", "/admin", "/v1/", "/v1/predict/x", "/.env",
                                                        "/v1/model/../../x", "/" + "a" * 4000, "/%ff%fe", "/metrics/x",
                                                        "/v1/predict", "/v1/read", "/healthz?x=" + "y" * 3000])),
                                   False)),
        ("bad query", lambda: (_request("POST", rng.choice(routes) + "?" + rng.choice(
            ["top_k=-1", "top_k=abc", "top_k=100000", "min_confidence=nan", "min_confidence=inf",
             "min_confidence=2", "min_confidence=-1", "return_prepared=xyz", "n_digits=-1", "n_digits=1000000000",
             "top_k=1&top_k=2", "top_k=%00", "min_confidence=1e999", "=&&&=", "top_k=" + "9" * 500]),
            good_json, JSON), False)),
        ("multipart without file", lambda: (_request("POST", rng.choice(routes), rng.choice([
            _multipart([("other", None, b"7", "text/plain")]), _multipart([]), b"",
            _multipart([("file", "x.png", good_png, "image/png")], boundary="other"),
            _multipart([("file", None, b"", "text/plain")]), b"--" + BOUNDARY.encode() + b"\r\ngarbage",
            _multipart([("file", "x.png", good_png, "image/png")])[:-40]]), MP), False)),
        ("mismatched content-length", lambda: (_request("POST", rng.choice(routes), good_json, JSON,
                                                        length=len(good_json) + rng.randint(1, 10_000)), True)),
        ("mismatched content-length", lambda: (_request("POST", rng.choice(routes), good_json + b"GARBAGE / HTTP/9\r\n",
                                                        JSON, length=len(good_json) // 2), False)),
        ("mismatched content-length", lambda: (_request("POST", rng.choice(routes), good_json, JSON,
                                                        length=rng.choice(["-1", "abc", "1e3", "0x10", "", "1 2"])),
                                               False)),
        ("mismatched content-length", lambda: (_request("POST", "/v1/predict", good_json, JSON, length=None,
                                                        headers=[("Content-Length", str(len(good_json))),
                                                                 ("Content-Length", "5")]), False)),
        ("broken http", lambda: (rng.choice([b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 100_000
                                             + b"\r\n\r\n", b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
                                             b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"\r\n\r\n\r\n",
                                             os.urandom(200)]), False)),
    ]
    return families


def _slow(port: int, n: int, body_timeout: float, header_timeout: float,
          health: Callable[[], tuple[int | None, float]]) -> dict[str, object]:
    """Open ``n`` slow connections, time /healthz while they are open, count those open after the timeouts."""
    socks: list[tuple[str, socket.socket]] = []
    kinds = ["partial head", "partial body", "silent"]
    for i in range(n):
        kind = kinds[i % 3]
        try:
            s = socket.create_connection((HOST, port), timeout=5)
        except OSError:
            continue
        if kind == "partial head":
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        elif kind == "partial body":
            s.sendall(_request("POST", "/v1/predict", b'{"pixels": [[0,', JSON, length=4000))
        socks.append((kind, s))
    opened = time.monotonic()

    def still_open() -> Counter:
        open_ = Counter()
        for kind, s in socks:
            if s.fileno() < 0:
                continue
            closed = False
            while True:
                r, _, _ = select.select([s], [], [], 0)
                if not r:
                    break
                try:
                    if not s.recv(65536):
                        closed = True
                        break
                except OSError:
                    closed = True
                    break
            if not closed:
                open_[kind] += 1
        return open_

    open_at_start = still_open()
    latencies, health_errors = [], 0
    while time.monotonic() - opened < min(header_timeout, body_timeout) * 0.8 or len(latencies) < 50:
        status, ms = health()
        if status == 200:
            latencies.append(ms)
        else:
            health_errors += 1
        if len(latencies) + health_errors >= 2000:
            break
        time.sleep(0.01)
    open_during = still_open()
    wait = max(header_timeout, body_timeout) + 5
    time.sleep(max(0.0, opened + wait - time.monotonic()))
    open_after = still_open()
    for _, s in socks:
        s.close()
    return {"opened": len(socks), "kinds": {k: sum(1 for kk, _ in socks if kk == k) for k in kinds},
            "open_right_after_opening": sum(open_at_start.values()),
            "open_after_healthz_checks": sum(open_during.values()),
            "checked_after_s": round(wait, 1), "still_open_after_timeouts": sum(open_after.values()),
            "still_open_by_kind": dict(open_after),
            "healthz": {"requests": len(latencies), "errors": health_errors,
                        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
                        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
                        "max_ms": round(max(latencies), 2) if latencies else None}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a trained run directory")
    parser.add_argument("--requests", type=int, default=6000, help="malformed requests")
    parser.add_argument("--good-every", type=int, default=10, help="a good request after this many malformed")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--header-timeout", type=float, default=5.0)
    parser.add_argument("--body-timeout", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the malformed-request phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/fuzz.json")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    ds = load_dataset("mnist")
    goods = [(255 - im).astype(np.uint8) for im in ds.test_images[:50]]
    good_pngs = [_image(g) for g in goods]
    families = _cases(good_pngs[0], goods[0].tolist(), rng)

    port = free_port()
    exe = str(Path(sys.executable).with_name("digitlab"))
    env = {**os.environ, "DIGITLAB_SERVE_HEADER_TIMEOUT_S": str(args.header_timeout),
           "DIGITLAB_SERVE_BODY_TIMEOUT_S": str(args.body_timeout)}
    log_path = Path(tempfile.mkdtemp(prefix="bench-fuzz-")) / "serve.log"
    log = log_path.open("wb")
    server = subprocess.Popen([exe, "serve", args.run, "--host", HOST, "--port", str(port)], stdout=log,
                              stderr=subprocess.STDOUT, env=env, start_new_session=True)
    result: dict[str, object] = {
        "run": args.run, "machine": machine(), "command": " ".join(sys.argv),
        "server_env": {"DIGITLAB_SERVE_HEADER_TIMEOUT_S": args.header_timeout,
                       "DIGITLAB_SERVE_BODY_TIMEOUT_S": args.body_timeout},
        "server_log": str(log_path)}
    timeout = max(args.body_timeout, args.header_timeout) + 5

    def health() -> tuple[int | None, float]:
        t0 = time.perf_counter()
        status, _ = _exchange(port, _request("GET", "/healthz", length=None), 5)
        return status, (time.perf_counter() - t0) * 1e3

    def good(k: int) -> tuple[int | None, bytes]:
        png = good_pngs[k % len(good_pngs)]
        raw = [_request("POST", "/v1/predict", _multipart([("file", "d.png", png, "image/png")]), MP),
               _request("POST", "/v1/predict", json.dumps({"pixels": goods[k % len(goods)].tolist()}).encode(), JSON),
               _request("POST", "/v1/predict/batch", json.dumps(
                   {"images": [base64.b64encode(p).decode() for p in good_pngs[:4]]}).encode(), JSON),
               _request("POST", "/v1/predict", png, "image/png")][k % 4]
        return _exchange(port, raw, timeout)

    try:
        deadline = time.monotonic() + 120  # bounded wait for the model to load
        while True:
            if server.poll() is not None:
                sys.exit(f"the server exited: {log_path.read_text()[-1000:]}")
            if _exchange(port, _request("GET", "/readyz", length=None), 1)[0] == 200:
                break
            if time.monotonic() > deadline:
                sys.exit("the server was not ready within 120 s")
            time.sleep(0.2)
        for k in range(40):  # warm up before the first memory reading
            good(k)
        rss_before = rss_mb(server.pid)

        statuses: Counter = Counter()
        by_family: dict[str, Counter] = {}
        good_statuses: Counter = Counter()
        leaks: list[str] = []
        no_answer: Counter = Counter()
        lock = threading.Lock()
        fuzz_deadline = time.monotonic() + args.max_seconds
        plan = [families[rng.randrange(len(families))] for _ in range(args.requests)]
        counter = iter(range(10**9))
        rss_trace: list[tuple[int, float]] = []  # (requests sent, MB), for the trend

        def one(i: int) -> None:
            if time.monotonic() > fuzz_deadline:
                return
            name, make = plan[i]
            with lock:
                raw, shut = make()
            status, data = _exchange(port, raw, timeout, shut)
            with lock:
                statuses[str(status)] += 1
                by_family.setdefault(name, Counter())[str(status)] += 1
                if status is None:
                    no_answer[f"{name}: {data[:20].decode(errors='replace')}"] += 1
                if b"root:x:0:0" in data:
                    leaks.append(name)
            if i % 500 == 0:
                with lock:
                    rss_trace.append((i, round(rss_mb(server.pid), 1)))
            if i % args.good_every == 0:
                g_status, _ = good(next(counter))
                with lock:
                    good_statuses[str(g_status)] += 1

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(args.requests)))
        fuzz_s = time.perf_counter() - t0
        sent = sum(statuses.values())
        fivexx = sum(v for k, v in statuses.items() if k.startswith("5"))
        result["malformed"] = {
            "requests": sent, "clients": args.clients, "seconds": round(fuzz_s, 1),
            "statuses": dict(sorted(statuses.items())), "5xx": fivexx, "no_answer": sum(no_answer.values()),
            "no_answer_by_family": dict(no_answer), "traversal_leaks": len(leaks),
            "by_family": {k: dict(sorted(v.items())) for k, v in sorted(by_family.items())},
            "good": {"requests": sum(good_statuses.values()), "statuses": dict(good_statuses),
                     "failed": sum(v for k, v in good_statuses.items() if k != "200")},
            "rss_mb_by_request": sorted(rss_trace)}
        print(json.dumps(result["malformed"], indent=1), flush=True)

        result["slow"] = _slow(port, args.slow, args.body_timeout, args.header_timeout, health)
        print(json.dumps(result["slow"], indent=1), flush=True)
        after = Counter(str(good(k)[0]) for k in range(40))  # the server still answers
        result["good_after"] = dict(after)
        result["ready_after"] = _exchange(port, _request("GET", "/readyz", length=None), 5)[0] == 200
        rss_after = rss_mb(server.pid)
        result["rss_mb"] = {"before": round(rss_before, 1), "after": round(rss_after, 1),
                            "growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
                            "note": "VmRSS of the serving process and its children; before: after 40 good requests"}
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)
        except ProcessLookupError:
            pass
        log.close()
    text = log_path.read_text(errors="replace")
    result["server_log_lines"] = len(text.splitlines())
    result["tracebacks"] = sum("Traceback" in line for line in text.splitlines())
    result["log_error_lines"] = sum(("ERROR" in line or "Exception in ASGI" in line) for line in text.splitlines())
    result["exit_code"] = server.returncode
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("tracebacks", "log_error_lines", "rss_mb")}, indent=1))


if __name__ == "__main__":
    main()
