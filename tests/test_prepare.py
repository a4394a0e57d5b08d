"""Real-image preparation (``digitlab.inference.prepare``): polarity, cropping, fitting and centring on
synthetic shapes with known answers; every format, mode and kind of source Pillow gives; one clear
``ImageError`` for every bad input; ``Predictor.predict_images`` on files; and MNIST test digits
re-rendered the ways people deliver them, read by a model trained here (``mnist`` marker).

Everything but the last section is hermetic: the images are drawn here.
"""

import io
import os
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from digitlab.data.preprocess import PreprocessSpec
from digitlab.inference import prepare as prepare_module
from digitlab.inference.backends import TorchBackend
from digitlab.inference.formats import ModelInfo
from digitlab.inference.predictor import Predictor
from digitlab.inference.prepare import ImageError, Prepared, prepare_image
from digitlab.models import create_model

WHITE, BLACK = 255, 0
FIT_BOX = 20  # MNIST's box for the longest side of the ink
CENTRE = 14.0  # MNIST's centre of mass, in pixels of the 28x28 frame
COM_TOLERANCE = 0.5 + 1e-6  # placement is by whole pixels
EXIF_ORIENTATION = 0x0112
SPEC = PreprocessSpec(mean=0.1307, std=0.3081)


# ---------------------------------------------------------------------------------------------------------------
# Helpers: synthetic drawings (dark ink on white, uint8) and measures of a prepared frame


def canvas(h: int, w: int, value: int = WHITE) -> np.ndarray:
    return np.full((h, w), value, np.uint8)


def bar(h: int = 200, w: int = 200, top: int = 50, left: int = 90, height: int = 100, width: int = 20) -> np.ndarray:
    a = canvas(h, w)
    a[top:top + height, left:left + width] = BLACK
    return a


def ring(h: int = 100, w: int = 100, cy: float = 50, cx: float = 50, r_in: float = 15, r_out: float = 22) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - cy, xx - cx)
    return np.where((r >= r_in) & (r <= r_out), BLACK, WHITE).astype(np.uint8)


def rectangle(h: int = 120, w: int = 120, top: int = 20, left: int = 35, height: int = 80, width: int = 50,
              stroke: int = 8) -> np.ndarray:
    """An outlined rectangle (a "0" drawn with a ruler)."""
    a = bar(h, w, top, left, height, width)
    a[top + stroke:top + height - stroke, left + stroke:left + width - stroke] = WHITE
    return a


def ell(h: int, w: int, top: int, left: int, size: int = 60, stroke: int = 10) -> np.ndarray:
    """An L: its centre of mass is far from the centre of its box."""
    a = canvas(h, w)
    a[top:top + size, left:left + stroke] = BLACK
    a[top + size - stroke:top + size, left:left + size] = BLACK
    return a


def seven(side: int = 112) -> np.ndarray:
    """A "7" with a crossbar, anti-aliased (drawn at 4x, reduced): asymmetric under rotation and flips."""
    big = Image.new("L", (4 * side, 4 * side), WHITE)
    d = ImageDraw.Draw(big)
    s = 4 * side / 112
    d.line([(30 * s, 22 * s), (82 * s, 22 * s), (48 * s, 92 * s)], fill=BLACK, width=round(9 * s), joint="curve")
    d.line([(46 * s, 58 * s), (74 * s, 58 * s)], fill=BLACK, width=round(7 * s))
    return np.asarray(big.resize((side, side), Image.Resampling.BOX))


def encode(im: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    cy, cx = ndi.center_of_mass(img.astype(np.float64))
    return float(cy), float(cx)


def extent(img: np.ndarray) -> tuple[int, int]:
    """Height and width of the ink (any lit pixel)."""
    ys, xs = np.nonzero(img)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def corr_rows(a: np.ndarray, b: np.ndarray, shift: int = 0) -> np.ndarray:
    """Pearson correlation of each pair of images ``(N, H, W)``, the best over whole-pixel shifts of
    ``a`` up to ``shift``: where MNIST rounded a centre of mass one way and the preparation the other,
    a digit one pixel off is still the same digit."""
    b = b.reshape(len(b), -1).astype(np.float64)
    b = b - b.mean(axis=1, keepdims=True)
    best = np.full(len(a), -np.inf)
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            x = np.roll(a, (dy, dx), axis=(1, 2)).reshape(len(a), -1).astype(np.float64)
            x = x - x.mean(axis=1, keepdims=True)
            c = (x * b).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (b * b).sum(axis=1) + 1e-12)
            best = np.maximum(best, c)
    return best


