"""Synthetic handwritten digit strings (amounts, dates, codes) for training and validating a CTC string reader.

Usage::

    ds = load_dataset("mnist")
    batch, widths, targets, target_lengths, texts = synthetic_strings(ds.train_images, ds.train_labels, 10000, seed=0)
    clean = synthetic_strings(ds.test_images, ds.test_labels, 500, options=StringOptions.separated())

A string is 1 to ``max_chars`` characters: MNIST-convention digits picked at random from the given images, and the
separators ``. , - /`` drawn as pen strokes (a dot or a comma with a tail at the baseline, a short dash at mid-height,
a slash over the line), as in "1.480", "12,50", "12/07" or "3-7". Layout varies per string and per character:
spacing from clearly apart to touching and overlapping, baseline and height jitter, a slant per string, zeros at
half the line height, spaces between groups and long trailing dashes ("100--"). Then the page: underlines, ruled
lines, cheque-like backgrounds (gradients, blotchy and fine paper texture), blur, scan noise and a cheap JPEG stand-in
(quantisation and 8x8 blockiness). Everything is batched on tensors: the Python loops run over character slots
(at most ``max_chars``), effects and chunks of strings, never over single strings. Each character slot is placed by a
per-sample affine grid (``grid_sample``) into a small window that is max-scattered into the canvas, so overlapping
ink combines by max. The output keeps MNIST's convention, light ink on dark, so a string model sees what the digit
models see.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor

ALPHABET = "0123456789.,-/"  # CTC class k + 1 is ALPHABET[k]; class 0 is the blank
SIZE = 28  # glyph frame, MNIST's
DIGIT_BOX = 20  # MNIST's ink box: a digit is about 20 px tall in its frame
LINE = 0.72  # a digit's ink height as a share of the line height
BASELINE = 0.8  # where the baseline sits, as a share of the line height (room below for commas and underlines)
FRAME_BASELINE = 24.0  # separators are drawn in the frame against the baseline of an MNIST digit's box
EDGE = 0.6  # half-width of the anti-aliased edge ramp of drawn strokes, in frame pixels
INK = 0.2  # a column or row with more ink than this counts as inked (extents, touching)
CHUNK = 1024  # strings rendered at once: bounds memory to a few (CHUNK x height x width) floats
DOT, COMMA, DASH, SLASH = (ALPHABET.index(c) for c in ".,-/")
LONG_DASH = len(ALPHABET)  # internal glyph kind: a trailing dash, drawn long, written as "-"
SEPARATOR_WEIGHTS = (0.35, 0.25, 0.2, 0.2)  # . , / -
P_DOUBLE_TRAIL = 0.4  # a trailing dash drawn twice, one under the other ("="), as amounts are closed


CLEAN_HAND = {"scale_jitter": 0.08, "baseline_jitter": 0.04}  # the clean benchmark sets' per-character jitter


@dataclass(frozen=True)
class StringOptions:
    """Probabilities (``p_*``, per string) and ranges of the layout and effects; lengths are shares of the height."""

    length_weights: tuple[float, ...] = (5, 8, 9, 9, 9, 8, 7, 3, 2, 1.5, 1, 1)  # for 1, 2, ... characters
    p_separator: float = 0.35  # the string holds one or two of ". , - /" (and then has at least 3 characters)
    p_trailing: float = 0.15  # one or two long dashes after the string, written "-" (decisions.md#string-generator)
    zero_share: float = 0.15  # extra share of zeros among the digits, as amounts have many
    p_touching: float = 0.35  # neighbours touch or overlap (negative gaps), else they stand apart
    gap_apart: tuple[float, float] = (0.03, 0.35)  # mean gap per string, when apart
    gap_touching: tuple[float, float] = (-0.15, -0.03)  # mean gap per string, when touching (overlap)
    gap_jitter: float = 0.05  # per character, around the string's mean gap
    p_space: float = 0.1  # a wide space between two groups
    scale_jitter: float = 0.08  # per character height, +- this share
    baseline_jitter: float = 0.04  # per character, +- this share of the height
    slant: float = 0.3  # per string shear, +- this (x per y)
    p_small_zeros: float = 0.08  # the string's zeros are drawn at half the line height
    p_underline: float = 0.12
    p_ruled: float = 0.15
    p_background: float = 0.6  # a grey, uneven, textured paper instead of MNIST's black
    p_blur: float = 0.4
    p_noise: float = 0.5
    p_jpeg: float = 0.3
    p_thin: float = 0.25  # a finer pen than MNIST's: the ink eroded by a pixel (docs/decisions.md#string-generator)
    p_thick: float = 0.1  # a broader pen: the ink dilated by a pixel

    def __post_init__(self) -> None:
        probs = {k: v for k, v in vars(self).items() if k.startswith("p_") or k == "zero_share"}
        bad = [k for k, v in probs.items() if not 0 <= v <= 1]
        if bad or not self.length_weights or min(self.length_weights) < 0 or sum(self.length_weights) <= 0:
            raise ValueError(f"StringOptions: probabilities must lie in [0, 1] and length weights be >= 0: {bad}")

    @classmethod
    def separated(cls) -> "StringOptions":
        """Digits only, clearly apart, no page effects, a steady hand: the benchmark's clean case (fixed here, not
        following the training defaults, so the benchmark's strings stay the same)."""
        return cls(p_separator=0, p_trailing=0, zero_share=0, p_touching=0, gap_apart=(0.08, 0.3), p_space=0,
                   p_small_zeros=0, p_underline=0, p_ruled=0, p_background=0, p_blur=0, p_noise=0, p_jpeg=0,
                   p_thin=0, p_thick=0, **CLEAN_HAND)

    @classmethod
    def touching(cls) -> "StringOptions":
        """Digits only, every neighbour touching or overlapping, no page effects, a steady hand."""
        return cls(p_separator=0, p_trailing=0, zero_share=0, p_touching=1, p_space=0, p_small_zeros=0,
                   p_underline=0, p_ruled=0, p_background=0, p_blur=0, p_noise=0, p_jpeg=0, p_thin=0, p_thick=0,
                   **CLEAN_HAND)


