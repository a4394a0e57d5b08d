"""The robustness sweep's two curves (raw tensors, and through the real-image preparation), its docstring
example run as written, and the report's and figure's words for what each curve measured."""

import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from digitlab.evaluation import plots, robustness
from digitlab.evaluation.report import findings
from digitlab.evaluation.robustness import PREPARED, PREPARED_INPUT, RAW_INPUT, robustness_sweep

CENTRE = 14.0  # where the preparation puts a digit's centre of mass in the 28x28 frame


def rings(n: int) -> np.ndarray:
    """``n`` digit-like rings (a 0, strokes about 2.5 px wide), centred in the 28x28 frame."""
    ys, xs = np.mgrid[:28, :28]
    r = np.hypot(ys - CENTRE, xs - CENTRE)
    ring = np.clip(1.25 - np.abs(r - 7.0), 0, 1)
    return np.repeat((255 * ring).astype(np.uint8)[None], n, axis=0)


def centred(images: np.ndarray) -> np.ndarray:
    """A 'model' that answers 1 when the ink's centre of mass is near the frame's centre, else 0."""
    ys, xs = np.mgrid[:28, :28]
    w = images.astype(np.float64)
    mass = np.maximum(w.sum(axis=(1, 2)), 1e-9)
    cy, cx = (w * ys).sum(axis=(1, 2)) / mass, (w * xs).sum(axis=(1, 2)) / mass
    return ((np.abs(cy - CENTRE) < 2) & (np.abs(cx - CENTRE) < 2)).astype(np.int64)


def test_the_preparation_undoes_a_shift_that_the_raw_curve_keeps() -> None:
    images, labels = rings(8), np.ones(8, dtype=np.int64)
    sweep = robustness_sweep(centred, images, labels, n=None, seed=0)
    shift = sweep["translation"]
    assert shift["input"] == RAW_INPUT and "without the real-image preparation" in shift["input"]
    assert shift["prepared_input"] == PREPARED_INPUT
    assert shift["accuracy"][0] == shift["accuracy_prepared"][0] == 1.0  # unshifted: both read it
    assert shift["accuracy"][-1] == 0.0  # 8 px off centre as a raw tensor
    assert shift["accuracy_prepared"][-1] == 1.0  # re-centred by the preparation
    assert shift["no_digit_found_prepared"] == [0] * len(shift["levels"])
    for name, r in sweep.items():
        assert ("accuracy_prepared" in r) == (name in PREPARED), name
        if name in PREPARED:
            assert len(r["accuracy_prepared"]) == len(r["levels"]) == len(r["no_digit_found_prepared"])


def test_raw_only_sweep_and_unknown_names() -> None:
    images, labels = rings(3), np.ones(3, dtype=np.int64)
    sweep = robustness_sweep(centred, images, labels, n=None, prepared=())
    assert all("accuracy_prepared" not in r and r["input"] == RAW_INPUT for r in sweep.values())
    with pytest.raises(ValueError, match="unknown perturbation"):
        robustness_sweep(centred, images, labels, prepared=("smudge",))


@pytest.mark.mnist
def test_the_module_doc_example_runs_as_written(small_cnn, mnist_dataset) -> None:
    block = robustness.__doc__.split("Usage::", 1)[1].split("\n\n")[1]
    namespace = {**vars(robustness), "predictor": small_cnn, "images": mnist_dataset.test_images[:40],
                 "labels": mnist_dataset.test_labels[:40].astype(np.int64)}
    code = "\n".join(line[4:] for line in block.splitlines())
    exec(compile(code, "robustness.__doc__", "exec"), namespace)  # our own docstring, run as a doctest would
    results = namespace["results"]
    shift = results["translation"]
    assert shift["n"] == 40 and len(shift["accuracy"]) == len(shift["accuracy_prepared"]) == len(shift["levels"])
    assert shift["accuracy"][0] > 0.8  # class indices compared with labels: a real accuracy, not chance
    assert shift["accuracy_prepared"][-1] > shift["accuracy"][-1]  # 8 px: re-centred by the preparation


# ---------------------------------------------------------------------------------------------------------------
# What the report and the figure say about the sweep


def metrics(prepared: bool) -> dict:
    """An evaluated run's metrics with a sweep, with or without the prepared curves (older sweeps lack them)."""
    rob = {
        "translation": {"levels": [0.0, 8.0], "accuracy": [0.99, 0.22], "labels": ["shifted 0 px", "shifted 8 px"],
                        "unit": "pixels", "n": 2000},
        "invert": {"levels": [0.0, 1.0], "accuracy": [0.99, 0.10], "labels": ["inverted (0)", "inverted (1)"],
                   "unit": "on/off", "n": 2000},
    }
    if prepared:
        rob["translation"]["accuracy_prepared"] = [0.99, 0.94]
        rob["invert"]["accuracy_prepared"] = [0.99, 0.99]
    per_class = [{"class": str(c), "f1": 0.99, "recall": 0.99} for c in range(10)]
    return {"accuracy": 0.99, "accuracy_ci95": [0.98, 0.995], "n": 10000, "split": "test", "errors": 100,
            "top2_accuracy": 0.995, "top_confusions": [{"true": "4", "pred": "9", "count": 9}],
            "per_class": per_class, "robustness": rob,
            "calibration": {"temperature": 1.3, "ece_before": 0.02, "ece_after": 0.005, "fitted_on": "val"}}


@pytest.mark.parametrize("prepared", [True, False], ids=["with-prepared-curves", "raw-only-sweep"])
def test_findings_never_advise_inverting_by_hand(prepared: bool) -> None:
    text = " ".join(findings(metrics(prepared), []))
    assert "must be inverted" not in text and "before prediction" not in text
    assert "raw 28x28 tensors" in text and "without the real-image preparation" in text
    assert "detected from the image's border" in text or "detects the polarity" in text
    assert "this pair is" in text  # one confusion: not "these three pairs"
    assert "fitted on the validation split" in text and "over-confident" in text
    if prepared:
        assert "shifted 8 px: 94.0% (raw 22.0%)" in text and "99.0% through the real-image preparation" in text


def test_robustness_figure_says_which_curve_is_which(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Figure] = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: seen.append(fig) or real_save(fig, path))
    plots.plot_robustness(metrics(False)["robustness"], tmp_path / "raw.png")
    plots.plot_robustness(metrics(True)["robustness"], tmp_path / "both.png")
    raw, both = (fig.get_suptitle() for fig in seen)
    assert "raw 28x28 tensors (no real-image preparation)" in raw and "2,000 images" in raw
    assert "raw 28x28 tensors" in both and "real-image preparation" in both
    legend = [t.get_text() for t in seen[1].legends[0].get_texts()]
    assert legend == [plots.ROBUSTNESS_RAW, plots.ROBUSTNESS_PREPARED]
    assert re.search(r"min 22\.0% raw, 94\.0% prepared", seen[1].axes[0].get_title())
