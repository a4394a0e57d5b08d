"""Load on the REST service: requests/s, p50 and p99 latency, errors, memory; then a fuzz of malformed requests.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_serve.py [RUN] [--seconds 60]
        [--workers 1 2] [--concurrency 16] [--client wrk|httpx] [--fuzz 10000]

For each worker count, ``digitlab serve RUN --workers W`` is started as its own process on 127.0.0.1
(a free port), and a load generator in another process sends single-image ``POST /v1/predict``
requests with ``--concurrency`` in flight for ``--seconds``: a multipart upload of a 28x28 MNIST test
digit drawn dark on white as PNG (prepared by the service, as a drawing page or an upload would be).
The generator is Debian's ``wrk`` (C, one thread: it leaves the 2 cores to the server; ``apt install
wrk``) when present, else this script's asyncio httpx client, which itself needs about a core.
Reported: requests/s, p50 / p99 latency, non-200 answers and connection errors,
and the server's resident memory (all its processes) at the start, every few seconds, and at the
end. Then ``--fuzz`` malformed requests (random bytes, truncated PNGs, wrong content types, bad
JSON, wrong-shaped or NaN arrays, oversized bodies) against the same server, counting any 5xx.
Both loops are bounded in count and time. Results: benchmarks/results/serve.json.
"""

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from digitlab.data.loading import load_dataset
from machine_info import machine
from processes import free_port, rss_mb


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


