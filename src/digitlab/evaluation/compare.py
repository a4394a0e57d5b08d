"""``digitlab compare``: a ranked leaderboard of evaluated runs, with recommendations and figures.

Usage::

    board = compare_runs(["runs/a", "runs/b", "runs/c"], out="runs/compare")
    board["rows"][0]["name"], board["recommendations"]

Runs of one recipe (several seeds) become one row with accuracy mean +- std. Runs not evaluated
yet are evaluated first (``evaluate_run``, test split).
"""

import contextlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.core.config import RunConfig
from digitlab.core.fileio import atomic_write_text
from digitlab.core.rundir import RunDir
from digitlab.evaluation import plots
from digitlab.evaluation.evaluate import EVAL_DIR, METRICS_FILE, EvaluationError, evaluate_run, load_eval

LEADERBOARD_JSON = "leaderboard.json"
LEADERBOARD_MD = "leaderboard.md"


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def _group_key(m: dict[str, Any]) -> str:
    """Runs are seeds of one recipe when their whole config, seeds aside (seed, data.split_seed), is the same."""
    cfg = dict(m.get("config") or {})
    # options added to digitlab after a run was evaluated take their defaults (so they do not split a group);
    # a config that does not validate (pydantic's ValidationError is a ValueError) is compared as written
    with contextlib.suppress(ValueError):
        cfg = RunConfig.model_validate(cfg).model_dump(mode="json")
    cfg.pop("seed", None)
    cfg["data"] = {k: v for k, v in (cfg.get("data") or {}).items() if k != "split_seed"}
    return json.dumps([m.get("recipe"), cfg, m["dataset"]], sort_keys=True)


