"""The HTML report in headless Chromium: it renders offline, every image loads, nothing is fetched."""

from pathlib import Path

import pytest

from conftest import chromium_path
from digitlab.evaluation.evaluate import evaluate_run
from digitlab.evaluation.report import write_report
from digitlab.inference.rejection import calibrate_run
from digitlab.training import config_from_recipe, train_run

pytestmark = pytest.mark.mnist
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TINY = ["data.train_subset=400", "data.n_val=200", "train.batch_size=50", "train.eval_batch_size=500"]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory, mnist_dataset) -> Path:
    cfg = config_from_recipe("fast", TINY)
    run = train_run(cfg, out_root=tmp_path_factory.mktemp("runs"), show_progress=False).run_dir
    calibrate_run(run)
    evaluate_run(run, robustness=True, robustness_samples=100)
    html, _ = write_report(run)
    return html


def test_report_renders_offline_in_chromium(report_html: Path, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            fetched: list[str] = []
            page.on("request", lambda r: fetched.append(r.url))
            page.goto(report_html.as_uri(), timeout=30_000)
            headings = page.locator("h2").all_inner_texts()
            images = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert headings == ["Findings", "Dataset", "Training", "Metrics", "Figures", "Robustness", "Config"]
    assert len(images) >= 9 and all(ok for _, ok in images), images
    assert [u for u in fetched if not u.startswith(("file:", "data:"))] == []
    assert (tmp_path / "report.png").stat().st_size > 50_000