def found(source: object, **kwargs: object) -> Prepared:
    p = prepare_image(source, **kwargs)
    assert p.found and p.image is not None, p.notes
    assert p.image.shape == (28, 28) and p.image.dtype == np.uint8
    return p


def assert_one_line(e: pytest.ExceptionInfo[ImageError], *needles: str) -> None:
    message = str(e.value)
    assert message and "\n" not in message, message
    for needle in needles:
        assert needle in message, message


# ---------------------------------------------------------------------------------------------------------------
# Polarity, centring, fitting and cropping: synthetic shapes with known answers

SHAPES: dict[str, Callable[[], np.ndarray]] = {"bar": bar, "rectangle": rectangle, "ring": ring, "seven": seven}


@pytest.mark.parametrize("shape", SHAPES)
def test_polarity_is_read_from_the_background(shape: str) -> None:
    dark_on_light = SHAPES[shape]()
    light_on_dark = 255 - dark_on_light
    a, b = found(dark_on_light), found(light_on_dark)
    assert a.inverted and "inverted" in a.notes
    assert not b.inverted and "inverted" not in b.notes
    assert corr(a.image, b.image) > 0.99  # the same digit either way
    assert a.image[0].max() == 0 and a.image[:, 0].max() == 0  # MNIST's convention: light ink on black


def test_polarity_can_be_forced() -> None:
    ink_on_paper = seven()
    auto = found(ink_on_paper)
    assert found(ink_on_paper, polarity="dark-on-light").inverted
    assert np.array_equal(found(ink_on_paper, polarity="dark-on-light").image, auto.image)
    assert not prepare_image(ink_on_paper, polarity="light-on-dark").inverted  # the paper is taken for ink
    chalk = 255 - ink_on_paper
    assert not found(chalk, polarity="light-on-dark").inverted
    assert prepare_image(chalk, polarity="dark-on-light").inverted
    with pytest.raises(ImageError) as e:
        prepare_image(ink_on_paper, polarity="upside-down")  # type: ignore[arg-type]
    assert_one_line(e, "polarity", "upside-down")


@pytest.mark.parametrize(("h", "w", "top", "left"), [
    (400, 400, 5, 5),  # top-left corner of a big canvas
    (400, 400, 330, 330),  # bottom-right corner
    (400, 400, 5, 330),
    (400, 300, 170, 120),  # the middle of a canvas that is not square
    (80, 80, 10, 10),  # a small image
], ids=["top-left", "bottom-right", "top-right", "middle", "small"])
def test_centre_of_mass_is_at_14_14_wherever_the_digit_was(h: int, w: int, top: int, left: int) -> None:
    p = found(ell(h, w, top, left))
    cy, cx = centre_of_mass(p.image)
    assert abs(cy - CENTRE) <= COM_TOLERANCE and abs(cx - CENTRE) <= COM_TOLERANCE, (cy, cx)
    # placed by its mass, not its box: the L's box is well off centre
    ys, xs = np.nonzero(p.image)
    assert (ys.min() + ys.max()) / 2 < CENTRE - 1 and (xs.min() + xs.max()) / 2 > CENTRE + 1


@pytest.mark.parametrize("shape", SHAPES)
def test_centre_of_mass_of_every_shape(shape: str) -> None:
    cy, cx = centre_of_mass(found(SHAPES[shape]()).image)
    assert abs(cy - CENTRE) <= COM_TOLERANCE and abs(cx - CENTRE) <= COM_TOLERANCE, (cy, cx)


def test_longest_side_fills_the_box_and_the_aspect_is_kept() -> None:
    tall = found(bar(200, 200, top=40, left=90, height=120, width=16)).image
    h, w = extent(tall)
    assert h == FIT_BOX and w < h / 2, (h, w)  # a tall thin bar stays tall and thin
    wide = found(bar(200, 200, top=90, left=40, height=16, width=120)).image
    h, w = extent(wide)
    assert w == FIT_BOX and h < w / 2, (h, w)
    h, w = extent(found(ring()).image)
    assert h == w == FIT_BOX
    h, w = extent(found(rectangle(height=80, width=40)).image)  # 2:1 stays 2:1
    assert h == FIT_BOX and abs(w - FIT_BOX / 2) <= 1.5, (h, w)


def test_fit_box_and_polarity_come_from_the_spec() -> None:
    small = PreprocessSpec(mean=0.5, std=0.5, fit_box=16)
    assert max(extent(found(ring(), spec=small).image)) == 16
    paper = PreprocessSpec(mean=0.5, std=0.5, polarity="dark-on-light")
    img = found(ring(), spec=paper).image
    assert img[0, 0] == 255 and img.min() < 64  # a model trained on dark ink gets dark ink
    assert corr(255 - img, found(ring()).image) > 0.99


