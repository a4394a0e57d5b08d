"""prepare_line puts a scanned line into the synthetic strings' geometry (band height and baseline), whatever
its polarity, size, margins and paper; blank images are 'not found'; bad inputs fail in one line; batch_lines
pads."""

import io

import numpy as np
import pytest
from PIL import Image

from digitlab.data.synth_strings import BASELINE, LINE, StringOptions, synthetic_strings
from digitlab.inference.lines import MAX_WIDTH, PreparedLine, batch_lines, prepare_line
from digitlab.inference.prepare import ImageError
from digitlab.models.crnn import WIDTH_STRIDE


def ink_rows(img: np.ndarray) -> tuple[int, int]:
    """The rows under which 5% and 95% of the ink lies: where a line's body sits, measured the same way on the
    generator's string and on the prepared line."""
    c = np.cumsum(img.sum(axis=1)) / img.sum()
    return int(np.searchsorted(c, 0.05)), int(np.searchsorted(c, 0.95))


def ink_columns(img: np.ndarray) -> int:
    cols = np.flatnonzero(img.max(axis=0) > 0.3)
    return int(cols[-1] - cols[0] + 1)


def on_paper(line: np.ndarray, factor: float, pad: tuple[int, int, int, int], paper: float = 1.0,
             ink: float = 0.0) -> np.ndarray:
    """A generator line enlarged ``factor`` times, with margins (top, bottom, left, right), dark ink on paper."""
    h, w = line.shape
    big = np.asarray(Image.fromarray(line).resize((round(w * factor), round(h * factor)), Image.Resampling.BILINEAR))
    big = np.pad(big, ((pad[0], pad[1]), (pad[2], pad[3])))
    return (paper + (ink - paper) * big).astype(np.float32)


@pytest.fixture(scope="module")
def strings(mnist_dataset):
    batch, widths, _, _, texts = synthetic_strings(mnist_dataset.test_images[:3000], mnist_dataset.test_labels[:3000],
                                                   24, seed=3, options=StringOptions.separated())
    return [batch[i, 0, :, : widths[i]].numpy() for i in range(len(texts))], texts


@pytest.mark.mnist
def test_scanned_strings_land_where_the_generator_draws_them(strings) -> None:
    lines, _ = strings
    rng = np.random.default_rng(0)
    errors, stretch = [], []
    for line in lines:
        pad = tuple(int(v) for v in rng.integers(4, 60, 4))
        scan = on_paper(line, float(rng.uniform(2, 3)), pad)  # dark ink on white, 2-3x larger, wide margins
        prepared = prepare_line(scan)
        assert prepared.found and prepared.inverted
        assert prepared.image.shape[0] == 32 and prepared.width % WIDTH_STRIDE == 0
        assert prepared.image.dtype == np.float32 and prepared.image.min() >= 0 and prepared.image.max() <= 1
        errors.append(np.subtract(ink_rows(prepared.image), ink_rows(line)))
        stretch.append(ink_columns(prepared.image) / ink_columns(line))
    errors = np.abs(np.array(errors))
    assert np.median(errors) <= 1 and errors.max() <= 3, errors.tolist()
    assert min(stretch) >= 0.9 and max(stretch) <= 1.12, stretch  # the aspect ratio is kept


@pytest.mark.mnist
def test_polarity_grey_paper_and_uneven_light_give_the_same_line(strings) -> None:
    line = strings[0][1]
    white = prepare_line(on_paper(line, 2.5, (20, 20, 30, 30)))
    dark = prepare_line(on_paper(line, 2.5, (20, 20, 30, 30), paper=0.0, ink=1.0))  # light ink on dark
    scan = on_paper(line, 2.5, (20, 20, 30, 30), paper=0.62, ink=0.12)
    h, w = scan.shape
    lighting = np.linspace(-0.15, 0.15, w)[None, :] + np.linspace(-0.05, 0.05, h)[:, None]
    texture = np.random.default_rng(1).normal(0, 0.02, scan.shape)
    cheque = np.clip(scan + lighting + texture, 0, 1)
    grey = prepare_line((cheque * 255).astype(np.uint8))
    assert white.inverted and not dark.inverted and grey.inverted
    for other in (dark, grey):
        assert abs(other.width - white.width) <= WIDTH_STRIDE
        n = min(other.width, white.width)
        assert np.abs(other.image[:, :n] - white.image[:, :n]).mean() < 0.1
    assert np.median(grey.image) < 0.05  # the paper went to black, its texture with it
    forced = prepare_line(on_paper(line, 2.5, (20, 20, 30, 30)), polarity="light-on-dark")  # the paper is 'ink'
    assert not forced.inverted