def build_rows(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per recipe (mean over its runs), ranked by accuracy."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in evals:
        groups.setdefault(_group_key(m), []).append(m)
    names = [ms[0].get("recipe") or Path(ms[0]["run"]).name for ms in groups.values()]
    rows = []
    for name, ms in zip(names, groups.values(), strict=True):
        if names.count(name) > 1:  # one recipe with different overrides: name the rows apart
            name = f"{name} ({Path(ms[0]['run']).name})"
        seeds = [m.get("seed") for m in ms]
        if len(set(seeds)) < len(seeds):
            raise EvaluationError(f"{name}: several runs with the same seed ({', '.join(m['run'] for m in ms)}); "
                                  "give each seed once")
        accs = [m["accuracy"] for m in ms]
        rows.append({
            "name": name,
            "model": ms[0]["model"],
            "kind": ms[0]["kind"],
            "runs": [m["run"] for m in ms],
            "seeds": [m.get("seed") for m in ms],
            "n_runs": len(ms),
            "accuracy": statistics.mean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "errors": _mean([m["errors"] for m in ms]),
            "macro_f1": _mean([m["macro_avg"]["f1"] for m in ms]),
            "n_params": ms[0].get("n_params"),
            "size_bytes": ms[0].get("size_bytes"),
            "train_seconds": _mean([m.get("train_seconds") for m in ms]),
            "images_per_s": _mean([m["inference"]["images_per_s"] for m in ms]),
            "ece": _mean([m["calibration"]["ece_before"] for m in ms]),
            "ece_after": _mean([m["calibration"]["ece_after"] for m in ms]),
            "per_class_f1": [float(np.mean([m["per_class"][i]["f1"] for m in ms]))
                             for i in range(len(ms[0]["per_class"]))],
            "dataset": ms[0]["dataset"],
            "split": ms[0]["split"],
        })
    rows.sort(key=lambda r: (-r["accuracy"], r["train_seconds"] or 0.0))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def recommendations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per criterion: most accurate, fastest to train, fastest to predict, smallest, best calibrated."""
    out = []

    def pick(criterion: str, key: str, best: Any, text: Any) -> None:
        candidates = [r for r in rows if r.get(key) is not None]
        if candidates:
            r = best(candidates, key=lambda r: r[key])
            out.append({"criterion": criterion, "name": r["name"], "value": r[key], "text": text(r)})

    pick("most accurate", "accuracy", max, lambda r: f"most accurate: {r['name']} at {100 * r['accuracy']:.2f}%"
         + (f" +- {100 * r['accuracy_std']:.2f} ({r['n_runs']} runs)" if r["accuracy_std"] is not None else ""))
    pick("fastest to train", "train_seconds", min, lambda r: f"fastest to train: {r['name']} in "
         f"{_fmt_seconds(r['train_seconds'])} ({100 * r['accuracy']:.2f}%)")
    pick("fastest to predict", "images_per_s", max, lambda r: f"fastest to predict: {r['name']} at "
         f"{r['images_per_s']:,.0f} images/s")
    pick("smallest", "size_bytes", min, lambda r: f"smallest: {r['name']}, {_fmt_bytes(r['size_bytes'])} on disk "
         f"({100 * r['accuracy']:.2f}%)")
    pick("best calibrated", "ece", min, lambda r: f"best calibrated as trained: {r['name']}, ECE "
         f"{100 * r['ece']:.2f}% ({100 * r['ece_after']:.2f}% after temperature scaling)")
    return out


def leaderboard_markdown(rows: list[dict[str, Any]], recs: list[dict[str, Any]]) -> str:
    """The leaderboard as a Markdown table, then the recommendations."""
    head = ("| # | recipe | model | test accuracy | macro F1 | parameters | size | training time | "
            "inference | ECE (raw / scaled) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        acc = f"{100 * r['accuracy']:.2f}%"
        if r["accuracy_std"] is not None:
            acc += f" +- {100 * r['accuracy_std']:.2f} ({r['n_runs']} seeds)"
        lines.append("| " + " | ".join([
            str(r["rank"]), r["name"], r["model"], acc, f"{r['macro_f1']:.4f}",
            f"{r['n_params']:,}" if r["n_params"] is not None else "-",
            _fmt_bytes(r["size_bytes"]) if r["size_bytes"] is not None else "-",
            _fmt_seconds(r["train_seconds"]) if r["train_seconds"] is not None else "-",
            f"{r['images_per_s']:,.0f} img/s",
            f"{100 * r['ece']:.2f}% / {100 * r['ece_after']:.2f}%",
        ]) + " |")
    lines.append("")
    lines += [f"- {rec['text']}" for rec in recs]
    return "\n".join(lines) + "\n"


def compare_runs(paths: list[str | os.PathLike[str]], *, out: str | os.PathLike[str] = "runs/compare",
                 log: Any = None, device: str = "auto") -> dict[str, Any]:
    """Leaderboard, recommendations and figures of several runs, written to ``out``.

    Raises:
        EvaluationError: fewer than one run, or a run that cannot be evaluated.
    """
    say = log or (lambda _msg: None)
    if not paths:
        raise EvaluationError("compare needs at least one run directory")
    evals = []
    for p in dict.fromkeys(Path(p).resolve() for p in paths):  # the same run given twice counts once
        run = RunDir.open(p)
        if not (run.path / EVAL_DIR / METRICS_FILE).is_file():
            say(f"evaluating {run.path} first")
            evaluate_run(run.path, device=device, log=say)
        evals.append(load_eval(run.path))
    datasets = {(m["dataset"], m["split"]) for m in evals}
    if len(datasets) > 1:
        raise EvaluationError("runs were evaluated on different data: " + ", ".join(f"{d} {s}" for d, s in datasets))
    rows = build_rows(evals)
    recs = recommendations(rows)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = evals[0]["class_names"]
    figures: dict[str, Path] = {}
    for key, x, label in (("accuracy_vs_time", "train_seconds", "training time (s, log scale)"),
                          ("accuracy_vs_size", "size_bytes", "model size on disk (bytes, log scale)")):
        known = [r for r in rows if r[x] is not None]
        if known:  # runs without results.json (or a model file) have no training time (or size)
            figures[key] = plots.plot_accuracy_vs(known, x, out_dir / f"{key}.png", xlabel=label)
    figures["f1_heatmap"] = plots.plot_f1_heatmap([r["name"] for r in rows], class_names,
                                                  np.array([r["per_class_f1"] for r in rows]),
                                                  out_dir / "f1_heatmap.png")
    board = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "dataset": evals[0]["dataset"],
        "split": evals[0]["split"],
        "class_names": class_names,
        "rows": rows,
        "recommendations": recs,
        "figures": {k: Path(v).name for k, v in figures.items()},
    }
    atomic_write_text(out_dir / LEADERBOARD_JSON, json.dumps(board, indent=2) + "\n")
    atomic_write_text(out_dir / LEADERBOARD_MD, leaderboard_markdown(rows, recs))
    return board
