"""Thin images (a short side under ceil(long side / 320): 1x5000, 2x700, 10x3300) and faults in one
file's preparation: one clear ImageError, never an IndexError, and a folder's other files are predicted.

Hermetic: the images are drawn here and the predictor is a stand-in.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlab.inference.batch import FileFailure, predict_files
from digitlab.inference.prepare import WORK_SIDE, ImageError, Prepared, prepare_image, reduce_large

THIN = [(1, 5000), (2, 700), (10, 3300), (5000, 1), (700, 2), (3300, 10), (1, 321)]


@pytest.mark.parametrize("shape", THIN, ids=lambda s: f"{s[1]}x{s[0]}")
def test_a_thin_image_is_refused_in_one_line(shape: tuple[int, int]) -> None:
    for fill in (0.0, 1.0):
        a = np.full(shape, fill, np.float32)
        a[..., : max(1, a.shape[-1] // 3)] = 1 - fill  # some "ink"
        with pytest.raises(ImageError) as e:
            prepare_image(a)
        message = str(e.value)
        assert "too thin to hold a digit" in message and "\n" not in message, message
        assert f"{shape[1]} x {shape[0]} px" in message, message


def test_the_thinnest_image_that_fits_is_prepared() -> None:
    a = np.zeros((1, WORK_SIDE), np.float32)
    a[0, 100:140] = 1
    assert isinstance(prepare_image(a), Prepared)


@pytest.mark.parametrize("longest", [WORK_SIDE, 64])
def test_reduction_never_empties_an_image(longest: int) -> None:
    for shape in THIN:
        a = np.random.default_rng(0).random(shape).astype(np.float32)
        small, f = reduce_large(a, longest)
        assert min(small.shape) >= 1 and max(small.shape) <= longest, (shape, small.shape, f)
        # a side shorter than the block is averaged whole
        if shape[0] < f:
            np.testing.assert_allclose(small[0], a[:, : small.shape[1] * f].reshape(shape[0], -1, f).mean(axis=(0, 2)),
                                       rtol=1e-5)


class StandIn:
    """Prepares through prepare_image, except that one file's preparation hits an unforeseen fault."""

    def prepare(self, source, **kwargs) -> Prepared:
        if Path(source).name == "fault.png":
            raise IndexError("index -1 is out of bounds for axis 0 with size 0")
        return prepare_image(source, **kwargs)

    def predict_prepared(self, prepared, *, names, **kwargs) -> list[str]:
        return [f"ok:{n}" for n in names]


def test_predict_files_turns_any_fault_in_one_file_into_its_failure_row(tmp_path: Path) -> None:
    digit = np.zeros((56, 56), np.uint8)
    digit[10:46, 24:32] = 255
    names = ["a.png", "thin.png", "fault.png", "b.png"]
    for name in names:
        Image.fromarray(np.zeros((2, 700), np.uint8) if name == "thin.png" else digit).save(tmp_path / name)
    files = [tmp_path / n for n in names]
    out = list(predict_files(StandIn(), files))  # type: ignore[arg-type]
    assert out[0] == f"ok:{files[0]}" and out[3] == f"ok:{files[3]}", out
    thin, fault = out[1], out[2]
    assert isinstance(thin, FileFailure) and "too thin" in thin.error, thin
    assert isinstance(fault, FileFailure) and "fault.png" in fault.error and "IndexError" in fault.error, fault
    assert "\n" not in fault.error
