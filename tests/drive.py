"""Helpers that drive a browser page and a server process, shared by the browser tests, the README test
and scripts/screenshots.py (which puts this folder on its path)."""

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

STOP_TIMEOUT_S = 10


def draw(page, strokes: list[list[tuple[int, int]]], steps: int = 12) -> None:
    """Mouse strokes through the given points of the drawing page's canvas, in many small moves as a hand
    makes them."""
    box = page.locator("#pad").bounding_box()
    width = page.evaluate("document.getElementById('pad').width")
    height = page.evaluate("document.getElementById('pad').height")

    def at(p: tuple[int, int]) -> tuple[float, float]:
        return box["x"] + p[0] * box["width"] / width, box["y"] + p[1] * box["height"] / height

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for p in stroke[1:]:
            page.mouse.move(*at(p), steps=steps)
        page.mouse.up()


def stop_group(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """End a process started in its own process group (``start_new_session=True``): SIGTERM, then SIGKILL
    after ``timeout`` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)


def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> str | None:
    """Poll ``url``/readyz until it answers 200; the reason it never did (the process exited, or ``timeout``
    seconds passed), or None when it is ready."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            return f"the server exited with code {process.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            return f"no server ready at {url} within {timeout:g} s"
        time.sleep(0.25)
