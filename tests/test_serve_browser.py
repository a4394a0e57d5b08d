"""The drawing page in headless Chromium against the real app (uvicorn on 127.0.0.1): an empty canvas
says "draw a digit" and asks nothing, mouse strokes drawn as a 1 and a 7 are read as such, the 28x28
view shows what the model read, Clear starts over, a rejected drawing is shown as not read with the
API's reason (never a digit beside a percentage), and nothing is fetched from outside the app."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from conftest import chromium_path
from digitlab.training import config_from_recipe, train_run
from drive import draw

pytestmark = pytest.mark.mnist
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
# A small CNN on real MNIST: seconds of training, and enough to read clear strokes.
TINY = ["data.train_subset=6000", "data.n_val=500", "train.batch_size=100", "train.eval_batch_size=500",
        "model.args={blocks: [{filters: 8, pool_first: true, batch_norm: true}, "
        "{filters: 16, pool_first: true, batch_norm: true}], dense: []}", "train.epochs=3"]
START_TIMEOUT_S = 30
ANSWER_TIMEOUT_MS = 15_000
EMPTY = "draw a digit"

# Strokes in the canvas's own pixels (280 x 280), drawn like MNIST: centred, about 2/3 of the height.
ONE = [[(146, 52), (140, 140), (134, 228)]]
SEVEN = [[(84, 62), (150, 60), (198, 60), (170, 120), (142, 180), (124, 228)]]

# A filled square: strokes far wider than a pen's, which the service rejects whatever the model says.
BLOB = [[(70, y), (210, y)] for y in range(70, 215, 12)]

# Ink in the small canvas: how many pixels are bright, and the extent of the bright ones.
READ_PREPARED = """() => {
  const c = document.getElementById("prepared");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0, x0 = c.width, x1 = -1, y0 = c.height, y1 = -1;
  for (let i = 0; i < c.width * c.height; i++) {
    if (d[4 * i] > 127) {
      const x = i % c.width, y = Math.floor(i / c.width);
      n++; x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
  }
  return {size: [c.width, c.height], n, width: x1 - x0 + 1, height: y1 - y0 + 1};
}"""
# The page marks itself idle when no request is in flight or waiting.
SETTLED = f"""() => document.body.dataset.state === "idle"
  && document.getElementById("label").textContent !== "{EMPTY}" """


@pytest.fixture(scope="module")
def server(mnist_dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a free port of 127.0.0.1 with a freshly trained CNN; yields its base URL."""
    uvicorn = pytest.importorskip("uvicorn")
    from digitlab.serve.app import create_app
    from digitlab.serve.settings import ServeSettings

    run = train_run(config_from_recipe("fast", TINY), out_root=tmp_path_factory.mktemp("runs"),
                    show_progress=False).run_dir
    app = create_app(ServeSettings(model=Path(run)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the port stays ours from here: no race with another process
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            srv.should_exit = True
            pytest.fail(f"the app did not start on 127.0.0.1:{port} within {START_TIMEOUT_S} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def open_page(server: str, path: str = "/") -> Iterator[SimpleNamespace]:
    """The page at ``path`` in headless Chromium, with every URL it fetched and every script error it raised."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            seen = SimpleNamespace(page=page, fetched=[], errors=[])
            page.on("request", lambda r: seen.fetched.append(r.url))
            page.on("pageerror", lambda e: seen.errors.append(str(e)))
            page.goto(server + path, timeout=30_000)
            page.wait_for_load_state("networkidle")
            yield seen
        finally:
            browser.close()


def shifted(strokes: list[list[tuple[int, int]]], dx: int) -> list[list[tuple[int, int]]]:
    return [[(x + dx, y) for x, y in stroke] for stroke in strokes]


def shown(page) -> dict:
    page.wait_for_function(SETTLED, timeout=ANSWER_TIMEOUT_MS)
    return {"label": page.locator("#label").inner_text(), "status": page.locator("#status").inner_text(),
            "top_bar": page.evaluate("document.querySelector('#bars li.top')?.dataset.digit ?? null"),
            "prepared": page.evaluate(READ_PREPARED),
            "result": page.locator(".result").inner_text(), "why_hidden": page.locator("#why").is_hidden(),
            "reason": page.locator("#reason").inner_text(), "guess": page.locator("#guess").inner_text(),
            "confidence": page.locator("#confidence").inner_text()}


def assert_not_read(seen: dict, reason: str, guess: str | None) -> None:
    """What a rejected answer looks like: "not read", the API's reason as it is, the guess small and bare."""
    assert seen["label"] == "not read", seen
    assert not seen["why_hidden"] and seen["reason"] == reason, seen
    assert seen["guess"] == (f"best guess {guess}" if guess else ""), seen
    assert seen["confidence"] == "" and seen["top_bar"] is None, seen  # no percentage, no bar drawn
    assert "%" not in seen["result"] and "%" not in seen["status"], seen
    assert seen["status"].startswith(f"Not read: {reason}"), seen


def test_drawing_page_reads_a_1_and_a_7(server: str, tmp_path: Path) -> None:
    with open_page(server) as seen:
        page = seen.page
        calls = lambda: sum("/v1/predict" in u for u in seen.fetched)  # noqa: E731
        empty = page.locator("#label").inner_text()
        blank_prepared = page.evaluate(READ_PREPARED)
        calls_when_empty = calls()
        assert page.locator("#pad").get_attribute("role") == "img"
        assert page.locator("#pad").get_attribute("aria-label")
        assert page.locator("#status").get_attribute("aria-live") == "polite"

        draw(page, ONE)
        one = shown(page)
        calls_for_one = calls() - calls_when_empty
        page.screenshot(path=str(tmp_path / "one.png"), full_page=True)

        page.get_by_role("button", name="Clear").click()
        cleared = page.locator("#label").inner_text()
        cleared_prepared = page.evaluate(READ_PREPARED)

        draw(page, SEVEN)
        seven = shown(page)
        page.screenshot(path=str(tmp_path / "seven.png"), full_page=True)
        page.get_by_role("button", name="Clear").click()
        last = page.locator("#label").inner_text()

    assert empty == EMPTY and blank_prepared["n"] == 0
    assert calls_when_empty == 0  # an empty canvas is never sent: no guess without ink
    assert calls_for_one >= 1
    assert one["label"] == "1", one
    assert one["top_bar"] == "1", one
    assert one["prepared"]["size"] == [28, 28] and one["prepared"]["n"] >= 15, one
    assert one["prepared"]["height"] > 2 * one["prepared"]["width"], one  # a tall, narrow stroke
    assert seven["label"] == "7", seven
    assert seven["top_bar"] == "7", seven
    assert seven["prepared"]["n"] >= 25 and seven["prepared"]["height"] >= 15, seven
    assert cleared == EMPTY and cleared_prepared["n"] == 0 and last == EMPTY
    assert [u for u in seen.fetched if not u.startswith((server, "data:"))] == []  # works offline
    assert seen.errors == []
    assert (tmp_path / "one.png").stat().st_size > 10_000 and (tmp_path / "seven.png").stat().st_size > 10_000


def test_upload_digit_strings_keyboard_and_api_errors(server: str, mnist_dataset, tmp_path: Path) -> None:
    # A scan-like upload: an MNIST test digit, dark on white and enlarged.
    digit, truth = mnist_dataset.test_images[0], str(mnist_dataset.test_labels[0])
    big = Image.fromarray(255 - digit).resize((112, 112), Image.Resampling.BICUBIC)
    big.save(tmp_path / "digit.png")
    with open_page(server) as seen:
        page = seen.page
        page.set_input_files("#upload", str(tmp_path / "digit.png"))
        uploaded = shown(page)

        # Keyboard: Tab reaches every control, and the focused one is outlined.
        page.get_by_role("button", name="Clear").click()
        page.locator("body").focus()
        focused, outlines = [], []
        for _ in range(6):
            page.keyboard.press("Tab")
            focused.append(page.evaluate("document.activeElement.id"))
            outlines.append(page.evaluate("getComputedStyle(document.activeElement).outlineStyle"))

        page.locator("#mode").focus()
        page.keyboard.press("Enter")  # a real <button>: the keyboard switches to digit-string mode
        pressed = page.locator("#mode").get_attribute("aria-pressed")
        wide = page.evaluate("document.getElementById('pad').width")
        draw(page, shifted(ONE, 160) + shifted(SEVEN, 360))
        line = shown(page)
        digits = page.locator("#digits li").count()
        page.screenshot(path=str(tmp_path / "string.png"), full_page=True)

        # An API error is a message on the page, not an exception.
        page.locator("#mode").click()
        page.route("**/v1/predict", lambda route: route.fulfill(
            status=422, content_type="application/json", body='{"error": "image: not valid base64"}'))
        draw(page, ONE)
        page.wait_for_function("document.body.dataset.state === 'idle'", timeout=ANSWER_TIMEOUT_MS)
        status = page.locator("#status").inner_text()
        status_class = page.locator("#status").get_attribute("class")

        # Ink the model finds no digit in (found: false) is no guess either.
        page.get_by_role("button", name="Clear").click()
        page.unroute("**/v1/predict")
        page.route("**/v1/predict", lambda route: route.fulfill(status=200, content_type="application/json", body=(
            '{"label": null, "confidence": 0, "probabilities": {}, "top_k": [], "rejected": true,'
            ' "reason": "no digit found", "found": false, "prepared": null}')))
        draw(page, [[(140, 140), (142, 141)]])
        page.wait_for_function("document.body.dataset.state === 'idle'", timeout=ANSWER_TIMEOUT_MS)
        not_found = page.locator("#label").inner_text()

    assert uploaded["label"] == truth, uploaded
    assert uploaded["prepared"]["n"] >= 15, uploaded
    assert {"clear", "upload", "mode"} <= set(focused), focused
    assert all(o != "none" for f, o in zip(focused, outlines, strict=True) if f in {"clear", "mode"}), outlines
    assert pressed == "true" and wide > 2 * 280
    assert line["label"] == "17" and digits == 2, line
    assert status.startswith("Error: 422") and "not valid base64" in status and "error" in (status_class or "")
    assert not_found == EMPTY
    assert seen.errors == []
    assert (tmp_path / "string.png").exists()


def test_api_docs_render_offline(server: str) -> None:
    with open_page(server, "/docs") as seen:
        seen.page.wait_for_selector(".opblock", timeout=30_000)  # Swagger UI drew the operations
        operations = seen.page.locator(".opblock-summary-path").all_inner_texts()
        assert {"/v1/predict", "/v1/predict/batch", "/v1/read", "/v1/model"} <= {o.strip() for o in operations}
        assert [u for u in seen.fetched if not u.startswith((server, "data:"))] == []  # no CDN
        assert seen.errors == []


def test_a_rejected_drawing_is_not_read(server: str) -> None:
    # The letter A of the report, as the service answered it: the model's 4 at 100%, rejected by the detector.
    # The reason is whatever the API says; the page shows it as it is.
    letter_a = {"label": "4", "confidence": 1.0, "probabilities": {str(d): float(d == 4) for d in range(10)},
                "top_k": [{"label": "4", "probability": 1.0}], "rejected": True,
                "reason": "does not look like a digit", "found": True, "prepared": None}
    line = {"text": "1?7", "confidence": 0.2, "found": True, "inverted": False, "notes": [],
            "digits": [{"label": "1", "confidence": 0.99, "box": [0, 0, 1, 1], "rejected": False},
                       {"label": "4", "confidence": 1.0, "box": [1, 0, 2, 1], "rejected": True},
                       {"label": "7", "confidence": 0.98, "box": [2, 0, 3, 1], "rejected": False}]}
    with open_page(server) as seen:
        page = seen.page
        answers = []  # the service's answers, in order: one request is in flight at a time
        page.on("response", lambda r: answers.append(r) if "/v1/predict" in r.url else None)
        page.route("**/v1/predict", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(letter_a)))
        draw(page, [[(80, 230), (140, 50), (200, 230)], [(105, 150), (175, 150)]])
        mocked = shown(page)

        # The real service on a filled square: rejected for its strokes, whatever the model's guess.
        page.get_by_role("button", name="Clear").click()
        page.unroute("**/v1/predict")
        draw(page, BLOB)
        blob = shown(page)
        api = answers[-1].json()  # what the service said about the finished drawing

        # Then a clear 1 again: read as before, the "not read" gone.
        page.get_by_role("button", name="Clear").click()
        draw(page, ONE)
        one = shown(page)

        # String mode: a digit not read is a "?" with its guess, and the line gets no confidence.
        page.get_by_role("button", name="Digit-string mode").click()
        page.route("**/v1/read", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(line)))
        draw(page, shifted(ONE, 160))
        page.wait_for_function(SETTLED, timeout=ANSWER_TIMEOUT_MS)
        chips = page.locator("#digits li").all_inner_texts()
        string = {"label": page.locator("#label").inner_text(), "status": page.locator("#status").inner_text(),
                  "confidence": page.locator("#confidence").inner_text(), "why": page.locator("#why").inner_text()}

    assert_not_read(mocked, "does not look like a digit", "4")
    assert "100%" not in mocked["result"] and "not sure" not in mocked["result"]
    assert api["rejected"] is True and api["reason"], api
    assert_not_read(blob, api["reason"], api["label"])
    assert one["label"] == "1" and one["why_hidden"] and "%" in one["confidence"], one
    assert string["label"] == "1?7" and string["confidence"] == "", string
    assert [c.split()[0] for c in chips] == ["1", "?", "7"] and "%" not in chips[1], chips
    assert "not read" in chips[1] and "best guess 4" in chips[1], chips
    assert "1 of 3 digits not read" in string["status"] and "? = not read" in string["why"], string
    assert seen.errors == []
