"""Digit-string benchmark: the segmentation reader (``read_digits`` with a digit classifier) and the sequence reader
(``StringReader`` on a string model) side by side, on the same images, in one run.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_strings.py --strings RUN
        [--digits runs/bench/default-seed0] [--n 1000] [--n-composed 2000] [--sets ...] [--limit 0]
        [--adapt --folds 5 --adapt-set train.epochs=4 ...] [--threads 1] [--seed 0]

The sets (``--sets``; all by default), each from MNIST *test* digits or from the real cheques:

- ``composed-separated``, ``composed-touching``: ``--n-composed`` lines of 5 test digits laid side by side by
  ``compose_line`` (scale 0.8-1.2, baseline jitter +-3 px, a gap of 2-12 px between ink boxes, or an overlap of
  0-4 px), dark ink on white: exactly the sets the issue's "now" figures were measured on (same seeds). As
  before, also the segmentation reader told the number of digits, and its ceilings: the classifier on the same
  digits alone, and (separated) on each digit cut out by its true box.
- ``separated``, ``touching``, ``punctuated``, ``ruled``: ``--n`` strings each made by ``synthetic_strings``
  (``StringOptions.separated()``, ``.touching()``; a separator in every string with the default layout and no page
  or pen effects; separated with a ruled line in every string and an underline in half), each inverted to dark ink
  on white uint8 and enlarged 2x (bilinear), as a scan arrives. They are what ``synthetic_strings`` draws at the
  commit recorded in the results (``git``): compare figures across commits only where the generator is the same.
- ``orand-car-a-train``: the 1,080 real cheque amounts of ``../shared/data/realworld`` (read there, never copied),
  labelled with digits only: scored digits-only (separators the reader writes are dropped). With ``--adapt``,
  ``--folds``-fold adaptation of the string model: a seeded permutation cut into folds; for each, the other folds
  are a labelled folder (symlinks and a labels.tsv in a temporary folder) that ``digitlab.api.train(init=STRINGS,
  strings=...)`` fine-tunes on (``--adapt-set`` overrides its defaults), and the fold is read by the fine-tuned
  run, beside both readers' zero-shot figures on the same fold.

Scores per set and reader: whole-string accuracy, character error rate (edit distance / truth length, summed over
strings), the share read with the wrong length (and the share with the length right), the share rejected (the
string model's reading policy, ``reading.json``; the segmentation reader rejects nothing here) and the accuracy
among the strings kept. The synthetic and composed sets are scored on the text as written (a separator written
where none is counts as an error); ``punctuated`` also digits-only, since the segmentation reader cannot write
separators (its exact figure there is not applicable). Throughput on the synthetic separated strings and the
cheques: strings/s reading ``--batch-n`` at once (the sequence reader batched by ``read``, the segmentation reader
one by one: it has no batching) and latency p50/p90 at batch 1 (``--latency-n`` calls after a warm-up). Nothing
is chosen on these figures. A Markdown table on stdout; every figure in ``benchmarks/results/strings.json`` with
the machine and the command.
"""

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from bench_realworld import realworld_dir
from digitlab.core.fileio import atomic_path
from digitlab.data.loading import load_dataset
from digitlab.inference import Predictor
from digitlab.inference.prepare import prepare_image
from digitlab.inference.sequence import StringReader
from digitlab.inference.strings import read_digits
from machine_info import machine
from strings_sets import (
    COMPOSED,
    ORAND,
    SYNTHETIC,
    StringSet,
    composed_set,
    orand_set,
    score,
    synthetic_set,
)

RESULTS = Path("benchmarks/results/strings.json")
SETS = [*COMPOSED, *SYNTHETIC, ORAND]
READERS = ("segmentation", "sequence")
MARGIN = 8  # white px around a digit cut out by its true box (prepare_image reads the background off the border)
METRICS = ("string_accuracy", "cer", "wrong_length", "length_right", "rejected", "accuracy_kept")
WARMUP = 5  # calls before timing latency
# the fine-tuned runs are measured on their held-out fold here, not on synthetic test strings (--adapt-set wins)
ADAPT_DEFAULTS = ("strings.test=0",)
SEPARATOR_NOTE = "the segmentation reader cannot write separators: its exact figure is not applicable"


class Readers:
    """Both readers behind one call: a list of images (arrays or paths) -> (texts, rejected flags)."""

    def __init__(self, digits: Predictor | None, strings: StringReader | None, batch_size: int) -> None:
        self.digits, self.strings, self.batch_size = digits, strings, batch_size

    def names(self) -> list[str]:
        return [r for r, m in zip(READERS, (self.digits, self.strings), strict=True) if m is not None]

    def read(self, reader: str, items: list[Any], *,
             strings: StringReader | None = None) -> tuple[list[str], list[bool]]:
        if reader == "segmentation":
            texts = [read_digits(item, self.digits).text for item in items]
            return texts, [False] * len(texts)
        readings = (strings or self.strings).read(items, names=[f"#{i}" for i in range(len(items))],
                                                  batch_size=self.batch_size)
        return [r.text for r in readings], [r.rejected is not None for r in readings]