async def _load(url: str, bodies: list[bytes], seconds: float, concurrency: int, pid: int) -> dict[str, object]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    memory = [(0.0, rss_mb(pid))]
    start = time.perf_counter()
    deadline = start + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0) as client:

        async def one(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", files={"file": ("digit.png", body, "image/png")})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1e3)

        async def watch() -> None:
            while time.perf_counter() < deadline:
                await asyncio.sleep(5)
                memory.append((time.perf_counter() - start, rss_mb(pid)))

        await asyncio.gather(watch(), *(one(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    memory.append((elapsed, rss_mb(pid)))
    ok = statuses.get(200, 0)
    return {"client": "httpx", "seconds": elapsed, "requests": len(latencies),
            "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "non_200": len(latencies) - ok,
            "connection_errors": errors, "rss_mb": [[round(t, 1), round(m, 1)] for t, m in memory]}


WRK_SCRIPT = r"""
local bodies, n, i = {}, 0, 0
for path in io.lines("%(list)s") do
  local f = assert(io.open(path, "rb")); n = n + 1; bodies[n] = f:read("*a"); f:close()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=%(boundary)s"
request = function()
  i = i %% n + 1
  return wrk.format(nil, "/v1/predict", nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "connect": %%d, ' ..
    '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _wrk_load(url: str, bodies: list[bytes], seconds: float, concurrency: int, pid: int,
              folder: Path) -> dict[str, object]:
    """The same load from wrk: multipart bodies written to files, rotated by a Lua script."""
    boundary = "digitlab-bench-boundary"
    paths = []
    for k, body in enumerate(bodies):
        path = folder / f"body-{k}.bin"
        path.write_bytes(b"".join([f"--{boundary}\r\n".encode(), b'Content-Disposition: form-data; name="file"; '
                                   b'filename="digit.png"\r\nContent-Type: image/png\r\n\r\n', body,
                                   f"\r\n--{boundary}--\r\n".encode()]))
        paths.append(str(path))
    (folder / "bodies.txt").write_text("\n".join(paths) + "\n")
    script = folder / "predict.lua"
    script.write_text(WRK_SCRIPT % {"list": folder / "bodies.txt", "boundary": boundary})
    memory = [(0.0, rss_mb(pid))]
    start = time.perf_counter()
    proc = subprocess.Popen(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s", "-s",
                             str(script), url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and time.perf_counter() - start < seconds + 30:
        time.sleep(5)
        memory.append((time.perf_counter() - start, rss_mb(pid)))
    out, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        sys.exit(f"wrk failed: {err[-500:]}")
    r = json.loads(out.strip().splitlines()[-1])
    memory.append((time.perf_counter() - start, rss_mb(pid)))
    elapsed = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {"client": "wrk", "seconds": elapsed, "requests": r["requests"],
            "requests_per_s": r["requests"] / elapsed, "p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
            "non_200": r["status"], "connection_errors": errors, "rss_mb": [[round(t, 1), round(m, 1)]
                                                                            for t, m in memory]}


def _malformed(rng: np.random.Generator, good: bytes) -> tuple[str, dict[str, object]]:
    kind = int(rng.integers(8))
    if kind == 0:
        return "random bytes", {"content": rng.bytes(int(rng.integers(0, 4096))),
                                "headers": {"content-type": "image/png"}}
    if kind == 1:
        return "truncated png", {"files": {"file": ("x.png", good[: int(rng.integers(1, len(good)))], "image/png")}}
    if kind == 2:
        return "wrong content type", {"content": good, "headers": {"content-type": "text/plain"}}
    if kind == 3:
        return "bad json", {"content": b'{"image": ' + rng.bytes(20), "headers": {"content-type": "application/json"}}
    if kind == 4:
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        return "wrong-shape pixels", {"json": {"pixels": rng.integers(0, 256, shape).tolist()}}
    if kind == 5:
        return "nan pixels", {"content": json.dumps({"pixels": [[float("nan")] * 28] * 28}).encode(),
                              "headers": {"content-type": "application/json"}}
    if kind == 6:
        return "bad base64", {"json": {"image": base64.b64encode(rng.bytes(64)).decode()[:-3] + "!"}}
    return "oversized", {"content": b"0" * (11 * 1024 * 1024), "headers": {"content-type": "image/png"}}


async def _fuzz(url: str, n: int, good: bytes, seconds: float) -> dict[str, object]:
    rng = np.random.default_rng(0)
    statuses: dict[int, int] = {}
    five: dict[str, int] = {}
    errors = 0
    deadline = time.perf_counter() + seconds
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        sem = asyncio.Semaphore(8)

        async def one() -> None:
            nonlocal errors, sent
            kind, kw = _malformed(rng, good)
            async with sem:
                if time.perf_counter() > deadline:
                    return
                try:
                    r = await client.post("/v1/predict", **kw)
                except httpx.HTTPError:
                    errors += 1
                    return
                sent += 1
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    five[kind] = five.get(kind, 0) + 1

        for start in range(0, n, 500):
            await asyncio.gather(*(one() for _ in range(min(500, n - start))))
    return {"sent": sent, "statuses": {str(k): v for k, v in sorted(statuses.items())}, "server_errors": five,
            "connection_errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default="runs/bench/default-seed0")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    parser.add_argument("--fuzz", type=int, default=10000)
    parser.add_argument("--out", default="benchmarks/results/serve.json")
    args = parser.parse_args()
    ds = load_dataset("mnist")
    bodies = [_png(255 - im) for im in ds.test_images[:500]]
    result: dict[str, object] = {"run": args.run, "machine": machine(), "command": " ".join(sys.argv),
                                 "concurrency": args.concurrency, "load": {}}
    exe = str(Path(sys.executable).with_name("digitlab"))
    for workers in args.workers:
        port = free_port()
        server = subprocess.Popen([exe, "serve", args.run, "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", str(workers)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env={**os.environ}, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):  # at most 60 s to load the model
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    sys.exit(f"the server exited: {server.stderr.read().decode()[-500:]}")
                time.sleep(0.1)
            else:
                sys.exit("the server did not become ready in 60 s")
            asyncio.run(_load(url, bodies[:20], 3, args.concurrency, server.pid))  # warm-up
            if args.client == "wrk":
                with tempfile.TemporaryDirectory() as tmp:
                    row = _wrk_load(url, bodies[:100], args.seconds, args.concurrency, server.pid, Path(tmp))
            else:
                row = asyncio.run(_load(url, bodies, args.seconds, args.concurrency, server.pid))
            if workers == args.workers[0] and args.fuzz:
                row["fuzz"] = asyncio.run(_fuzz(url, args.fuzz, bodies[0], seconds=600))
                row["ready_after_fuzz"] = httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            result["load"][str(workers)] = row  # type: ignore[index]
            print(f"{workers} worker(s): {row['requests_per_s']:,.0f} requests/s, p50 {row['p50_ms']:.1f} ms, "
                  f"p99 {row['p99_ms']:.1f} ms, non-200 {row['non_200']}, connection errors "
                  f"{row['connection_errors']}, RSS {row['rss_mb'][0][1]:.0f} -> {row['rss_mb'][-1][1]:.0f} MB"
                  + (f"; fuzz: {row['fuzz']['sent']} sent, 5xx {sum(row['fuzz']['server_errors'].values())}"
                     if "fuzz" in row else ""), flush=True)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
