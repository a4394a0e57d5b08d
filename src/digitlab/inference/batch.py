"""Many image files at once: finding them, predicting in batches, a CSV, the prepared images.

Usage::

    files = find_images(["scan.png", "forms/"])              # folders are searched recursively
    for item in predict_files(predictor, files, top_k=3):    # ImagePrediction, or FileFailure for a bad file
        ...
    write_csv("predictions.csv", results)                   # atomically
    save_prepared(item, "prepared/")                         # the 28x28 image the model saw

Files are prepared one by one (``prepare_image``) and classified in batches of ``CHUNK``. A file that
is not a readable image does not stop the others: it comes back as a ``FileFailure`` with its one-line
reason.
"""

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from digitlab.core.fileio import atomic_path
from digitlab.inference.predictor import ImagePrediction, Predictor, PredictorError
from digitlab.inference.prepare import ImageError, Polarity

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm")
CHUNK = 256


@dataclass(frozen=True)
class FileFailure:
    """A file that could not be read as an image."""

    source: str
    error: str

    def record(self) -> dict[str, object]:
        return {"source": self.source, "error": self.error}


def find_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named, and image files (by suffix) under folders named, sorted within each folder.

    Raises:
        PredictorError: a path that does not exist, or a folder with no image files.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PredictorError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise PredictorError(f"{p}: no such file or folder")
    return out


def predict_files(predictor: Predictor, files: list[Path], *, top_k: int = 3, min_confidence: float | None = None,
                  polarity: Polarity = "auto", deskew: bool = False, box: tuple[int, int, int, int] | None = None,
                  progress: Callable[[int], None] | None = None) -> Iterator[ImagePrediction | FileFailure]:
    """Predict every file, in order, in batches of ``CHUNK``; ``progress(n)`` after each batch of n."""
    for start in range(0, len(files), CHUNK):
        chunk = files[start:start + CHUNK]
        readable, failures = [], {}
        for i, f in enumerate(chunk):
            try:
                readable.append((i, predictor.prepare(f, polarity=polarity, deskew=deskew, box=box)))
            except ImageError as e:
                failures[i] = FileFailure(str(f), str(e))
            except Exception as e:  # an unforeseen fault in one file is that file's failure row
                reason = " ".join(str(e).split()) or "no message"
                failures[i] = FileFailure(str(f), f"{f}: could not be prepared ({type(e).__name__}: {reason})")
        preds = predictor.predict_prepared([p for _, p in readable], names=[str(chunk[i]) for i, _ in readable],
                                           top_k=top_k, min_confidence=min_confidence)
        by_index = {i: pred for (i, _), pred in zip(readable, preds, strict=True)}
        for i in range(len(chunk)):
            yield failures.get(i) or by_index[i]
        if progress:
            progress(len(chunk))


CSV_FIELDS = ("source", "label", "confidence", "rejected", "reason", "top_k", "error")


def write_csv(path: str | os.PathLike[str], results: Iterable[ImagePrediction | FileFailure]) -> Path:
    """One row per file: label, confidence, rejected and why, top-k as ``7:0.98 1:0.01``, or the error."""
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in results:
            if isinstance(r, FileFailure):
                w.writerow({"source": r.source, "error": r.error})
            else:
                w.writerow({"source": r.source, "label": r.label or "", "rejected": r.rejected,
                            "confidence": f"{r.confidence:.6f}" if r.label else "", "reason": r.reason or "",
                            "top_k": " ".join(f"{c}:{p:.4f}" for c, p in r.top_k)})
    return target


def save_prepared(item: ImagePrediction, folder: str | os.PathLike[str], *,
                  taken: set[str] | None = None) -> Path | None:
    """Write the 28x28 image the model saw as ``folder/<stem>.png`` (a number added when the name is
    taken, in ``taken`` or on disk: an existing file is never replaced); None when no digit was found."""
    if item.prepared.image is None:
        return None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(item.source).stem or "image"
    name, n = f"{stem}.png", 1
    used = taken if taken is not None else set()
    while name in used or (out / name).exists():
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    buf = io.BytesIO()
    Image.fromarray(item.prepared.image).save(buf, format="PNG")
    with atomic_path(out / name) as tmp:
        tmp.write_bytes(buf.getvalue())
    return out / name