def evaluate_set(readers: Readers, data: StringSet) -> dict[str, Any]:
    """Every reader on the set: scores, timing, and the raw reads (kept for the folds)."""
    out: dict[str, Any] = {"n": len(data), "describe": data.describe}
    if data.name == ORAND:
        out["scoring"] = "digits only (the labels hold no separators)"
    for reader in readers.names():
        start = time.perf_counter()
        texts, rejected = readers.read(reader, data.items)
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {"seconds": round(seconds, 3), "strings_per_s": len(data) / seconds}
        if data.name == ORAND:
            row["digits"] = score(data.truths, texts, rejected, digits=True)
        else:
            exact = score(data.truths, texts, rejected)
            if data.name == "punctuated" and reader == "segmentation":
                exact = {"not_applicable": SEPARATOR_NOTE}
            row["exact"] = exact
            if data.name == "punctuated":
                row["digits"] = score(data.truths, texts, rejected, digits=True)
        row["reads"], row["rejected_flags"] = texts, rejected
        out[reader] = row
    return out


def composed_extras(predictor: Predictor, data: StringSet, images: np.ndarray, labels: np.ndarray) -> dict:
    """The segmentation reader told the number of digits (``n_digits``, as before issue 17); the digit classifier
    on the same digits fed one by one as MNIST gives them, and (separated) cut out of the line by their true boxes:
    the ceilings a segmentation reading can approach; and how many lines really touch."""
    idx_all, boxes = data.extra["indices"], data.extra["boxes"]
    length = int(data.extra["length"])
    reads = [read_digits(line, predictor, n_digits=length).text for line in data.items]
    given = score(data.truths, reads, [False] * len(reads))
    truth = np.concatenate([labels[idx] for idx in idx_all])
    direct = predictor.predict_proba(np.stack([images[idx] for idx in idx_all]).reshape(-1, 28, 28))
    ok = (direct.argmax(axis=1) == truth).reshape(len(data), -1)
    out: dict[str, Any] = {"segmentation_count_given": given,
                           "digits_alone": {"string_accuracy": float(ok.all(axis=1).mean()),
                                            "digit_accuracy": float(ok.mean())}}
    if data.name == "composed-separated":
        cut = [prepare_image(np.pad(line[y0:y1, x0:x1], MARGIN, constant_values=255), predictor.spec)
               for line, bx in zip(data.items, boxes, strict=True) for x0, y0, x1, y1 in bx]
        frames = np.stack([p.image if p.found else np.zeros(predictor.spec.input_size, np.uint8) for p in cut])
        ok = (predictor.predict_proba(frames).argmax(axis=1) == truth).reshape(len(data), -1)
        out["true_boxes"] = {"string_accuracy": float(ok.all(axis=1).mean()), "digit_accuracy": float(ok.mean())}
    # lines with touching ink: fewer 8-connected components (ink > 127) than digits
    out["touching_lines"] = int(sum(ndi.label(line < 128, structure=np.ones((3, 3), bool))[1] < length
                                    for line in data.items))
    return out


def throughput(readers: Readers, data: StringSet, batch_n: int, latency_n: int) -> dict[str, Any]:
    """Strings/s reading ``batch_n`` strings in one go, and per-string latency at batch 1 (ms, p50/p90)."""
    items = data.items[:batch_n]
    out: dict[str, Any] = {"set": data.name, "n_batched": len(items), "n_latency": min(latency_n, len(data.items))}
    for reader in readers.names():
        readers.read(reader, data.items[:WARMUP])
        start = time.perf_counter()
        readers.read(reader, items)
        seconds = time.perf_counter() - start
        times = []
        for item in data.items[:out["n_latency"]]:
            t0 = time.perf_counter()
            readers.read(reader, [item])
            times.append(time.perf_counter() - t0)
        ms = 1000 * np.array(times)
        out[reader] = {"batched_strings_per_s": len(items) / seconds, "batched_seconds": round(seconds, 3),
                       "latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p90": float(np.percentile(ms, 90)),
                       "single_strings_per_s": 1000 / float(ms.mean())}
    return out


