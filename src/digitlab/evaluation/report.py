"""``digitlab report``: one self-contained HTML page (and a Markdown twin) for a run or a comparison.

Usage::

    html_path, md_path = write_report("runs/20261121-101500-cnn-default")   # RUN/eval/report.html
    html_path, md_path = write_report("runs/compare")                       # COMPARE_DIR/report.html

The HTML embeds every image (base64 PNG) and its styles, and links nothing outside itself, so it
opens offline and can be mailed as one file. The Markdown version references the PNGs next to it,
for a README. The findings are written from the numbers: most confused classes, weakest classes,
calibration, robustness weak points, over- or under-fitting. Where a finding says what to do about a
number, it says what the pipeline already does (``inference.prepare`` detects polarity, crops and
centres a real image), so it never advises a step that ``digitlab predict`` takes by itself.
"""

import base64
import json
import os
from pathlib import Path
from typing import Any

import jinja2

from digitlab.core.fileio import atomic_write_text
from digitlab.core.rundir import RunDir
from digitlab.evaluation.compare import LEADERBOARD_JSON, leaderboard_markdown
from digitlab.evaluation.evaluate import EVAL_DIR, METRICS_FILE, EvaluationError, read_metrics_rows

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
EXPLORE_FIGURES = ("samples.png", "class_distribution.png", "mean_images.png")
# Figure captions; {split} is the measured split ("test" or "val").
FIGURE_TITLES = {
    "learning_curves": "Learning curves: loss and accuracy per epoch (training and validation splits)",
    "confusion_matrix": "Confusion matrix ({split} split)",
    "roc_curves": "ROC curves, each class against the rest ({split} split)",
    "pr_curves": "Precision-recall curves, each class against the rest ({split} split)",
    "reliability": "Reliability: raw vs temperature-scaled confidence ({split} split)",
    "confident_mistakes": "The most confident mistakes, by raw (uncalibrated) probability ({split} split)",
    "common_confusions": "The most common confusion of each class ({split} split)",
    "predictions": "Predictions on random {split} images",
    "robustness": "Robustness: raw 28x28 tensors vs. the real-image preparation ({split} split)",
    "accuracy_vs_time": "Accuracy ({split} split) against training time",
    "accuracy_vs_size": "Accuracy ({split} split) against model size",
    "f1_heatmap": "Per-class F1 across models ({split} split)",
}
ROBUSTNESS_RAW_TITLE = "Robustness on raw 28x28 tensors, without the real-image preparation ({split} split)"

ROBUSTNESS_NOTE = ("Raw tensor: the perturbed 28x28 image fed to the model as it is, without the real-image "
                   "preparation. Prepared: the same image through the real-image preparation first (polarity, crop, "
                   "20 px box, centre of mass), as digitlab predict reads an image file; measured for the geometric "
                   "perturbations and the inversion.")

_env = jinja2.Environment(loader=jinja2.PackageLoader("digitlab.evaluation", "templates"),
                          autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True,
                          undefined=jinja2.StrictUndefined)
_env.filters["num"] = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI, to embed in a self-contained page."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _pct(v: float | None, d: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{d}f}%"


_env.filters["pct"] = _pct