@pytest.mark.mnist
def test_the_mapping_back_to_the_source_and_a_box(strings) -> None:
    line = strings[0][2]
    scan = on_paper(line, 2.0, (10, 30, 40, 50))
    page = np.ones((200, scan.shape[1] + 100), np.float32)
    page[70:70 + scan.shape[0], 60:60 + scan.shape[1]] = scan
    whole = prepare_line(page)
    boxed = prepare_line(page, box=(40, 50, scan.shape[1] + 40, scan.shape[0] + 40))
    assert whole.scale == pytest.approx(boxed.scale, rel=0.05) and whole.scale == pytest.approx(0.5, rel=0.15)
    x0, y0, _, y1 = whole.box
    first = 60 + 40 + 2 * int(np.flatnonzero(line.max(axis=0) > 0.4)[0])  # the scan's first inked column
    assert abs(x0 - first) <= 3 and y0 >= 70 and y1 <= 70 + scan.shape[0]
    for p in (whole, boxed):
        # the baseline row of the line image maps to the band's bottom in the source
        _, y = p.to_source(0, BASELINE * 32 - 0.5)
        assert y == pytest.approx(p.band[1], abs=1.0)
        top, bottom = p.band
        assert (bottom - top) * p.scale == pytest.approx(LINE * 32, abs=0.5)


def test_an_underline_does_not_move_the_baseline() -> None:
    img = np.ones((120, 400), np.float32)
    for x in range(40, 300, 60):  # five "digits": boxes of strokes 60 px tall
        img[30:90, x:x + 6] = 0
        img[30:36, x:x + 36] = 0
        img[84:90, x:x + 36] = 0
    plain = prepare_line(img)
    img[100:104, 20:380] = 0  # an underline longer than the line is tall
    underlined = prepare_line(img)
    assert plain.band == pytest.approx((30, 90)) and underlined.band == pytest.approx((30, 90))
    assert underlined.width == plain.width  # a rule may cross the page: the digits set the width
    assert underlined.image[28:].max() > 0.5  # and the underline stays in the picture (the model learnt them)


@pytest.mark.parametrize("image", [np.full((40, 120), 255, np.uint8), np.zeros((40, 120), np.uint8),
                                   np.random.default_rng(0).normal(0.7, 0.01, (40, 120)).clip(0, 1)])
def test_a_blank_image_is_not_found_rather_than_an_error(image: np.ndarray) -> None:
    p = prepare_line(image)
    assert isinstance(p, PreparedLine) and not p.found and p.image.shape == (32, 0)
    assert p.notes == ("no ink found",)


@pytest.mark.parametrize("source, why", [
    (b"", "empty file"),
    (b"not an image at all", "not an image Pillow can read"),
    (np.zeros((0, 10)), "is not an image"),
])
def test_unreadable_inputs_fail_in_one_line(source, why: str) -> None:
    with pytest.raises(ImageError, match=why) as e:
        prepare_line(source)
    assert "\n" not in str(e.value)


def test_bad_options_fail_in_one_line(tmp_path) -> None:
    img = np.ones((40, 100), np.float32)
    img[10:30, 20:24] = 0
    with pytest.raises(ImageError, match="polarity 'sideways'"):
        prepare_line(img, polarity="sideways")  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="lies outside"):
        prepare_line(img, box=(500, 0, 10, 10))
    with pytest.raises(ImageError, match=r"(?i)no such file"):
        prepare_line(tmp_path / "missing.png")
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
    assert prepare_line(buf.getvalue()).found  # bytes are read like a file


def test_a_very_long_line_is_cut_at_the_width_cap() -> None:
    img = np.ones((40, 6000), np.float32)
    img[8:32, 10:5990:40] = 0  # 150 strokes, 24 px tall: the line is 3,200 line pixels long
    p = prepare_line(img)
    assert p.width == MAX_WIDTH and any("cut" in n for n in p.notes)


def test_batch_lines_pads_with_zeros_and_keeps_widths() -> None:
    a, b = np.full((32, 10), 0.5, np.float32), np.ones((32, 24), np.float32)
    batch, widths = batch_lines([a, b, np.zeros((32, 0), np.float32)])
    assert batch.shape == (3, 1, 32, 24) and batch.dtype == np.float32
    assert widths.tolist() == [10, 24, 0] and widths.dtype == np.int64
    assert (batch[0, 0, :, :10] == 0.5).all() and (batch[0, 0, :, 10:] == 0).all() and (batch[2] == 0).all()
    assert batch_lines([])[0].shape == (0, 1, 32, WIDTH_STRIDE)
    with pytest.raises(ValueError, match="different heights"):
        batch_lines([a, np.zeros((16, 8), np.float32)])