def _u(gen: torch.Generator, shape: tuple[int, ...], lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _flag(gen: torch.Generator, n: int, p: float) -> Tensor:
    return torch.rand(n, generator=gen) < p


def _separator_strokes(kind: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Two segments per glyph ``(n, 2 segments, 2 ends, 2)`` in frame pixels, and the pen radius ``(n,)``."""
    n = kind.shape[0]
    x0, y0 = 14 + _u(gen, (n,), -1, 1), FRAME_BASELINE - 1.6 + _u(gen, (n,), -0.8, 0.6)
    dot = torch.stack([x0, y0], -1)
    blob = dot + torch.stack([_u(gen, (n,), 0.2, 0.9), _u(gen, (n,), -0.2, 0.3)], -1)  # a dot is a tiny stroke
    tail = dot + torch.stack([_u(gen, (n,), -2.4, -0.8), _u(gen, (n,), 2.8, 4.4)], -1)  # the comma's tail
    half = torch.where(kind == LONG_DASH, _u(gen, (n,), 7, 12.5), _u(gen, (n,), 2.4, 4.2))
    ym, tilt = 14 + _u(gen, (n,), -1.5, 1.5), _u(gen, (n,), -0.12, 0.08) * half
    dash = torch.stack([torch.stack([14 - half, ym - tilt], -1), torch.stack([14 + half, ym + tilt], -1)], 1)
    # A slash leans much further than a 1 does, which is what tells them apart.
    top = torch.stack([14 + _u(gen, (n,), 4, 6.5), _u(gen, (n,), 4, 8)], -1)
    bottom = torch.stack([14 - _u(gen, (n,), 4, 6.5), FRAME_BASELINE + _u(gen, (n,), -1, 1)], -1)
    slash = torch.stack([top, bottom], 1)
    dot_seg = torch.stack([dot, blob], 1)
    # A trailing stroke is often doubled ("=", as cheques close an amount): still read as "-".
    doubled = dash + torch.where(_flag(gen, n, P_DOUBLE_TRAIL), _u(gen, (n,), 3.5, 5.5), 0.0)[:, None, None] * \
        torch.tensor([0.0, 1.0])
    one = {DOT: dot_seg, COMMA: dot_seg, DASH: dash, SLASH: slash, LONG_DASH: dash}
    two = {COMMA: torch.stack([dot, tail], 1), LONG_DASH: doubled}
    segs = torch.zeros(n, 2, 2, 2)
    for k, seg in one.items():
        m = (kind == k)[:, None, None]
        segs[:, 0] = torch.where(m, seg, segs[:, 0])
        segs[:, 1] = torch.where(m, two.get(k, seg), segs[:, 1])
    radius = torch.where((kind == DOT) | (kind == COMMA), _u(gen, (n,), 1.3, 1.9), _u(gen, (n,), 0.9, 1.4))
    return segs, radius


def _draw_strokes(segs: Tensor, radius: Tensor) -> Tensor:
    """Anti-aliased ink ``(n, SIZE, SIZE)`` of segments ``(n, S, 2 ends, 2)``: a ramp on the distance to the pen."""
    ys, xs = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                            indexing="ij")
    p = torch.stack([xs, ys], -1).view(1, 1, -1, 2)  # (1, 1, P, 2)
    a, d = segs[:, :, 0, None], (segs[:, :, 1] - segs[:, :, 0])[:, :, None]  # (n, S, 1, 2)
    t = (((p - a) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-6)).clamp(0, 1)  # (n, S, P)
    dist = (p - a - t[..., None] * d).norm(dim=-1).amin(1)  # (n, P)
    return ((radius[:, None] + EDGE - dist) / (2 * EDGE)).clamp(0, 1).view(-1, SIZE, SIZE)


def _digit_extents(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Left and right inked columns and the bottom edge (baseline) of each 28x28 digit, in frame pixels."""
    cols = images.amax(1) > INK * 255
    rows = images.amax(2) > INK * 255
    idx = torch.arange(SIZE)
    left = torch.where(cols, idx, SIZE).amin(1).clamp_max(13).float()
    right = torch.where(cols, idx, -1).amax(1).clamp_min(14).float()
    bottom = torch.where(rows, idx, -1).amax(1).clamp_min(14).float() + 0.5
    return left, right, bottom


def _rows(gen: torch.Generator, c: int, p: float) -> Tensor:
    """The strings (indices) that get an effect of probability ``p``: effects run on those rows only."""
    return _flag(gen, c, p).nonzero().squeeze(1)


def _apply_page(ink: Tensor, widths: Tensor, base_y: Tensor, start: Tensor, stop: Tensor, height: int,
                opt: StringOptions, gen: torch.Generator) -> Tensor:
    """Ink ``(c, H, W)`` -> the scanned page ``(c, H, W)`` in [0, 1], light ink on dark, zero beyond each width."""
    c, h, w = ink.shape
    sc = height / 32  # effects are tuned at height 32
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)

    def u(m: int, lo: float, hi: float) -> Tensor:
        return _u(gen, (m,), lo, hi).view(m, 1, 1)

    # The pen: a finer or a broader one than MNIST's (a 2x2 grey erosion or dilation of the ink).
    r = _rows(gen, c, opt.p_thin + opt.p_thick)
    if m := len(r):
        thin = (torch.rand(m, generator=gen) < opt.p_thin / max(opt.p_thin + opt.p_thick, 1e-9)).view(m, 1, 1)
        x = F.pad(ink[r][:, None], (0, 1, 0, 1))
        eroded, dilated = -F.max_pool2d(-x, 2, 1)[:, 0], F.max_pool2d(x, 2, 1)[:, 0]
        ink[r] = torch.where(thin, eroded, dilated)

    # Underline: a pen stroke under the string, a little longer than it, slightly sloped.
    r = _rows(gen, c, opt.p_underline)
    if m := len(r):
        y0 = base_y[r].view(m, 1, 1) + u(m, 1.5, 3.5) * sc
        x0, x1 = start[r].view(m, 1, 1) - u(m, 0, 4) * sc, stop[r].view(m, 1, 1) + u(m, 0, 10) * sc
        dist = (ys - y0 - u(m, -0.02, 0.02) * (xs - x0)).abs()
        line = (u(m, 0.7, 1.3) * sc + 0.5 - dist).clamp(0, 1) * ((xs >= x0) & (xs <= x1))
        ink[r] = torch.maximum(ink[r], line)

    # Paper: the background level (0 is MNIST's black), a smooth gradient, blotchy and fine texture, and the pen's
    # contrast against it.
    page = ink
    r = _rows(gen, c, opt.p_background)
    if m := len(r):
        bg = u(m, 0.05, 0.4) + u(m, -0.15, 0.15) * (xs / w - 0.5) + u(m, -0.15, 0.15) * (ys / h - 0.5)
        blotch = torch.randn(m, 1, h // 8 + 2, w // 8 + 2, generator=gen)
        bg = bg + u(m, 0, 0.08) * F.interpolate(blotch, size=(h, w), mode="bilinear")[:, 0]
        bg = (bg + u(m, 0, 0.07) * (torch.rand(m, h, w, generator=gen) - 0.5)).clamp_(0, 0.6)
        page[r] = bg + (u(m, 0.7, 1.0) - bg) * ink[r]

    # Ruled lines, printed fainter than the pen: one near the baseline, sometimes another through the digits.
    r = _rows(gen, c, opt.p_ruled)
    for lo, hi, p in ((BASELINE * height - 2 * sc, height, 1.0), (0.0, BASELINE * height - 2 * sc, 0.5)):
        rr = r[_flag(gen, len(r), p)]
        if m := len(rr):
            rule = (u(m, 0.4, 0.9) * sc + 0.5 - (ys - u(m, lo, hi)).abs()).clamp(0, 1) * u(m, 0.25, 0.55)
            page[rr] = torch.maximum(page[rr], rule)

    # The scan: optics blur, then sensor noise and dust, then lossy compression.
    r = _rows(gen, c, opt.p_blur)
    if m := len(r):
        x = page[r]
        page[r] = x + u(m, 0, 1) * (F.avg_pool2d(x[:, None], 3, 1, 1, count_include_pad=False)[:, 0] - x)
    r = _rows(gen, c, opt.p_noise)
    if m := len(r):
        sigma = u(m, 0.01, 0.07)
        x = page[r] + sigma * 3.4 * (torch.rand(m, h, w, generator=gen) - 0.5)  # uniform, as wide as N(0, sigma)
        dust = torch.rand(m, h, w, generator=gen)
        page[r] = torch.where(dust < sigma * 0.04, dust / (sigma * 0.04), x)  # a dust speck has a random level
    # JPEG stand-in: 8x8 blocks bleed their mean into the pixels, then the levels are quantised.
    r = _rows(gen, c, opt.p_jpeg)
    if m := len(r):
        x = F.pad(page[r], (0, -w % 8, 0, -h % 8), mode="replicate")
        hb, wb = x.shape[1] // 8, x.shape[2] // 8
        blocks = x.view(m, hb, 8, wb, 8).mean((2, 4), keepdim=True)
        x = (x.view(m, hb, 8, wb, 8) + u(m, 0.05, 0.3)[..., None, None] * (blocks - x.view(m, hb, 8, wb, 8)))
        levels = u(m, 6, 24).floor()
        page[r] = ((x.view(m, hb * 8, wb * 8) * levels).round() / levels)[:, :h, :w]
    return page.clamp_(0, 1).mul_(xs < widths.view(c, 1, 1))


def synthetic_strings(images: np.ndarray | Tensor, labels: np.ndarray | Tensor, n: int, *, seed: int = 0,
                      height: int = 32, max_chars: int = 12, options: StringOptions | None = None
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """``n`` strings drawn from MNIST-convention digit images (light ink on 0, 28x28 uint8).

    Args:
        images: ``(N, 28, 28)`` uint8 digits; labels: ``(N,)`` their classes 0-9.
        n: how many strings; seed: seeds the one ``torch.Generator`` everything is drawn from.
        height: the line height in pixels; max_chars: the longest string, separators and trailing dashes included.
        options: layout and effects (``StringOptions()`` when None).

    Returns:
        batch ``(n, 1, height, W)`` float32 in [0, 1], light ink on dark, W the widest string's width rounded up to
        a multiple of 4; widths ``(n,)`` int64, each string's own width (zero beyond it); targets ``(n, max_len)``
        int64 CTC classes 1..len(ALPHABET) padded with 0; target_lengths ``(n,)`` int64; the texts as written.

    Raises:
        ValueError: on no images, mismatched labels, or ``n``, ``height``, ``max_chars`` out of range.
    """
    opt = options or StringOptions()
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels).long()
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE) or len(images) == 0 or len(labels) != len(images):
        raise ValueError(f"synthetic_strings: need (N, 28, 28) images and N labels, got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    if n < 1 or height < 8 or max_chars < 1:
        raise ValueError(f"synthetic_strings: n >= 1, height >= 8 and max_chars >= 1, got {n}, {height}, {max_chars}")
    gen = torch.Generator().manual_seed(seed)
    k_max, h = max_chars, height
    slots = torch.arange(k_max)

    # --- what is written: lengths, digits, separators, trailing dashes (n, K) ---------------------------------
    weights = torch.tensor(opt.length_weights[:k_max], dtype=torch.float64)
    length = torch.multinomial(weights, n, replacement=True, generator=gen) + 1
    has_sep = _flag(gen, n, opt.p_separator) & (k_max >= 3)
    length = torch.where(has_sep, length.clamp_min(3), length)
    n_trail = torch.where(_flag(gen, n, opt.p_trailing), torch.randint(1, 3, (n,), generator=gen), 0)
    n_trail = torch.minimum(n_trail, k_max - length.clamp_max(k_max - 1))
    length = torch.minimum(length, k_max - n_trail)  # the dashes count towards max_chars
    counts = torch.bincount(labels, minlength=10)[:10]
    probs = (counts > 0).double() * (1 - opt.zero_share) / (counts > 0).sum()
    probs[0] += opt.zero_share if counts[0] > 0 else 0
    digit = torch.multinomial(probs, n * k_max, replacement=True, generator=gen).view(n, k_max)
    order = torch.argsort(labels, stable=True)
    first = torch.cumsum(counts, 0) - counts
    src = order[first[digit] + (torch.rand(n, k_max, generator=gen) * counts[digit]).long()]
    kind = digit.clone()  # glyph kind per slot: a digit, a separator, or LONG_DASH
    sep = torch.tensor([DOT, COMMA, SLASH, DASH])[torch.multinomial(torch.tensor(SEPARATOR_WEIGHTS), n, True,
                                                                      generator=gen)]
    # One separator anywhere inside; amounts mostly put theirs before two decimals; dates and codes may have two.
    p1 = 1 + (torch.rand(n, generator=gen) * (length - 2).clamp_min(1)).long()
    decimals = ((sep == DOT) | (sep == COMMA)) & (length >= 4) & _flag(gen, n, 0.6)
    p1 = torch.where(decimals, length - 3, p1)
    room = length - 2 - (p1 + 2)  # the second one keeps a digit between them and one at the end
    p2 = p1 + 2 + (torch.rand(n, generator=gen) * (room + 1).clamp_min(1)).long()
    second = ((sep == DASH) | (sep == SLASH)) & (room >= 0) & _flag(gen, n, 0.5)
    for pos, on in ((p1, has_sep), (p2, has_sep & second)):
        kind = torch.where(on[:, None] & (slots == pos[:, None]), sep[:, None], kind)
    trail = (slots >= length[:, None]) & (slots < (length + n_trail)[:, None])
    kind = torch.where(trail, LONG_DASH, kind)
    total = length + n_trail
    active = slots < total[:, None]
    cls = torch.where(kind == LONG_DASH, DASH, kind)  # ALPHABET index
    is_sep = kind >= 10

    # --- layout (n, K), in canvas pixels -------------------------------------------------------------------
    g = LINE * h / DIGIT_BOX  # frame pixel -> canvas pixel, at scale 1
    segs, radius = _separator_strokes(kind.flatten(), gen)
    segs, radius = segs.view(n, k_max, 2, 2, 2), radius.view(n, k_max)
    d_left, d_right, d_bottom = _digit_extents(images[src.flatten()])
    reach = (radius + EDGE)[..., None]
    s_left = (segs[..., 0].flatten(2) - reach).amin(-1)
    s_right = (segs[..., 0].flatten(2) + reach).amax(-1)
    left = torch.where(is_sep, s_left, d_left.view(n, k_max))
    right = torch.where(is_sep, s_right, d_right.view(n, k_max))
    bl = torch.where(is_sep, FRAME_BASELINE, d_bottom.view(n, k_max))
    scale = g * _u(gen, (n, k_max), 1 - opt.scale_jitter, 1 + opt.scale_jitter)
    dy = _u(gen, (n, k_max), -opt.baseline_jitter, opt.baseline_jitter) * h
    small = _flag(gen, n, opt.p_small_zeros)[:, None] & (kind == 0)
    raised = _flag(gen, n, 0.3)[:, None]  # some write small zeros high, like cents
    scale = torch.where(small, scale * 0.55, scale)
    dy = torch.where(small & raised, dy - 0.45 * LINE * h, dy)
    shear = _u(gen, (n,), -opt.slant, opt.slant)
    base_y = BASELINE * h + _u(gen, (n,), -0.03, 0.03) * h
    touching = _flag(gen, n, opt.p_touching)
    mean_gap = torch.where(touching, _u(gen, (n,), *opt.gap_touching), _u(gen, (n,), *opt.gap_apart))
    gap = (mean_gap[:, None] + _u(gen, (n, k_max), -opt.gap_jitter, opt.gap_jitter))
    gap = torch.where(touching[:, None], gap.clamp_max(-0.02), gap.clamp_min(0.0)) * h
    # Separators keep a little air on both sides (a dot inside a digit's ink would vanish); trailing dashes more.
    near_sep = is_sep | torch.cat([is_sep[:, 1:], torch.zeros(n, 1, dtype=torch.bool)], 1)
    gap = torch.where(near_sep, _u(gen, (n, k_max), 0.03, 0.15) * h, gap)
    before_trail = torch.cat([kind[:, 1:] == LONG_DASH, torch.zeros(n, 1, dtype=torch.bool)], 1)
    gap = torch.where(before_trail & (kind != LONG_DASH), _u(gen, (n, k_max), 0.05, 0.3) * h, gap)
    space_at = (torch.rand(n, generator=gen) * (length - 1).clamp_min(1)).long()
    gap = gap + (_flag(gen, n, opt.p_space) & (length >= 3))[:, None] * (slots == space_at[:, None]) * (
        _u(gen, (n, 1), 0.3, 0.6) * h)
    pad = (shear.abs() * g * 12).ceil() + 1  # a slanted glyph reaches past its upright extent at top and bottom
    margin = _u(gen, (n,), 1, 4) * h / 32 + pad
    cursor = margin.clone()
    centre = torch.zeros(n, k_max)  # canvas x of each frame's centre column
    for k in range(k_max):
        centre[:, k] = cursor - scale[:, k] * (left[:, k] - 14)
        cursor = torch.where(active[:, k], centre[:, k] + scale[:, k] * (right[:, k] - 14) + gap[:, k], cursor)
    ink_right = torch.where(active, centre + scale * (right - 14), -1e9).amax(1)
    widths = (ink_right + pad + _u(gen, (n,), 1, 4) * h / 32).ceil().long()
    w = int(math.ceil(widths.max().item() / 4) * 4)

    # --- what is read: targets and texts ---------------------------------------------------------------------
    max_len = int(total.max())
    targets = torch.where(active, cls + 1, 0)[:, :max_len].contiguous()
    chars = np.array(list(ALPHABET))[cls.numpy()]
    chars[~active.numpy()] = ""  # inactive slots are all at the end, so the fixed-width view below drops them
    texts = chars.astype("<U1").view(f"<U{k_max}").ravel().tolist()

    # --- rendering, in chunks of strings and per character slot -------------------------------------------
    batch = torch.zeros(n, 1, h, w)
    wg = math.ceil(scale.max().item() * SIZE * (1 + shear.abs().max().item())) + 3  # a slot's window
    by_width = torch.argsort(widths, stable=True)  # chunks of similar widths: short strings cost little
    yy = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    uu = torch.arange(wg).view(1, 1, wg)
    with torch.no_grad():
        sep_glyphs = _draw_strokes(segs[is_sep], radius[is_sep])  # every separator at once: (n_sep, 28, 28)
        sep_index = torch.zeros(n, k_max, dtype=torch.long)
        sep_index[is_sep] = torch.arange(len(sep_glyphs))
        for c0 in range(0, n, CHUNK):
            ids = by_width[c0:c0 + CHUNK]
            c, wc = len(ids), int(math.ceil(widths[ids].max().item() / 4) * 4)
            wp = wc + 2 * wg
            canvas = torch.zeros(c * h * wp)
            for k in range(k_max):
                rows = active[ids, k].nonzero().squeeze(1)
                if not len(rows):
                    continue
                i = ids[rows]
                glyph = images[src[i, k]].float() / 255
                sep_rows = is_sep[i, k].nonzero().squeeze(1)
                if len(sep_rows):
                    glyph[sep_rows] = sep_glyphs[sep_index[i[sep_rows], k]]
                s, xc, sh = scale[i, k].view(-1, 1, 1), centre[i, k].view(-1, 1, 1), shear[i].view(-1, 1, 1)
                ox = (xc - s * 14 * (1 + sh.abs())).floor().long() - 1
                # Inverse map, canvas pixel -> frame pixel: undo the placement, then the slant about the frame centre.
                fy = bl[i, k].view(-1, 1, 1) + (yy - (base_y[i] + dy[i, k]).view(-1, 1, 1)) / s
                fx = 14 + ((ox + uu) - xc) / s + sh * (fy - 14)
                grid = torch.stack(torch.broadcast_tensors((fx + 0.5) / 14 - 1, (fy + 0.5) / 14 - 1), -1)
                patch = F.grid_sample(glyph[:, None], grid, mode="bilinear", padding_mode="zeros",
                                      align_corners=False)[:, 0]  # (m, H, wg)
                cols = (ox + wg + uu).clamp(0, wp - 1)
                idx = (rows.view(-1, 1, 1) * h + yy.long()) * wp + cols
                canvas.scatter_reduce_(0, idx.flatten(), patch.flatten(), reduce="amax")
            ink = canvas.view(c, h, wp)[:, :, wg:wg + wc]
            batch[ids, 0, :, :wc] = _apply_page(ink, widths[ids], base_y[ids], margin[ids], ink_right[ids], h, opt,
                                                gen)
    return batch, widths, targets, total, texts
