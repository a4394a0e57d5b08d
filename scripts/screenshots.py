"""Screenshots for the README: the drawing page with a digit drawn on it, and a run's HTML report.

Trains nothing: takes an evaluated run directory, writes its report (``digitlab report RUN``), serves
it with ``digitlab serve`` on 127.0.0.1, and drives Debian's chromium through Playwright. Every wait
is bounded; the server is stopped on the way out, whatever happens.

Usage: .venv/bin/python scripts/screenshots.py RUN [--out docs/images]
"""

import argparse
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from drive import draw, stop_group, wait_ready

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
HOST = "127.0.0.1"
START_TIMEOUT_S = 90  # loading the model and importing the app, on a busy 2-core machine
REPORT_TIMEOUT_S = 300
PAGE_TIMEOUT_MS = 30_000
ANSWER_TIMEOUT_MS = 20_000
STOP_TIMEOUT_S = 10
EMPTY = "draw a digit"
# A 3 in the canvas's own pixels (280 x 280), drawn as a hand does: centred, about 2/3 of its height.
THREE = [[(96, 70), (130, 52), (172, 56), (190, 86), (176, 116), (140, 132),
          (182, 146), (198, 180), (184, 214), (146, 230), (98, 218)]]
SETTLED = f"""() => document.body.dataset.state === "idle"
  && document.getElementById("label").textContent !== "{EMPTY}" """


def fail(message: str) -> None:
    print(f"screenshots: error: {message}", file=sys.stderr)
    sys.exit(2)


def digitlab(*args: str) -> list[str]:
    """The digitlab command of this interpreter's environment."""
    return [sys.executable, "-m", "digitlab", *args]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def serving(run: Path) -> Iterator[str]:
    """``digitlab serve RUN`` on a free port of 127.0.0.1 until the block ends; yields its base URL."""
    port = free_port()
    server = subprocess.Popen(digitlab("serve", str(run), "--host", HOST, "--port", str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        problem = wait_ready(url, server, START_TIMEOUT_S)
        if problem is not None:
            fail(f"digitlab serve: {problem}" + (f": {server.stderr.read().strip()[-500:]}" if server.poll() is not None
                                                 else ""))
        yield url
    finally:
        stop_group(server, STOP_TIMEOUT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="an evaluated run directory (digitlab evaluate RUN)")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    if not (args.run / "eval" / "metrics.json").is_file():
        fail(f"{args.run}: not evaluated (run `digitlab evaluate {args.run}` first)")
    if not Path(CHROMIUM).exists():
        fail(f"{CHROMIUM} not found (apt install chromium)")
    from playwright.sync_api import sync_playwright

    report = subprocess.run(digitlab("report", str(args.run)), capture_output=True, text=True,
                            timeout=REPORT_TIMEOUT_S)
    if report.returncode != 0:
        fail(f"digitlab report failed: {report.stderr.strip()[-500:]}")
    report_html = (args.run / "eval" / "report.html").resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    with serving(args.run) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=PAGE_TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(url + "/", timeout=PAGE_TIMEOUT_MS)
            page.wait_for_load_state("networkidle", timeout=PAGE_TIMEOUT_MS)
            draw(page, THREE)
            page.wait_for_function(SETTLED, timeout=ANSWER_TIMEOUT_MS)
            label = page.locator("#label").inner_text()
            page.screenshot(path=str(args.out / "drawing-page.png"), full_page=True, timeout=PAGE_TIMEOUT_MS)

            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.goto(report_html.as_uri(), timeout=PAGE_TIMEOUT_MS)
            page.wait_for_load_state("load", timeout=PAGE_TIMEOUT_MS)
            page.screenshot(path=str(args.out / "report.png"), timeout=PAGE_TIMEOUT_MS)  # the top: findings, metrics
        finally:
            browser.close()
    print(f"drawing page (a 3 drawn, read as {label}): {args.out / 'drawing-page.png'}")
    print(f"report: {args.out / 'report.png'}")


if __name__ == "__main__":
    main()
