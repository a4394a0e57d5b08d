"""Synthetic handwritten digits in writing styles MNIST lacks, drawn from stroke skeletons, in MNIST's convention.

Usage::

    images, labels = synthetic_digits(20000, seed=0)   # (20000, 28, 28) uint8 light ink on dark, (20000,) int64

MNIST was written by American census staff and students, so it has few of the digits common in Europe: the
continental 1 with a long up-stroke (flag) and often a foot, the crossed 7, the open-top 4, the 9 with a curved
tail, the 2 with a loop. A model trained on MNIST alone reads a continental 1 as a 7 or a 4, confidently. These
digits are drawn from per-class style templates (strokes as polylines, arcs and quadratic Beziers in a unit box)
with per-sample jitter (control points, slant, aspect, rotation, pen width, overshooting stroke ends), and
rendered on tensors in batch: the anti-aliased ink is a function of each pixel's distance to the nearest stroke
segment. As in MNIST, the ink's bounding box is scaled so that its longest side is 20 px (aspect kept), and the
digit is moved by whole pixels in the 28x28 frame so that its centre of mass is within half a pixel of (14, 14).
The scale is computed from the skeleton, so the glyph is drawn straight into the frame, without resampling.
Classes are balanced; within a class the styles MNIST lacks get most of the share (``STYLES``).
"""

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor

SIZE = 28
BOX = 20  # MNIST: longest side of the ink's bounding box, in pixels
PEN_PX = (2.0, 3.5)  # stroke width in output pixels, like MNIST's
EDGE = 0.6  # half-width of the anti-aliased edge ramp, in pixels
CHUNK = 512  # samples rendered at once: bounds memory to ~(CHUNK x segments x 400) floats


