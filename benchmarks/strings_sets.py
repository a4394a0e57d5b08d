"""The string benchmark's sets and scores: lines composed from MNIST test digits, synthetic strings from them
rendered as scans, the ORAND-CAR-A cheque amounts, and whole-string / character-error scoring.

Usage (from a script in benchmarks/): ``from strings_sets import composed_set, synthetic_set, orand_set, score``.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from digitlab.data.synth_strings import StringOptions, synthetic_strings
from digitlab.inference.strings import compose_line

# compose_line's gap between neighbouring digits' ink boxes, px (inclusive; negative: overlap): the issue's
# "now" figures were measured on these, 5 digits a line, seed + 1000 * position (bench_strings before issue 17)
COMPOSED = {"composed-separated": (2, 12), "composed-touching": (-4, 0)}
# the page and pen effects, off as in StringOptions.separated() and .touching()
EFFECTS_OFF = {"p_underline": 0.0, "p_ruled": 0.0, "p_background": 0.0, "p_blur": 0.0, "p_noise": 0.0, "p_jpeg": 0.0,
               "p_thin": 0.0, "p_thick": 0.0}
SYNTHETIC = {
    "separated": StringOptions.separated(),
    "touching": StringOptions.touching(),
    # a separator (or two) in every string, the default layout otherwise, no page or pen effects
    "punctuated": dataclasses.replace(StringOptions(), p_separator=1.0, p_trailing=0.0, **EFFECTS_OFF),
    "ruled": dataclasses.replace(StringOptions.separated(), p_ruled=1.0, p_underline=0.5),
}
SCAN_ZOOM = 2  # synthetic strings (32 px high) reach the readers enlarged, as a scan would be
ORAND = "orand-car-a-train"


@dataclass
class StringSet:
    """Lines to read (arrays of dark ink on white, or paths) and their truth as written."""

    name: str
    items: list[object]  # (H, W) uint8 arrays or PNG paths
    truths: list[str]  # with separators where the set writes them
    names: list[str]
    describe: str
    extra: dict[str, object] = field(default_factory=dict)  # set-specific data (composed: indices and boxes)

    def __len__(self) -> int:
        return len(self.items)


def composed_set(name: str, images: np.ndarray, labels: np.ndarray, n: int, length: int, seed: int) -> StringSet:
    """``n`` lines of ``length`` test digits laid side by side by ``compose_line`` (dark ink on white): consecutive
    runs of a seeded permutation of the test split, so 2,000 lines of 5 use every test digit once."""
    gap = COMPOSED[name]
    seed = seed + 1000 * list(COMPOSED).index(name)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(images)) for _ in range(-(-n * length // len(images)))])
    lines, truths, indices, boxes = [], [], [], []
    for k in range(n):
        idx = order[k * length:(k + 1) * length]
        line, bx = compose_line(images[idx], rng, gap=gap)
        lines.append(255 - line)
        truths.append("".join(str(int(v)) for v in labels[idx]))
        indices.append(idx)
        boxes.append(bx)
    return StringSet(name, lines, truths, [f"{name}#{k}" for k in range(n)],
                     f"compose_line, {length} MNIST test digits a line, scale 0.8-1.2, baseline jitter +-3 px, "
                     f"gap {gap[0]}..{gap[1]} px, dark ink on white, seed {seed}",
                     {"indices": indices, "boxes": boxes, "length": length})


def to_scan(line: np.ndarray, zoom: int = SCAN_ZOOM) -> np.ndarray:
    """A synthetic line (light ink on dark, floats in [0, 1]) as a scan arrives: dark ink on white uint8, enlarged
    ``zoom`` times (bilinear)."""
    gray = np.round((1.0 - np.clip(line, 0, 1)) * 255).astype(np.uint8)
    h, w = gray.shape
    return np.asarray(Image.fromarray(gray).resize((w * zoom, h * zoom), Image.BILINEAR))


def synthetic_set(name: str, images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> StringSet:
    """``n`` strings made by ``synthetic_strings`` from the given (test) digits with the set's options, each cut to
    its own width and rendered by ``to_scan``."""
    seed = seed + 100 + list(SYNTHETIC).index(name)
    batch, widths, _, _, texts = synthetic_strings(images, labels, n, seed=seed, options=SYNTHETIC[name])
    lines = [to_scan(batch[i, 0, :, :int(widths[i])].numpy()) for i in range(n)]
    opt = {k: v for k, v in dataclasses.asdict(SYNTHETIC[name]).items() if k != "length_weights"}
    return StringSet(name, lines, texts, [f"{name}#{k}" for k in range(n)],
                     f"synthetic_strings from MNIST test digits, seed {seed}, inverted to dark ink on white uint8, "
                     f"enlarged {SCAN_ZOOM}x bilinear", {"options": opt})


def orand_set(folder: Path, limit: int, seed: int) -> StringSet:
    """The cheque amounts of ``folder`` (``labels.tsv``: file, TAB, digits); ``limit`` of them (a seeded draw, kept
    in file order; 0: all)."""
    rows = [line.split("\t") for line in (folder / "labels.tsv").read_text(encoding="utf-8").splitlines() if line]
    rows = sorted((f, t.strip()) for f, t in rows)
    if limit and limit < len(rows):
        keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:limit])
        rows = [rows[i] for i in keep]
    return StringSet(ORAND, [str(folder / f) for f, _ in rows], [t for _, t in rows], [f for f, _ in rows],
                     f"{folder}: real cheque amounts (PNG, dark ink on grey paper), labels digits only")


# --------------------------------------------------------------------------------------------------- scores

def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j - 1] + (ca != cb), prev[j] + 1, cur[j - 1] + 1))
        prev = cur
    return prev[-1]


def digits_only(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def score(truths: list[str], reads: list[str], rejected: list[bool], *, digits: bool = False) -> dict[str, object]:
    """Whole-string accuracy (every string counts, rejected ones by their best guess), character error rate
    (edit distance summed over strings / truth characters summed), the share read with the wrong length, the
    share rejected and the accuracy among the strings kept. ``digits``: separators dropped from both sides."""
    if digits:
        truths, reads = [digits_only(t) for t in truths], [digits_only(r) for r in reads]
    n = len(truths)
    right = [r == t for r, t in zip(reads, truths, strict=True)]
    kept = [ok for ok, rej in zip(right, rejected, strict=True) if not rej]
    errors = sum(edit_distance(t, r) for r, t in zip(reads, truths, strict=True))
    wrong_length = sum(len(r) != len(t) for r, t in zip(reads, truths, strict=True))
    return {
        "n": n,
        "string_accuracy": sum(right) / n if n else None,
        "cer": errors / max(1, sum(len(t) for t in truths)),
        "wrong_length": wrong_length / n if n else None,
        "length_right": 1 - wrong_length / n if n else None,
        "rejected": (n - len(kept)) / n if n else None,
        "accuracy_kept": sum(kept) / len(kept) if kept else None,
        "examples_wrong": [(t, r) for t, r, ok in zip(truths, reads, right, strict=True) if not ok][:10],
    }