def test_specks_far_from_the_digit_are_dropped() -> None:
    clean = bar()
    dirty = clean.copy()
    for y, x in [(5, 5), (8, 185), (190, 10), (185, 188), (100, 20)]:  # dust: 3x3 dots far from the bar
        dirty[y:y + 3, x:x + 3] = BLACK
    a, b = found(clean), found(dirty)
    assert b.box == a.box, (a.box, b.box)
    assert corr(a.image, b.image) > 0.99


def faint_topped_ring(pen: int, faint: int = 200) -> np.ndarray:
    """A ring (a "0") whose top quarter was drawn faint (grey ``faint``, as a fading pen leaves it), ``pen``
    px wide at 112x112, anti-aliased."""
    big = Image.new("L", (448, 448), WHITE)
    d = ImageDraw.Draw(big)
    oval = (100, 60, 348, 388)
    d.arc(oval, 0, 360, fill=BLACK, width=4 * pen)
    d.arc(oval, 225, 315, fill=WHITE, width=4 * pen + 4)  # the top quarter, erased...
    d.arc(oval, 225, 315, fill=faint, width=4 * pen)  # ...and redrawn faint
    return np.asarray(big.resize((112, 112), Image.Resampling.BOX))


@pytest.mark.parametrize(("pen", "fix_stroke", "least"), [(3, True, 0.35), (8, False, 0.15)],
                         ids=["thin-thickened", "mnist-width"])
def test_a_faint_stroke_stays_part_of_the_digit(pen: int, fix_stroke: bool, least: float) -> None:
    # The top is ink at about 0.2 of the range: below the threshold that finds the digit, so the crop used
    # to cut it off and a 0 became a U. A thin digit is thickened, and its faint ink raised (gamma).
    p = found(faint_topped_ring(pen), fix_stroke=fix_stroke)
    img = p.image.astype(np.float64)
    top, bottom = img[:9, 11:18].max(), img[19:, 11:18].max()
    assert top >= least * bottom, (top, bottom, p.notes)
    assert ("thickened" in p.notes) == fix_stroke
    assert p.box is not None and p.box[1] <= 18, p.box  # the ink's box starts at the faint top (y 15-18)