class _Sampler:
    """Per-sample random parameters for ``b`` samples of one template, from one seeded generator."""

    def __init__(self, b: int, gen: torch.Generator) -> None:
        self.b, self.gen = b, gen

    def u(self, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(self.b, generator=self.gen)

    def p(self, x: float | Tensor, y: float | Tensor, sd: float = 0.03) -> Tensor:
        """A control point ``(b, 2)`` (x right, y down, unit box) with Gaussian noise."""
        base = torch.stack(torch.broadcast_tensors(torch.as_tensor(x, dtype=torch.float32),
                                                   torch.as_tensor(y, dtype=torch.float32)), -1)
        return base.expand(self.b, 2) + sd * torch.randn(self.b, 2, generator=self.gen)


def _line(*pts: Tensor) -> Tensor:
    return torch.stack(pts, 1)


def _bez(p0: Tensor, p1: Tensor, p2: Tensor, n: int = 6) -> Tensor:
    t = torch.linspace(0, 1, n + 1)[None, :, None]
    return (1 - t) ** 2 * p0[:, None] + 2 * t * (1 - t) * p1[:, None] + t**2 * p2[:, None]


def _arc(c: Tensor, rx: Tensor | float, ry: Tensor | float, a0: Tensor | float, a1: Tensor | float,
         n: int = 12, drift: Tensor | None = None) -> Tensor:
    """Elliptic arc from angle ``a0`` to ``a1`` (degrees; y down, so increasing is clockwise on the page).
    ``drift`` moves the centre along the arc, which turns a full turn into a loop that crosses itself."""
    b = c.shape[0]
    t = torch.linspace(0, 1, n + 1)[None, :]
    a0, a1, rx, ry = (torch.as_tensor(v, dtype=torch.float32).expand(b)[:, None] for v in (a0, a1, rx, ry))
    a = torch.deg2rad(a0 + (a1 - a0) * t)
    pts = c[:, None] + torch.stack([rx * torch.cos(a), ry * torch.sin(a)], -1)
    if drift is not None:
        pts = pts + t[..., None] * drift[:, None]
    return pts


def _join(*pieces: Tensor) -> Tensor:
    return torch.cat(pieces, 1)


# --- templates: each returns its strokes, each a (b, points, 2) polyline in the unit box ---------------------

def _one_plain(s: _Sampler) -> list[Tensor]:
    top = s.p(0.5, 0.0)
    return [_bez(top, s.p(0.5, 0.5, 0.02), s.p(0.5, 1.0), 4)]


def _one_flag_points(s: _Sampler) -> tuple[Tensor, Tensor, Tensor]:
    top, bottom = s.p(0.5, 0.0, 0.015), s.p(0.5, 1.0, 0.015)
    length, angle = s.u(0.3, 0.6), torch.deg2rad(s.u(35, 70))  # angle from the stem, opening down-left
    flag = top + torch.stack([-length * torch.sin(angle), length * torch.cos(angle)], -1)
    return flag, top, bottom


def _one_flag(s: _Sampler) -> list[Tensor]:
    flag, top, bottom = _one_flag_points(s)
    return [_line(flag, top, bottom)]


def _one_flag_base(s: _Sampler) -> list[Tensor]:
    flag, top, bottom = _one_flag_points(s)
    half = s.u(0.18, 0.32)[:, None]
    foot = torch.stack([half.squeeze(1), torch.zeros(s.b)], -1)
    return [_line(flag, top, bottom), _line(bottom - foot + s.p(0, 0, 0.015), bottom + foot + s.p(0, 0, 0.015))]


def _seven_points(s: _Sampler) -> tuple[Tensor, Tensor, Tensor]:
    return s.p(0.1, 0.03), s.p(0.9, 0.0), s.p(0.42, 1.0)


def _seven_plain(s: _Sampler) -> list[Tensor]:
    left, corner, foot = _seven_points(s)
    return [_line(left, corner, foot)]


def _seven_curved(s: _Sampler) -> list[Tensor]:
    left, corner, foot = _seven_points(s)
    return [_join(_line(left), _bez(corner, s.p(0.5, 0.45, 0.05), foot))]


def _crossbar(s: _Sampler, corner: Tensor, foot: Tensor) -> Tensor:
    mid = corner + s.u(0.45, 0.6)[:, None] * (foot - corner)
    half = s.u(0.18, 0.3)[:, None] * torch.tensor([1.0, 0.0])
    return _line(mid - half + s.p(0, 0, 0.02), mid + half + s.p(0, 0, 0.02))


def _seven_crossed(s: _Sampler) -> list[Tensor]:
    left, corner, foot = _seven_points(s)
    return [_line(left, corner, foot), _crossbar(s, corner, foot)]


def _seven_crossed_tick(s: _Sampler) -> list[Tensor]:
    left, corner, foot = _seven_points(s)
    tick = left + s.p(0.0, 0.16, 0.02)  # a small down-stroke before the top bar
    stem = _bez(corner, s.p(0.55, 0.45, 0.05), foot, 6)
    return [_join(_line(tick, left), stem), _crossbar(s, corner, foot)]


def _four_closed(s: _Sampler) -> list[Tensor]:
    top = s.p(0.68, 0.0)
    bar = s.u(0.58, 0.7)
    return [_line(top, s.p(0.05, bar), s.p(0.95, bar)), _line(top + s.p(0, 0, 0.01), s.p(0.68, 1.0))]


def _four_open(s: _Sampler) -> list[Tensor]:
    bar = s.u(0.52, 0.65)
    return [_line(s.p(0.22, 0.0), s.p(0.1, bar), s.p(0.95, bar)), _line(s.p(0.7, 0.08), s.p(0.68, 1.0))]


def _nine_head(s: _Sampler) -> tuple[Tensor, Tensor]:
    c = s.p(0.45, 0.28, 0.02)
    rx, ry = s.u(0.3, 0.38), s.u(0.22, 0.3)
    head = _arc(c, rx, ry, s.u(-20, 10), s.u(330, 370), 12)  # from the right, round the top, back to the right
    return head, head[:, -1]


def _nine_straight(s: _Sampler) -> list[Tensor]:
    head, _ = _nine_head(s)
    return [_join(head, _line(s.p(0.78, 1.0)))]


def _nine_curved(s: _Sampler) -> list[Tensor]:
    head, join = _nine_head(s)
    return [_join(head, _bez(join, s.p(0.8, 0.95), s.p(0.3, 1.0), 6))]


def _two_top(s: _Sampler) -> Tensor:
    c = s.p(0.5, 0.28, 0.02)
    return _arc(c, s.u(0.34, 0.42), s.u(0.22, 0.3), s.u(190, 215), s.u(370, 395), 9)


def _two_plain(s: _Sampler) -> list[Tensor]:
    top = _two_top(s)
    corner = s.p(0.05, 1.0)
    diag = _bez(top[:, -1], s.p(0.55, 0.68, 0.04), corner, 6)
    return [_join(top, diag, _line(s.p(0.95, 0.98)))]


def _two_loop(s: _Sampler) -> list[Tensor]:
    top = _two_top(s)
    c, rx, ry = s.p(0.2, 0.85, 0.02), s.u(0.13, 0.18), s.u(0.1, 0.13)
    # The diagonal ends on the loop's right side; the pen goes round clockwise and leaves from its upper right,
    # crossing the diagonal on its way along the base.
    loop = _arc(c, rx, ry, s.u(0, 20), s.u(310, 330), 12)
    diag = _bez(top[:, -1], s.p(0.5, 0.6, 0.04), loop[:, 0], 5)
    return [_join(top, diag, loop, _line(s.p(0.95, 0.95)))]


def _zero(s: _Sampler) -> list[Tensor]:
    start = s.u(-110, -70)
    return [_arc(s.p(0.5, 0.5, 0.01), s.u(0.3, 0.45), 0.5, start, start - s.u(355, 385), 16)]


def _zero_tilted(s: _Sampler) -> list[Tensor]:
    pts = _zero(s)[0]
    tilt = torch.deg2rad(s.u(-25, 25))[:, None]
    x, y = pts[..., 0] - 0.5, pts[..., 1] - 0.5
    return [torch.stack([0.5 + x * torch.cos(tilt) - y * torch.sin(tilt),
                         0.5 + x * torch.sin(tilt) + y * torch.cos(tilt)], -1)]


def _three_round(s: _Sampler) -> list[Tensor]:
    mid = s.p(0.42, 0.48, 0.02)
    ru = s.u(0.28, 0.36)
    upper = _arc(mid + torch.stack([torch.zeros(s.b), -s.u(0.22, 0.26)], -1) + s.p(0.06, 0, 0.01),
                 ru, 0.24, s.u(190, 215), 450, 10)
    lower = _arc(mid + torch.stack([0.08 * torch.ones(s.b), s.u(0.24, 0.28)], -1), s.u(0.36, 0.42), 0.26,
                 -90, s.u(140, 170), 10)
    return [_join(upper, lower)]


def _three_flat(s: _Sampler) -> list[Tensor]:
    mid = s.p(0.38, 0.42, 0.03)
    lower = _arc(mid + torch.stack([0.12 * torch.ones(s.b), s.u(0.28, 0.32)], -1), s.u(0.38, 0.44), 0.3,
                 -110, s.u(140, 165), 10)
    return [_join(_line(s.p(0.08, 0.0), s.p(0.85, 0.0), mid), lower)]


def _five(s: _Sampler, detached: bool) -> list[Tensor]:
    corner = s.p(0.25, 0.0)
    knee = s.p(0.2, 0.42)
    belly = _arc(s.p(0.5, 0.7, 0.02), s.u(0.36, 0.44), s.u(0.26, 0.31), s.u(-150, -130), s.u(140, 170), 10)
    body = _join(_line(corner, knee), belly)
    bar_start = corner + s.p(0.05, -0.03, 0.02) if detached else corner
    return [body, _line(bar_start, s.p(0.9, -0.02))]


def _six(s: _Sampler, curved: bool) -> list[Tensor]:
    c = s.p(0.5, 0.7, 0.02)
    rx, ry = s.u(0.32, 0.4), s.u(0.25, 0.3)
    start = s.p(0.78, 0.0)
    entry = c - torch.stack([rx, torch.zeros(s.b)], -1)
    stem = _bez(start, s.p(0.15, 0.18, 0.04), entry, 5) if curved else _line(start, entry)
    return [_join(stem, _arc(c, rx, ry, 180, s.u(-170, -150), 12))]


def _eight_loops(s: _Sampler) -> list[Tensor]:
    upper = _arc(s.p(0.5, 0.24, 0.02), s.u(0.26, 0.32), 0.24, -90, 275, 12)
    lower = _arc(s.p(0.5, 0.73, 0.02), s.u(0.34, 0.42), 0.27, -90, 275, 12)
    return [upper, lower]


def _eight_one_stroke(s: _Sampler) -> list[Tensor]:
    # A figure eight: x follows sin 2t while y goes down and back up, so the path crosses itself at the waist.
    t = torch.linspace(0, 2 * math.pi, 21)[None, :] + torch.deg2rad(s.u(-15, 15))[:, None]
    y = 0.5 - 0.5 * torch.cos(t)
    half = torch.where(y < 0.45, s.u(0.26, 0.34)[:, None], s.u(0.34, 0.44)[:, None])
    x = 0.5 + half * torch.sin(2 * t) * torch.sign(s.u(-1, 1))[:, None]
    return [torch.stack([x, y], -1) + 0.015 * torch.randn(s.b, 1, 2, generator=s.gen)]


Template = Callable[[_Sampler], list[Tensor]]

# Per class: (style, share within the class, template).
STYLES: dict[int, list[tuple[str, float, Template]]] = {
    0: [("oval", 0.6, _zero), ("tilted oval", 0.4, _zero_tilted)],
    1: [("plain", 0.2, _one_plain), ("flag", 0.45, _one_flag), ("flag+base", 0.35, _one_flag_base)],
    2: [("plain", 0.5, _two_plain), ("loop", 0.5, _two_loop)],
    3: [("round top", 0.5, _three_round), ("flat top", 0.5, _three_flat)],
    4: [("closed", 0.5, _four_closed), ("open", 0.5, _four_open)],
    5: [("joined bar", 0.5, lambda s: _five(s, False)), ("detached bar", 0.5, lambda s: _five(s, True))],
    6: [("curved", 0.6, lambda s: _six(s, True)), ("straight", 0.4, lambda s: _six(s, False))],
    7: [("plain", 0.2, _seven_plain), ("curved stem", 0.2, _seven_curved), ("crossed", 0.35, _seven_crossed),
        ("crossed+tick", 0.25, _seven_crossed_tick)],
    8: [("two loops", 0.5, _eight_loops), ("one stroke", 0.5, _eight_one_stroke)],
    9: [("straight stem", 0.5, _nine_straight), ("curved tail", 0.5, _nine_curved)],
}


def _segments(strokes: list[Tensor], s: _Sampler) -> tuple[Tensor, Tensor]:
    """Jittered strokes -> segment ends ``(b, S, 2)`` twice, in the unit box before fitting."""
    out = []
    for pts in strokes:
        # Pens overshoot: stretch each stroke's ends a little along their direction.
        for end, nxt in ((0, 1), (-1, -2)):
            d = pts[:, end] - pts[:, nxt]
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            pts = pts.clone()
            pts[:, end] = pts[:, end] + s.u(0.0, 0.04)[:, None] * d
        out.append(pts)
    a = torch.cat([p[:, :-1] for p in out], 1)
    b = torch.cat([p[:, 1:] for p in out], 1)
    pts = torch.stack([a, b], 2)  # (b, S, 2 ends, 2)
    aspect = s.u(0.8, 1.2)  # templates have their own widths (a 1 is narrow)
    slant = torch.tan(torch.deg2rad(s.u(-20, 20)))
    # Slant and rotation add up; a total lean past 15 degrees to the left is rare in handwriting.
    rot = torch.deg2rad(torch.maximum(s.u(-10, 10), -15 - torch.rad2deg(torch.atan(slant))))
    x = (pts[..., 0] - 0.5) * aspect[:, None, None]
    y = pts[..., 1] - 0.5
    x = x - slant[:, None, None] * y  # positive slant leans the top to the right
    cos, sin = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
    x, y = x * cos - y * sin, x * sin + y * cos
    return torch.stack([x[..., 0], y[..., 0]], -1), torch.stack([x[..., 1], y[..., 1]], -1)


def _render(a: Tensor, b: Tensor, radius: Tensor, grid: Tensor) -> Tensor:
    """Ink in [0, 1] ``(n, pixels)`` of segments ``a``-``b`` ``(n, S, 2)`` in pixel coordinates at ``grid``."""
    d = b - a
    inv = 1.0 / (d * d).sum(-1).clamp_min(1e-9)
    px, py = grid[:, 0], grid[:, 1]
    apx = px - a[..., 0, None]
    apy = py - a[..., 1, None]
    t = ((apx * d[..., 0, None] + apy * d[..., 1, None]) * inv[..., None]).clamp_(0, 1)
    ex = apx.sub_(t * d[..., 0, None])
    ey = apy.sub_(t * d[..., 1, None])
    dist = (ex.square_() + ey.square_()).amin(1).sqrt_()
    return ((radius[:, None] + EDGE - dist) / (2 * EDGE)).clamp_(0, 1)


def _fit_and_render(a: Tensor, b: Tensor, radius: Tensor, grid: Tensor) -> Tensor:
    """Scale so the ink's bounding box has longest side ``BOX`` px, aspect kept; move the centre of mass to (14, 14)."""
    ends = torch.cat([a, b], 1)
    lo, hi = ends.amin(1), ends.amax(1)
    # The nonzero ink reaches ``radius + EDGE`` beyond the skeleton. Its span is made a little under BOX and starts
    # just before a pixel centre, so that exactly BOX pixels hold ink along the longest side, as in MNIST; the ink
    # then lies in a BOX x BOX window, and only that window is rendered.
    reach = (radius + EDGE)[:, None, None]
    scale = (BOX - 0.2 - 2 * reach) / (hi - lo).amax(-1).clamp_min(1e-6)[:, None, None]
    a = (a - lo[:, None]) * scale + reach - 0.45
    b = (b - lo[:, None]) * scale + reach - 0.45
    window = grid[(grid < BOX).all(-1)]
    ink = _render(a, b, radius, window)
    # MNIST moved each digit by whole pixels so that its centre of mass fell within half a pixel of (14, 14).
    com = (ink @ window) / ink.sum(1, keepdim=True).clamp_min(1e-6)
    shift = (SIZE // 2 - com).round().long()  # (n, 2) as (x, y)
    src = grid.long()[None] - shift[:, None]  # the window pixel each frame pixel takes its ink from
    inside = ((src >= 0) & (src < BOX)).all(-1)
    src = src.clamp_(0, BOX - 1)
    return ink.gather(1, src[..., 1] * BOX + src[..., 0]) * inside


def synthetic_digits(n: int, *, seed: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """(n, 28, 28) uint8 images (light ink on 0 background, MNIST convention) and (n,) int64 labels 0-9."""
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU, so a seed gives the same digits on any device
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=gen)]
    styles = torch.empty(n, dtype=torch.int64)
    for label, options in STYLES.items():
        idx = (labels == label).nonzero().squeeze(1)
        if len(idx):
            shares = torch.tensor([share for _, share, _ in options])
            styles[idx] = torch.multinomial(shares, len(idx), replacement=True, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], -1).float().to(device)
    out = torch.empty(n, SIZE * SIZE, dtype=torch.uint8, device=device)
    with torch.no_grad():  # not inference_mode: its tensors cannot be saved for backward in training
        for label, options in STYLES.items():
            for k, (_, _, draw) in enumerate(options):
                idx = ((labels == label) & (styles == k)).nonzero().squeeze(1)
                if not len(idx):
                    continue
                s = _Sampler(len(idx), gen)
                a, b = _segments(draw(s), s)
                radius = s.u(*PEN_PX) / 2
                a, b, radius = a.to(device), b.to(device), radius.to(device)
                for i in range(0, len(idx), CHUNK):
                    sl = slice(i, i + CHUNK)
                    ink = _fit_and_render(a[sl], b[sl], radius[sl], grid)
                    out[idx[sl].to(device)] = (ink * 255).round_().to(torch.uint8)
    return out.view(n, SIZE, SIZE), labels.to(device)