def findings(m: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Plain sentences drawn from the numbers of one evaluated run."""
    out = []
    lo, hi = m["accuracy_ci95"]
    out.append(f"{_pct(m['accuracy'])} of {m['n']:,} {m['split']} images right ({m['errors']:,} errors; 95% "
               f"interval {_pct(lo)} to {_pct(hi)}); top-2 accuracy {_pct(m['top2_accuracy'])}.")
    conf = m.get("top_confusions") or []
    if conf:
        top = conf[:3]
        pairs = "; ".join(f"{c['true']} read as {c['pred']} ({c['count']}x)" for c in top)
        share = sum(c["count"] for c in top) / max(m["errors"], 1)
        these = "this pair is" if len(top) == 1 else f"these {len(top)} pairs are"
        out.append(f"Most confused: {pairs}; {these} {share:.0%} of all errors.")
    weakest = sorted(m["per_class"], key=lambda r: r["f1"])[:2]
    out.append("Weakest classes by F1: " + ", ".join(f"{r['class']} (F1 {r['f1']:.4f}, recall {_pct(r['recall'])})"
                                                     for r in weakest) + ".")
    out.append(_calibration_finding(m["calibration"]))
    out += robustness_findings(m)
    if rows:
        best = max(rows, key=lambda r: r.get("val_acc") or 0)
        last = rows[-1]
        if last.get("train_acc") is None:  # a classical model logs validation only: no gap to speak of
            out.append(f"Training: one fit, validation accuracy {_pct(best.get('val_acc'))}.")
        else:
            gap = last["train_acc"] - (last.get("val_acc") or 0)
            fit = ("training accuracy runs above validation: some over-fitting" if gap > 0.01 else
                   "training accuracy (averaged over each epoch as the model learns, on augmented images when the "
                   "recipe augments) stays below validation: no sign of over-fitting" if gap < -0.01 else
                   "training and validation accuracy are close: no sign of over-fitting")
            out.append(f"Training: best validation accuracy {_pct(best.get('val_acc'))} at epoch {best['epoch']} "
                       f"of {last['epoch']}; {fit} (gap {100 * gap:+.2f} points at the last epoch).")
    return out


def _calibration_finding(cal: dict[str, Any]) -> str:
    t = cal["temperature"]
    fitted_on = {"val": "the validation split"}.get(cal.get("fitted_on"), cal.get("fitted_on") or "validation")
    if fitted_on.startswith(("none", "nothing")):  # no validation split: T stays 1, nothing was learned
        return (f"Calibration: expected calibration error {_pct(cal['ece_before'])} as trained; no temperature was "
                f"fitted ({fitted_on}), so the confidence shown is the raw one.")
    tendency = ("over-confident" if t > 1.05 else "under-confident" if t < 0.95 else "close to calibrated")
    return (f"Calibration: expected calibration error {_pct(cal['ece_before'])} as trained, "
            f"{_pct(cal['ece_after'])} after temperature scaling (T = {t:.3f}, fitted on {fitted_on}): as trained, "
            f"the model is {tendency}.")


def _level_label(name: str, r: dict[str, Any], i: int) -> str:
    return r["labels"][i] if r.get("labels") else f"{name} {r['levels'][i]:g}"


def robustness_findings(m: dict[str, Any]) -> list[str]:
    """The sweep's weak points, each curve named for what it measured (raw tensors or prepared images)."""
    rob = m.get("robustness")
    if not rob:
        return []
    out = []
    worst = []
    for name, r in rob.items():
        if name == "invert":
            continue
        i = min(range(len(r["accuracy"])), key=lambda k: r["accuracy"][k])
        worst.append((r["accuracy"][i], _level_label(name, r, i)))
    worst.sort()
    weak = "; ".join(f"{label}: {_pct(acc, 1)}" for acc, label in worst[:3])
    n = next(iter(rob.values())).get("n")
    of = f"{n:,} {m['split']} images" if n else f"{m['split']} images"
    out.append(f"Robustness on raw 28x28 tensors, fed to the model without the real-image preparation ({of}; "
               f"unperturbed {m['split']} accuracy {_pct(m['accuracy'], 1)}): weakest {weak}. This is what code that "
               "passes model-ready arrays meets (Predictor.predict, the service's pixels field).")
    prepared = [(name, r) for name, r in rob.items() if "accuracy_prepared" in r and name != "invert"]
    if prepared:
        pairs = []
        for name, r in prepared:
            acc = r["accuracy_prepared"]
            i = min(range(len(acc)), key=lambda k: acc[k])
            pairs.append((acc[i], f"{_level_label(name, r, i)}: {_pct(acc[i], 1)} (raw {_pct(r['accuracy'][i], 1)})"))
        pairs.sort()
        out.append("Through the real-image preparation, as digitlab predict and the service read an image file (the "
                   "digit cropped, fitted to the 20 px box and centred), the weakest levels are: "
                   + "; ".join(text for _, text in pairs) + ".")
    if "invert" in rob:
        r = rob["invert"]
        raw = _pct(r["accuracy"][-1], 1)
        if "accuracy_prepared" in r:
            out.append(f"Inverted polarity (dark ink on light paper): {raw} as a raw tensor, "
                       f"{_pct(r['accuracy_prepared'][-1], 1)} through the real-image preparation, which detects the "
                       "polarity from the image's border and inverts dark ink itself (digitlab predict, the service's "
                       "image uploads). Only model-ready arrays must already be light ink on dark.")
        else:
            out.append(f"Inverted polarity (dark ink on light paper) gives {raw} as a raw tensor: the model reads "
                       "light ink on dark only. digitlab predict and the service invert dark-on-light images "
                       "themselves (polarity detected from the image's border); only model-ready arrays passed to "
                       "Predictor.predict or the service's pixels field must already be light ink on dark.")
    return out


def _find_explore(run_path: Path, dataset: str) -> Path | None:
    for base in (run_path.parent, run_path.parent.parent, Path("runs")):
        cand = base / f"data-{dataset}"
        if (cand / "summary.json").is_file():
            return cand
    return None


def _figures(files: dict[str, str], folder: Path, split: str, robustness: dict[str, Any] | None = None
             ) -> list[dict[str, Any]]:
    """The figures a metrics.json or leaderboard.json lists that exist in ``folder``, titled."""
    titles = dict(FIGURE_TITLES)
    if robustness and not any("accuracy_prepared" in r for r in robustness.values()):
        titles["robustness"] = ROBUSTNESS_RAW_TITLE  # a sweep from before the prepared curves
    return [{"key": k, "title": titles.get(k, k).format(split=split), "file": f, "path": folder / f}
            for k, f in files.items() if (folder / f).is_file()]


def _run_context(run_path: Path, explore_dir: Path | None) -> dict[str, Any]:
    run = RunDir.open(run_path)
    eval_dir = run.path / EVAL_DIR
    try:
        m = json.loads((eval_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        raise EvaluationError(f"{run.path}: not evaluated yet; run `digitlab evaluate {run.path}` first") from None
    rows = read_metrics_rows(run)
    explore = explore_dir or _find_explore(run.path, m["dataset"])
    explore_summary = json.loads((explore / "summary.json").read_text()) if explore else None
    return {
        "kind": "run",
        "title": f"digitlab report: {m.get('recipe') or m['model']} ({run.path.name})",
        "m": m,
        "rows": rows,
        "config": run.file(RunDir.CONFIG).read_text(),
        "findings": findings(m, rows),
        "figures": _figures(m["figures"], eval_dir, m["split"], m.get("robustness")),
        "explore": explore_summary,
        "explore_figures": [{"title": f, "path": explore / f} for f in EXPLORE_FIGURES
                            if explore and (explore / f).is_file()],
        "out_dir": eval_dir,
    }


def _compare_context(compare_dir: Path) -> dict[str, Any]:
    board = json.loads((compare_dir / LEADERBOARD_JSON).read_text())
    return {
        "kind": "compare",
        "title": f"digitlab comparison: {len(board['rows'])} models on {board['dataset']} {board['split']}",
        "board": board,
        "findings": [r["text"] for r in board["recommendations"]],
        "figures": _figures(board["figures"], compare_dir, board["split"]),
        "out_dir": compare_dir,
    }


def format_cell(v: Any) -> str:
    """A table cell: "-" for a missing value, 4 significant digits for a float."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _markdown(ctx: dict[str, Any]) -> str:
    """The same report as Markdown, images referenced by relative path."""
    out_dir: Path = ctx["out_dir"]

    def rel(p: Path) -> str:
        return os.path.relpath(p, out_dir)

    lines = [f"# {ctx['title']}", "", "## Findings", ""] + [f"- {f}" for f in ctx["findings"]] + [""]
    if ctx["kind"] == "compare":
        b = ctx["board"]
        lines += ["## Leaderboard", "", leaderboard_markdown(b["rows"], b["recommendations"])]
    else:
        m = ctx["m"]
        d = m["dataset_summary"]
        lines += ["## Dataset", "", "| dataset | training | validation | test |", "|---|---|---|---|",
                  f"| {d['name']} | {d['n_train']:,} | {d['n_val']:,} | {d['n_test']:,} |", ""]
        if ctx["rows"]:
            keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
            lines += ["## Training", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(format_cell(r.get(k)) for k in keys) + " |" for r in ctx["rows"]]
            lines.append("")
        lines += ["## Metrics", "", "| metric | value |", "|---|---|",
                  f"| accuracy | {_pct(m['accuracy'])} ({m['errors']} errors of {m['n']:,}) |",
                  f"| 95% Wilson interval | {_pct(m['accuracy_ci95'][0])} to {_pct(m['accuracy_ci95'][1])} |",
                  f"| balanced accuracy | {_pct(m['balanced_accuracy'])} |",
                  f"| macro F1 | {m['macro_avg']['f1']:.4f} |",
                  f"| top-2 accuracy | {_pct(m['top2_accuracy'])} |",
                  f"| log loss | {m['log_loss']:.4f} |",
                  f"| macro ROC AUC | {m['roc_auc']['macro']:.5f} |" if m["roc_auc"]["macro"] is not None else
                  "| macro ROC AUC | - |",
                  f"| ECE (15 bins), raw / temperature-scaled | {_pct(m['calibration']['ece_before'])} / "
                  f"{_pct(m['calibration']['ece_after'])} (T = {m['calibration']['temperature']:.3f}) |",
                  f"| inference | {m['inference']['images_per_s']:,.0f} images/s on {m['inference']['device']} |",
                  "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
                  for r in m["per_class"]]
        lines.append("")
        if m.get("robustness"):
            lines += ["## Robustness", "", ROBUSTNESS_NOTE, "", "| perturbation | input | accuracy by level |",
                      "|---|---|---|"]
            for name, r in m["robustness"].items():
                levels = r.get("labels", [f"{v:g}" for v in r["levels"]])
                for key, what in (("accuracy", "raw tensor"), ("accuracy_prepared", "prepared")):
                    if key in r:
                        lines.append(f"| {name} | {what} | " + ", ".join(
                            f"{lab}: {_pct(a, 1)}" for lab, a in zip(levels, r[key], strict=True)) + " |")
            lines.append("")
        lines += ["## Config", "", "```yaml", ctx["config"].rstrip(), "```", ""]
    lines += ["## Figures", ""]
    for f in ctx["figures"]:
        lines += [f"### {f['title']}", "", f"![{f['title']}]({rel(f['path'])})", ""]
    return "\n".join(lines)


def write_report(target: str | os.PathLike[str], *, explore_dir: str | os.PathLike[str] | None = None
                 ) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for a run directory (into ``RUN/eval/``) or a compare folder.

    Raises:
        EvaluationError: the target is neither an evaluated run nor a compare folder.
    """
    path = Path(target)
    if (path / LEADERBOARD_JSON).is_file():
        ctx = _compare_context(path)
    elif (path / RunDir.CONFIG).is_file():
        ctx = _run_context(path, Path(explore_dir) if explore_dir else None)
    else:
        raise EvaluationError(f"{path}: neither a run directory nor a `digitlab compare` folder")
    for group in ("figures", "explore_figures"):
        for f in ctx.get(group, []):
            f["uri"] = data_uri(f["path"])
    html = _env.get_template("report.html.j2").render(**ctx, robustness_note=ROBUSTNESS_NOTE)
    out_dir: Path = ctx["out_dir"]
    html_path, md_path = out_dir / REPORT_HTML, out_dir / REPORT_MD
    atomic_write_text(html_path, html)
    atomic_write_text(md_path, _markdown(ctx))
    return html_path, md_path