@pytest.mark.parametrize(("h", "w"), [(120, 90), (1000, 700)], ids=["small", "reduced-internally"])
def test_box_is_in_source_pixels(h: int, w: int) -> None:
    top, left, height, width = h // 4, w // 3, h // 2, w // 8
    p = found(bar(h, w, top, left, height, width))
    tolerance = 1 + -(-max(h, w) // prepare_module.WORK_SIDE)  # one reduced pixel, and the edge
    expected = (left, top, left + width, top + height)
    assert p.box is not None and all(abs(a - b) <= tolerance for a, b in zip(p.box, expected, strict=True)), \
        (p.box, expected)


@pytest.mark.parametrize("image", [
    canvas(100, 100, WHITE),
    canvas(100, 100, BLACK),
    canvas(64, 48, 128),
    canvas(28, 28, 200),
    bar(100, 100, 20, 40, 60, 10) // 255 * 2 + 126,  # a bar 2 grey levels off its background: too faint
], ids=["white", "black", "grey", "small-grey", "faint"])
def test_no_digit_is_no_guess(image: np.ndarray) -> None:
    p = prepare_image(image)
    assert not p.found and p.image is None and p.box is None and p.stroke is None


def _lit_bar(noise: float) -> np.ndarray:
    """A dark bar (x 70-84, y 30-130) photographed under light from the right, with sensor noise."""
    paper = bar(160, 160, top=30, left=70, height=100, width=14).astype(np.float64)
    light = np.linspace(0.45, 1.0, 160)[None, :]  # dim on the left, bright on the right
    noisy = paper * light + 30 * light + np.random.default_rng(0).normal(0, noise, paper.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_uneven_lighting_and_noise_on_a_synthetic_digit() -> None:
    p, clean = found(_lit_bar(8)), found(bar(160, 160, top=30, left=70, height=100, width=14))
    assert p.inverted
    assert corr(p.image, clean.image) > 0.9
    assert found(_lit_bar(0)).box == (70, 30, 84, 130)


def test_box_of_a_noisy_digit() -> None:
    box = found(_lit_bar(8)).box
    assert box is not None and all(abs(a - b) <= 3 for a, b in zip(box, (70, 30, 84, 130), strict=True)), box


def test_a_model_ready_synthetic_digit_passes_through() -> None:
    mnist_like = found(255 - seven()).image  # light ink, fitted and centred: what the model takes
    again = found(mnist_like)
    assert not again.inverted
    assert corr(again.image, mnist_like) > 0.98


# ---------------------------------------------------------------------------------------------------------------
# Formats, modes and kinds of source

def _rgba(ink: np.ndarray, rgb: int, hidden: int = 0) -> Image.Image:
    """Ink as alpha over a solid colour; fully transparent pixels hold ``hidden`` (what is under them
    must not matter)."""
    a = np.zeros((*ink.shape, 4), np.uint8)
    a[..., :3] = np.where(ink[..., None] > 0, rgb, hidden)
    a[..., 3] = ink
    return Image.fromarray(a, "RGBA")


def _la(ink: np.ndarray, level: int) -> Image.Image:
    return Image.fromarray(np.stack([np.full_like(ink, level), ink], axis=-1), "LA")


def _palette(paper: np.ndarray) -> Image.Image:
    """8 grey levels, white first; index 0 (the paper) is made transparent by the caller."""
    im = Image.fromarray(((255 - paper) // 32).astype(np.uint8), "P")
    im.putpalette([v for i in range(8) for v in (255 - 36 * i,) * 3])
    return im


def _sixteen(paper: np.ndarray) -> Image.Image:
    return Image.fromarray(paper.astype(np.uint16) * 257)  # 16-bit: the same picture, 0-65535


def _bilevel(paper: np.ndarray) -> Image.Image:
    return Image.fromarray(paper).convert("1", dither=Image.Dither.NONE)


# (name, encoder of the dark-on-white drawing, the mode Pillow must read back, inverted, least correlation)
CASES: list[tuple[str, Callable[[np.ndarray], bytes], str, bool, float]] = [
    ("png-L", lambda p: encode(Image.fromarray(p)), "L", True, 0.99),
    ("png-RGB", lambda p: encode(Image.fromarray(p).convert("RGB")), "RGB", True, 0.99),
    ("jpeg-L", lambda p: encode(Image.fromarray(p), "JPEG", quality=90), "L", True, 0.97),
    ("jpeg-RGB", lambda p: encode(Image.fromarray(p).convert("RGB"), "JPEG", quality=75), "RGB", True, 0.97),
    ("bmp-L", lambda p: encode(Image.fromarray(p), "BMP"), "L", True, 0.99),
    ("bmp-RGB", lambda p: encode(Image.fromarray(p).convert("RGB"), "BMP"), "RGB", True, 0.99),
    ("bmp-1", lambda p: encode(_bilevel(p), "BMP"), "1", True, 0.9),
    ("tiff-L", lambda p: encode(Image.fromarray(p), "TIFF"), "L", True, 0.99),
    ("tiff-RGB", lambda p: encode(Image.fromarray(p).convert("RGB"), "TIFF"), "RGB", True, 0.99),
    ("tiff-I;16", lambda p: encode(_sixteen(p), "TIFF"), "I;16", True, 0.99),
    ("tiff-1", lambda p: encode(_bilevel(p), "TIFF"), "1", True, 0.9),
    ("webp-lossless", lambda p: encode(Image.fromarray(p).convert("RGB"), "WEBP", lossless=True), "RGB", True, 0.99),
    ("webp-q80", lambda p: encode(Image.fromarray(p).convert("RGB"), "WEBP", quality=80), "RGB", True, 0.97),
    ("gif", lambda p: encode(Image.fromarray(p), "GIF"), "P", True, 0.99),
    ("png-I;16", lambda p: encode(_sixteen(p)), "I;16", True, 0.99),
    ("png-1", lambda p: encode(_bilevel(p)), "1", True, 0.9),
    ("png-P", lambda p: encode(_palette(p)), "P", True, 0.98),
    ("png-P-transparent", lambda p: encode(_palette(p), transparency=0), "P", True, 0.98),
    ("gif-P-transparent", lambda p: encode(_palette(p), "GIF", transparency=0), "P", True, 0.98),
    ("png-RGBA-dark-ink", lambda p: encode(_rgba(255 - p, BLACK)), "RGBA", True, 0.99),
    ("png-RGBA-dark-ink-white-hidden", lambda p: encode(_rgba(255 - p, BLACK, hidden=WHITE)), "RGBA", True, 0.99),
    ("png-RGBA-light-ink", lambda p: encode(_rgba(255 - p, WHITE)), "RGBA", False, 0.99),
    ("png-RGBA-opaque", lambda p: encode(Image.fromarray(p).convert("RGBA")), "RGBA", True, 0.99),
    ("webp-RGBA-dark-ink", lambda p: encode(_rgba(255 - p, BLACK), "WEBP", lossless=True), "RGBA", True, 0.99),
    ("tiff-RGBA-light-ink", lambda p: encode(_rgba(255 - p, WHITE), "TIFF"), "RGBA", False, 0.99),
    ("png-LA-dark-ink", lambda p: encode(_la(255 - p, BLACK)), "LA", True, 0.99),
    ("png-LA-light-ink", lambda p: encode(_la(255 - p, WHITE)), "LA", False, 0.99),
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The seven prepared from its array: what every format and mode must give back."""
    return found(seven()).image


@pytest.mark.parametrize(("encoder", "mode", "inverted", "least"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_format_and_mode(encoder: Callable[[np.ndarray], bytes], mode: str, inverted: bool, least: float,
                               reference: np.ndarray) -> None:
    data = encoder(seven())
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode  # the case exercises the mode it names
    p = found(data)
    assert p.inverted == inverted
    assert corr(p.image, reference) > least


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = Image.fromarray(seven())
    # what a camera stores: the sensor's pixels, and the turn that shows them upright
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    stored = upright.transpose(undo)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    tagged = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    plain = encode(stored, "JPEG", quality=95)
    reference = found(encode(upright, "JPEG", quality=95)).image
    assert corr(found(tagged).image, reference) > 0.97
    assert corr(found(plain).image, reference) < 0.8  # without the tag it is another picture


def test_every_kind_of_source(tmp_path: Path, reference: np.ndarray) -> None:
    paper = seven()
    path = tmp_path / "seven.png"
    path.write_bytes(encode(Image.fromarray(paper)))
    rgb = np.repeat(paper[..., None], 3, axis=2)
    sources = {
        "str path": str(path),
        "Path": path,
        "bytes": path.read_bytes(),
        "bytearray": bytearray(path.read_bytes()),
        "PIL L": Image.fromarray(paper),
        "PIL RGB": Image.fromarray(rgb),
        "PIL RGBA": _rgba(255 - paper, BLACK),
        "uint8 array": paper,
        "float array in [0, 1]": paper / 255.0,
        "float array in [0, 255]": paper.astype(np.float32),
        "uint16 array": paper.astype(np.uint16) * 257,
        "RGB array": rgb,
        "RGBA array": np.asarray(_rgba(255 - paper, BLACK)),
        "float RGB array in [0, 1]": rgb / 255.0,
    }
    for kind, source in sources.items():
        p = found(source)
        assert p.inverted, kind
        assert corr(p.image, reference) > 0.99, kind


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: one ImageError each, a one-line message naming the problem, and nothing else

def _png_with_size(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims ``width`` x ``height`` (IHDR patched, CRC recomputed)."""
    png = encode(Image.fromarray(seven(28)))
    assert png[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + png[33:]


def _half(data: bytes) -> bytes:
    return data[:len(data) // 2]


BAD_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "zero-bytes": (lambda: b"", "empty"),
    "truncated-png": (lambda: _half(encode(Image.fromarray(seven()))), "truncated"),
    "truncated-jpeg": (lambda: _half(encode(Image.fromarray(seven()), "JPEG", quality=75)), "truncated"),
    "random-bytes": (lambda: np.random.default_rng(0).bytes(4096), "not an image"),
    "text": (lambda: b"label,confidence\n7,0.99\n", "not an image"),
    "bomb-100000x100000": (lambda: _png_with_size(100_000, 100_000), "decompression bomb"),
    # a real 7000x7000 bilevel PNG, 6 KB on disk: over the library's limit, under Pillow's own
    "bomb-7000x7000": (lambda: encode(Image.new("1", (7000, 7000))), "7000x7000"),
}


@pytest.mark.filterwarnings("error")  # a warning (DecompressionBombWarning, RuntimeWarning) is a failure too
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_one_image_error(case: str, tmp_path: Path) -> None:
    make, needle = BAD_FILES[case]
    data = make()
    path = tmp_path / f"{case}.png"
    path.write_bytes(data)
    with pytest.raises(ImageError) as e:
        prepare_image(path)
    assert_one_line(e, str(path), needle)
    with pytest.raises(ImageError) as e:
        prepare_image(data)
    assert_one_line(e, needle)


@pytest.mark.filterwarnings("error")
def test_folder_missing_path_and_oversized_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageError) as e:
        prepare_image(tmp_path)
    assert_one_line(e, str(tmp_path), "folder")
    with pytest.raises(ImageError) as e:
        prepare_image(tmp_path / "nowhere.png")
    assert_one_line(e, "nowhere.png", "No such file")
    big = tmp_path / "big.png"
    big.write_bytes(encode(Image.fromarray(seven())))
    monkeypatch.setattr(prepare_module, "MAX_BYTES", 100)
    with pytest.raises(ImageError) as e:
        prepare_image(big)
    assert_one_line(e, "big.png", "limit")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifo_and_devices_are_refused_before_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            prepare_image(fifo)
            outcome.append(None)
        except BaseException as e:  # handed to the test's thread
            outcome.append(e)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    hung = worker.is_alive()
    if hung:  # a writer that closes at once gives the blocked reader its end of file
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
    assert not hung, "reading a FIFO waited for a writer"
    error = outcome[0]
    assert isinstance(error, ImageError), error
    assert "\n" not in str(error) and "pipe.png" in str(error) and "FIFO" in str(error), error
    if Path("/dev/zero").exists():
        with pytest.raises(ImageError) as e:
            prepare_image("/dev/zero")
        assert_one_line(e, "/dev/zero", "character device")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_the_read_stops_at_the_byte_limit_whatever_st_size_says(monkeypatch: pytest.MonkeyPatch) -> None:
    # /dev/zero reports st_size 0 and never ends: with the file-kind check out of the way, the
    # byte limit alone must stop the read
    monkeypatch.setattr(prepare_module, "_kind", lambda mode: None)
    with pytest.raises(ImageError) as e:
        prepare_module.read_image_file(Path("/dev/zero"), limit=1000)
    assert_one_line(e, "/dev/zero", "1,000-byte limit")


def _nan_rgb() -> np.ndarray:
    a = np.repeat((seven() / 255.0)[..., None], 3, axis=2)
    a[10, 10, 0] = np.nan
    return a


BAD_ARRAYS: list[tuple[str, Callable[[], np.ndarray], str]] = [
    ("nan", lambda: np.where(seven() > 0, np.nan, 0.0), "NaN"),
    ("inf", lambda: np.where(seven() > 0, np.inf, 0.0), "NaN or infinite"),
    ("one-nan-in-gray", lambda: np.pad(np.array([[np.nan]]), 13), "NaN"),
    ("nan-in-rgb", _nan_rgb, "NaN"),
    ("1-d", lambda: np.zeros(784, np.uint8), "shape"),
    ("batch", lambda: np.zeros((2, 28, 28), np.uint8), "shape"),
    ("two-channels", lambda: np.zeros((28, 28, 2), np.uint8), "shape"),
    ("empty", lambda: np.zeros((0, 28), np.uint8), "shape"),
    ("scalar", lambda: np.array(7), "shape"),
]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(("make", "needle"), [c[1:] for c in BAD_ARRAYS], ids=[c[0] for c in BAD_ARRAYS])
def test_bad_array_is_one_image_error(make: Callable[[], np.ndarray], needle: str) -> None:
    with pytest.raises(ImageError) as e:
        prepare_image(make())
    assert_one_line(e, needle)


# ---------------------------------------------------------------------------------------------------------------
# Predictor.predict_images on files (an untrained network: what matters here is the path, not the answer)

@pytest.fixture(scope="module")
def untrained() -> Predictor:
    torch.manual_seed(0)
    model = create_model("mlp").eval()
    info = ModelInfo(name="mlp", kind="torch", args={}, class_names=[str(d) for d in range(10)], preprocess=SPEC)
    return Predictor(info, TorchBackend(model, SPEC, device=torch.device("cpu")))


def test_predict_images_blank_is_no_digit_found(untrained: Predictor, tmp_path: Path) -> None:
    blank, digit = tmp_path / "blank.png", tmp_path / "seven.jpg"
    blank.write_bytes(encode(Image.fromarray(canvas(64, 64))))
    digit.write_bytes(encode(Image.fromarray(seven()), "JPEG", quality=75))
    out = untrained.predict_images([blank, str(digit)], min_confidence=0.0)
    assert [o.source for o in out] == [str(blank), str(digit)]
    b, d = out
    assert not b.prepared.found and b.rejected and b.reason == "no digit found" and b.label is None
    assert b.record()["found"] is False and b.record()["reason"] == "no digit found"
    assert d.prepared.found and not d.rejected and d.reason is None and d.label in untrained.class_names
    assert d.proba is not None and abs(float(d.proba.sum()) - 1) < 1e-6


def test_predict_images_corrupt_file_is_an_image_error(untrained: Predictor, tmp_path: Path) -> None:
    good, corrupt = tmp_path / "seven.png", tmp_path / "corrupt.png"
    good.write_bytes(encode(Image.fromarray(seven())))
    corrupt.write_bytes(_half(good.read_bytes()))
    with pytest.raises(ImageError) as e:
        untrained.predict_images([good, corrupt])
    assert_one_line(e, "corrupt.png", "truncated")


# ---------------------------------------------------------------------------------------------------------------
# MNIST test digits re-rendered the ways people deliver them, read by a small CNN trained here
#
# The benchmark (benchmarks/bench_prepare.py) holds the real target, 0.5 point on all 10,000 test digits
# with the default model; a model trained for seconds on 5,000 images is less forgiving and 200 digits
# are 0.5 point each, so here the bound is MAX_DROP points. Measured with this model (3 samples of 200
# digits): drops of -1 to 3 points; a preparation that skips the inversion, centres the box instead of
# the mass, or fits a 14 px box drops 9 to 35 points (tried).

N_DIGITS = 200
MAX_DROP = 5.0  # points
# two small blocks on 5,000 images, one epoch: ~95% test accuracy in seconds
UP = 112  # 4x the frame


def _up(digit: np.ndarray, side: int = UP) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64)


def _paper(light_ink: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(255 - light_ink, 0, 255).round().astype(np.uint8))


def _canvas(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    page = Image.new("L", (400, 400), WHITE)
    page.paste(_paper(_up(digit, 200)), tuple(int(v) for v in rng.integers(0, 201, 2)))
    return encode(page)


def _lighting(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:UP, 0:UP] / (UP - 1) - 0.5
    t = xx * np.cos(angle) + yy * np.sin(angle)
    light = 0.55 + 0.45 * (t - t.min()) / (t.max() - t.min())
    photo = (255 - _up(digit)) * light + rng.normal(0, 12, (UP, UP))
    return encode(Image.fromarray(np.clip(photo, 0, 255).round().astype(np.uint8)))


def _with_lines(digit: np.ndarray, rng: np.random.Generator, kind: str) -> bytes:
    """The digit at 4x on paper with ruled lines, a grid, or a comb-field box (1-3 px grey lines)."""
    pad = 40
    page = np.full((UP + 2 * pad, UP + 2 * pad), 235.0)
    page[pad:pad + UP, pad:pad + UP] -= _up(digit) * 0.85
    lines = np.zeros_like(page, dtype=bool)
    width, step = int(rng.integers(1, 4)), int(rng.integers(30, 42))
    if kind in ("ruled", "grid"):
        for at in range(int(rng.integers(0, step)), page.shape[0], step):
            lines[at:at + width, :] = True
            if kind == "grid":
                lines[:, at:at + width] = True
    else:  # a box a few px around the digit's ink, and the walls of the cells beside it
        ys, xs = np.nonzero(_up(digit) > 60)
        top, bottom = pad + ys.min() - int(rng.integers(2, 12)), pad + ys.max() + int(rng.integers(2, 12))
        left, right = pad + xs.min() - int(rng.integers(2, 12)), pad + xs.max() + int(rng.integers(2, 12))
        lines[top:top + width, :] = lines[bottom:bottom + width, :] = True
        for x in (left, right, 2 * left - right, 2 * right - left):
            if 0 <= x < page.shape[1]:
                lines[top:bottom + width, x:x + width] = True
    page = np.where(lines, np.minimum(page, 130), page)
    return encode(Image.fromarray(np.clip(page, 0, 255).round().astype(np.uint8)))


def _frame_filling(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The digit's ink box scaled (aspect kept) to fill a 16x16 frame, shown at 8x: its ink touches the edges."""
    ys, xs = np.nonzero(digit > 30)
    crop = digit[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    size = (max(1, round(16 * w / max(h, w))), max(1, round(16 * h / max(h, w))))
    small = np.zeros((16, 16), np.uint8)
    top, left = (16 - size[1]) // 2, (16 - size[0]) // 2
    small[top:top + size[1], left:left + size[0]] = np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR))
    return encode(_paper(np.asarray(Image.fromarray(small).resize((128, 128), Image.BILINEAR), np.float64) * 0.8))


# name -> (digit, rng) -> file bytes; the renderings the issue lists, as the benchmark draws them
RENDERINGS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "ink-on-white-png": lambda d, rng: encode(Image.fromarray(255 - d)),
    "jpeg-q75": lambda d, rng: encode(Image.fromarray(255 - d), "JPEG", quality=75),
    "canvas-400": _canvas,
    "thin": lambda d, rng: encode(_paper(ndi.grey_erosion(_up(d), size=(7, 7)))),
    "thick": lambda d, rng: encode(_paper(ndi.grey_dilation(_up(d), size=(7, 7)))),
    "rgba-transparent": lambda d, rng: encode(_rgba(d, BLACK)),
    "lighting-noise": _lighting,
    "ruled": lambda d, rng: _with_lines(d, rng, "ruled"),
    "grid": lambda d, rng: _with_lines(d, rng, "grid"),
    "boxed": lambda d, rng: _with_lines(d, rng, "boxed"),
    "frame-filling": _frame_filling,
}
# least mean correlation (best over 1-pixel shifts) of the prepared digits with the MNIST originals; thin
# and thick moved every stroke edge by 1.5 px themselves (measured: 0.90-0.91, 0.86; the others 0.88-0.99)
LEAST_CORR = {"thin": 0.8, "thick": 0.8, "frame-filling": 0.8}
LEAST_CORR_DEFAULT = 0.85


@pytest.fixture(scope="module")
def sample(mnist_dataset) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(np.random.default_rng(0).choice(len(mnist_dataset.test_images), N_DIGITS, replace=False))
    return mnist_dataset.test_images[idx], mnist_dataset.test_labels[idx]


@pytest.mark.mnist
def test_mnist_digits_pass_through_nearly_unchanged(sample: tuple[np.ndarray, np.ndarray]) -> None:
    digits, _ = sample
    prepared = [found(d) for d in digits]
    assert not any(p.inverted for p in prepared)
    c = corr_rows(np.stack([p.image for p in prepared]), digits)
    assert c.mean() > 0.97 and np.quantile(c, 0.1) > 0.95, (c.mean(), np.quantile(c, 0.1))


@pytest.mark.mnist
@pytest.mark.parametrize("rendering", RENDERINGS)
def test_rendered_mnist_digits_read_like_mnist(rendering: str, small_cnn: Predictor,
                                               sample: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    digits, labels = sample
    rng = np.random.default_rng(1)
    paths = []
    for i, d in enumerate(digits):
        paths.append(tmp_path / f"{i:03d}.{'jpg' if 'jpeg' in rendering else 'png'}")
        paths[-1].write_bytes(RENDERINGS[rendering](d, rng))
    out = small_cnn.predict_images(paths)
    raw = float(np.mean(small_cnn.classify(digits) == labels))
    assert raw > 0.9  # the model is good enough for a drop to mean something
    missing = [o.source for o in out if not o.prepared.found]
    assert not missing, f"{len(missing)} digits not found: {missing[:5]}"
    accuracy = float(np.mean([o.label == str(y) for o, y in zip(out, labels, strict=True)]))
    assert 100 * (raw - accuracy) <= MAX_DROP, f"{rendering}: {accuracy:.1%} against {raw:.1%} on the raw digits"
    c = corr_rows(np.stack([o.prepared.image for o in out]), digits, shift=1)
    least = LEAST_CORR.get(rendering, LEAST_CORR_DEFAULT)
    assert c.mean() > least, f"{rendering}: mean correlation {c.mean():.3f} with the originals"


# ---------------------------------------------------------------------------------------------------------------
# A region of interest (a form's field)


def test_a_box_reads_only_its_region_and_reports_source_pixels() -> None:
    page = canvas(120, 240)
    page[:, :120] = bar(120, 120, 20, 50, 80, 12)
    page[:, 120:] = ring(120, 120, 60, 60, 25, 33)
    alone = prepare_image(ring(120, 120, 60, 60, 25, 33))
    boxed = prepare_image(page, box=(120, 0, 120, 120))
    assert boxed.found and np.array_equal(boxed.image, alone.image)
    x0, y0, x1, y1 = boxed.box
    assert 120 <= x0 < x1 <= 240 and 0 <= y0 < y1 <= 120
    whole = prepare_image(page)
    assert not np.array_equal(whole.image, alone.image)  # without the box both shapes are read as one


@pytest.mark.parametrize(("text", "message"), [
    ("1,2,3", "four whole numbers"), ("a,b,c,d", "four whole numbers"), ("0,0,0,5", "1 or more"),
    ("-1,0,5,5", "0 or more"),
])
def test_a_bad_box_is_one_image_error(text: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        prepare_module.parse_box(text)


def test_a_box_outside_the_image_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="outside the 100x100 image"):
        prepare_image(canvas(100, 100), box=(150, 10, 20, 20))