def adapt(readers: Readers, data: StringSet, zero: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``--folds``-fold adaptation of the string model on the cheques, each fold read by its fine-tuned run, beside
    both readers' zero-shot figures on the same strings."""
    from digitlab.api import train

    folds = np.array_split(np.random.default_rng(args.seed).permutation(len(data)), args.folds)
    root = Path(tempfile.mkdtemp(prefix="bench-strings-adapt-"))
    rows = []
    try:
        for k, held in enumerate(folds):
            held = np.sort(held)
            rest = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != k]))
            folder = root / f"fold{k}"
            folder.mkdir()
            for i in rest:
                (folder / Path(data.items[i]).name).symlink_to(Path(data.items[i]).resolve())
            (folder / "labels.tsv").write_text("".join(f"{Path(data.items[i]).name}\t{data.truths[i]}\n"
                                                       for i in rest), encoding="utf-8")
            t0 = time.perf_counter()
            result = train(init=args.strings, strings=folder, overrides=[*ADAPT_DEFAULTS, *args.adapt_set],
                           out=root / "runs")
            seconds = time.perf_counter() - t0
            tuned = StringReader.from_path(result.run_dir)
            truths = [data.truths[i] for i in held]
            texts, rejected = readers.read("sequence", [data.items[i] for i in held], strings=tuned)
            row: dict[str, Any] = {"fold": k + 1, "n_train": len(rest), "n_test": len(held),
                                   "train_seconds": round(seconds, 1), "min_confidence": tuned.min_confidence,
                                   "adapted": score(truths, texts, rejected, digits=True), "zero_shot": {}}
            for reader in readers.names():
                z = zero[reader]
                row["zero_shot"][reader] = score(truths, [z["reads"][i] for i in held],
                                                 [z["rejected_flags"][i] for i in held], digits=True)
            rows.append(row)
            print(f"fold {k + 1}/{args.folds}: adapted {row['adapted']['string_accuracy']:.4f} whole, zero-shot "
                  + ", ".join(f"{r} {s['string_accuracy']:.4f}" for r, s in row["zero_shot"].items())
                  + f" ({seconds:.0f} s fine-tuning)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def mean(scores: list[dict[str, Any]]) -> dict[str, float | None]:
        """Each metric's mean over the folds (None where a fold has none, e.g. nothing kept)."""
        return {m: None if any(s[m] is None for s in scores) else float(np.mean([s[m] for s in scores]))
                for m in METRICS}

    summary = {"adapted": mean([r["adapted"] for r in rows]),
               **{f"zero_shot_{rd}": mean([r["zero_shot"][rd] for r in rows]) for rd in readers.names()}}
    return {"folds": rows, "mean": summary,
            "adapted_string_accuracy_std": float(np.std([r["adapted"]["string_accuracy"] for r in rows])),
            "overrides": [*ADAPT_DEFAULTS, *args.adapt_set], "n_folds": args.folds, "seed": args.seed}


def git_state() -> str | None:
    """The commit the benchmark ran at, "+dirty" when the working tree differs (None outside git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def table(results: dict[str, Any], readers: list[str]) -> str:
    """The figures as Markdown: one row per set and reader, then the folds and the throughput."""
    lines = ["| set | reader | n | scoring | whole | CER | wrong length | rejected | whole among kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["sets"].items():
        for reader in readers:
            for scoring in ("exact", "digits"):
                s = row.get(reader, {}).get(scoring)
                if s is None:
                    continue
                if "not_applicable" in s:
                    lines.append(f"| {name} | {reader} | {row['n']} | exact | n/a | n/a | n/a | n/a | n/a |")
                    continue
                lines.append(f"| {name} | {reader} | {s['n']} | {scoring} | {pct(s['string_accuracy'])} | "
                             f"{pct(s['cer'])} | {pct(s['wrong_length'])} | {pct(s['rejected'])} | "
                             f"{pct(s['accuracy_kept'])} |")
    if "adaptation" in results:
        a = results["adaptation"]
        lines += ["", f"{ORAND}, {a['n_folds']}-fold adaptation (digits only; whole / CER / wrong length / "
                  "rejected / whole among kept)",
                  "", "| fold | n test | adapted | " + " | ".join(f"zero-shot {r}" for r in readers) + " |",
                  "|---|---|---|" + "---|" * len(readers)]

        def cell(s: dict) -> str:
            return (f"{pct(s['string_accuracy'])} / {pct(s['cer'])} / {pct(s['wrong_length'])} / "
                    f"{pct(s['rejected'])} / {pct(s['accuracy_kept'])}")

        for r in a["folds"]:
            lines.append(f"| {r['fold']} | {r['n_test']} | {cell(r['adapted'])} | "
                         + " | ".join(cell(r["zero_shot"][rd]) for rd in readers) + " |")
        m = a["mean"]
        lines.append("| mean | | " + cell(m["adapted"]) + " | "
                     + " | ".join(cell(m[f"zero_shot_{rd}"]) for rd in readers) + " |")
    if results["throughput"]:
        lines += ["", "| throughput (batched / batch 1 strings) | reader | batched strings/s | batch 1 p50 ms | "
                  "batch 1 p90 ms |", "|---|---|---|---|---|"]
        for t in results["throughput"]:
            for reader in readers:
                s = t[reader]
                lines.append(f"| {t['set']} ({t['n_batched']} / {t['n_latency']}) | {reader} | "
                             f"{s['batched_strings_per_s']:.1f} | {s['latency_ms_p50']:.1f} | "
                             f"{s['latency_ms_p90']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", default="runs/bench/default-seed0", help="a digit-classifier run (segmentation "
                        "reader); 'none' to leave it out")
    parser.add_argument("--strings", default=None, help="a string-model run, hub folder or .onnx (sequence reader)")
    parser.add_argument("--sets", nargs="+", default=SETS, choices=SETS)
    parser.add_argument("--n", type=int, default=1000, help="strings per synthetic set")
    parser.add_argument("--n-composed", type=int, default=2000, help="lines per composed set (2,000 x 5 digits: "
                        "each test digit once, as the issue's 'now' figures)")
    parser.add_argument("--length", type=int, default=5, help="digits per composed line")
    parser.add_argument("--limit", type=int, default=0, help="at most this many strings per set (0: no limit)")
    parser.add_argument("--adapt", action="store_true", help="k-fold adaptation on the cheques (minutes per fold)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--adapt-set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the fine-tuning (repeatable)")
    parser.add_argument("--batch-n", type=int, default=300, help="strings read at once for the batched throughput")
    parser.add_argument("--latency-n", type=int, default=40, help="single-string calls timed (after a warm-up)")
    parser.add_argument("--batch-size", type=int, default=64, help="the sequence reader's lines per model call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.adapt and (args.strings is None or ORAND not in args.sets or args.folds < 2):
        parser.error("--adapt needs --strings, the orand-car-a-train set and --folds >= 2")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    predictor = None if args.digits == "none" else Predictor.from_run(args.digits)
    reader = None if args.strings is None else StringReader.from_path(args.strings)
    if predictor is None and reader is None:
        parser.error("nothing to measure: give --strings RUN and/or --digits RUN")
    readers = Readers(predictor, reader, args.batch_size)
    names = readers.names()
    ds = load_dataset("mnist", download=False)
    images, labels = ds.test_images, ds.test_labels

    def capped(n: int) -> int:
        return min(n, args.limit) if args.limit else n

    results: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "git": git_state(),  # the synthetic sets are what synthetic_strings draws at this commit
        "digits_run": None if predictor is None else str(Path(args.digits).resolve()),
        "digits_model": None if predictor is None else predictor.name,
        "strings_run": None if reader is None else str(Path(args.strings).resolve()),
        "strings_model": None if reader is None else reader.info.name,
        "strings_min_confidence": None if reader is None else reader.min_confidence,
        "segmentation_min_confidence": None,
        "seed": args.seed, "threads": args.threads, "sequence_batch_size": args.batch_size,
        "notes": ["MNIST test digits only; nothing is chosen on these figures",
                  "segmentation reader: read_digits one string per call, no rejection (min_confidence None)",
                  f"punctuated: {SEPARATOR_NOTE}; both readers also scored digits-only",
                  f"{ORAND}: labels are digits only; reads are compared with separators dropped"],
        "sets": {}, "throughput": [],
    }
    sets: dict[str, StringSet] = {}
    for name in args.sets:
        if name in COMPOSED:
            data = composed_set(name, images, labels, capped(args.n_composed), args.length, args.seed)
        elif name in SYNTHETIC:
            data = synthetic_set(name, images, labels, capped(args.n), args.seed)
        else:
            data = orand_set(realworld_dir() / ORAND, args.limit, args.seed)
        sets[name] = data
        row = evaluate_set(readers, data)
        if name in COMPOSED and predictor is not None:
            row["segmentation_extras"] = composed_extras(predictor, data, images, labels)
        if name in SYNTHETIC:
            row["options"] = data.extra["options"]
        results["sets"][name] = row
        brief = {f"{r} {scoring}": {k: round(v, 4) if isinstance(v, float) else v for k, v in row[r][scoring].items()
                                    if k in ("string_accuracy", "cer", "wrong_length", "rejected", "not_applicable")}
                 for r in names for scoring in ("exact", "digits") if scoring in row[r]}
        print(json.dumps({"set": name, "n": len(data), **brief}), flush=True)

    if args.adapt:
        results["adaptation"] = adapt(readers, sets[ORAND], results["sets"][ORAND], args)
    for name in ("separated", ORAND):
        if name in sets:
            results["throughput"].append(throughput(readers, sets[name], args.batch_n, args.latency_n))
    for row in results["sets"].values():  # the raw reads served the folds; the JSON keeps the figures
        for r in names:
            row[r].pop("reads"), row[r].pop("rejected_flags")
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["machine"] = machine()
    print(table(results, names))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
