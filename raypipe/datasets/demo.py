"""Built-in demo dataset. A SMOKE-TEST SET, NOT A BENCHMARK.

``make_demo_dataset(out)`` writes about 180 PNGs (640x480) in the generic folder
layout read by :mod:`raypipe.datasets.folder`::

    <out>/<split>/live/<subject>_<n>.png
    <out>/<split>/spoof/print/<subject>_<n>.png
    <out>/<split>/spoof/replay/<subject>_<n>.png

in about 8 s of one core, offline, from the two public-domain face photos that ship inside
installed packages: scikit-image's ``astronaut`` (Eileen Collins) and matplotlib's
``grace_hopper.jpg``. Nothing is downloaded.

What it is not: evidence that a model detects real attacks. There are only two
identities; the "subjects" are identity x session pseudo-subjects (``astronaut-s1``,
``grace-s4``: each session has its own background family and lighting) so that
subject-disjoint splits and training's dev carve-by-subject have something to
work with; and every attack is simulated:

* live: the photo cut out as head and shoulders, randomly scaled, placed, rotated
  and flipped on the session's background, then relit and given camera blur/noise;
* ``print``: live image ``<subject>_<n>`` printed (desaturated, reduced contrast,
  CMY halftone screen, paper fibres, white paper border) and re-photographed as a
  slightly tilted sheet in the same scene;
* ``replay``: the same live image shown on a screen (gamma and white-point shift,
  RGB sub-pixel grid and scanlines, moire bands, glare, dark bezel) and
  re-photographed.

So a score on this set says the pipeline runs end to end, nothing more.

Faces stay detectable by the project's BlazeFace short-range detector: the live
face is 170-225 px wide, and re-photographing shrinks it to no less than ~125 px
(that model misses faces narrower than ~120 px in a 640x480 frame).

Deterministic: every image draws from its own RNG stream keyed on (seed, identity,
session, n, kind), so one seed gives the same bytes on a given machine and set of
library versions, whatever the generation order.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from raypipe.datasets.base import SPLITS

H, W = 480, 640
IDENTITIES = ("astronaut", "grace")
ATTACK_TYPES = ("print", "replay")
MARKER = "demo.json"  # at the root, where the folder adapter never looks for media
# Fast and still lossless (the settings face.py measured for crops): ~11 ms per frame here.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]

# (x, y, w, h) of each photo's face as the project's BlazeFace short-range detector
# reports it; hard-coded so generation needs no detector (and no model file).
FACE_BOXES = {"astronaut": (177, 82, 95, 95), "grace": (171, 146, 194, 194)}
# Mattes in photo pixels, drawn by eye: a head ellipse (centre, half axes) with hair and
# hat, and a body polygon. Tight on purpose: a light studio backdrop left around a light
# face makes the recaptured attacks hard to detect.
HEADS = {"astronaut": ((226, 95), (76, 82)), "grace": ((262, 172), (115, 165))}
BODIES = {
    "astronaut": [(115, 160), (150, 145), (300, 150), (310, 200), (345, 265), (362, 340), (365, 512),
                  (20, 512), (25, 330), (45, 260), (110, 230)],
    "grace": [(205, 305), (325, 305), (345, 330), (440, 370), (512, 430), (512, 600), (10, 600),
              (25, 440), (90, 380), (180, 335)],
}
# Live face width in the canvas: re-photographing an attack shrinks it by 0.74-0.9.
FACE_WIDTH = (170.0, 225.0)
FACE_X, FACE_Y = (0.38, 0.62), (0.42, 0.52)  # face-centre range, fractions of the canvas
# RNG stream tags: one stream per (image, kind), so adding a kind moves nothing else.
STREAM = {"session": 0, "live": 1, "print": 2, "replay": 3}


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


# Speed notes (this runs on one slow core): NumPy is slow when an operand broadcasts along
# the last, length-3 axis (img * (3,) or img * (H, W, 1) cost 5-10x img * img), so colours
# are applied as (1, W, 3) rows (`_row`), masks as full 3-plane images (`_rgb`), and
# patterns are built per channel from 1-D coordinate vectors: cos(f(x) + g(y)) =
# cos f cos g - sin f sin g needs no full-frame cos (`_wave`).
XS = np.arange(W, dtype=np.float32)[None, :]  # (1, W)
YS = np.arange(H, dtype=np.float32)[:, None]  # (H, 1)


def _row(values: np.ndarray) -> np.ndarray:
    """A per-channel value as a contiguous (1, W, 3) row that broadcasts fast."""
    return np.tile(np.asarray(values, np.float32).reshape(1, 1, 3), (1, W, 1))


def _rgb(*planes: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 from one plane (grey) or three."""
    planes = planes * 3 if len(planes) == 1 else planes
    return cv2.merge([np.ascontiguousarray(p, np.float32) for p in planes])


def _wave(fx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """cos(f(x) + g(y)) as an (H, W) plane from a (1, W) phase and an (H, 1) phase."""
    return np.cos(gy) * np.cos(fx) - np.sin(gy) * np.sin(fx)


def _unit_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance uniform noise (float32)."""
    return (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(12 ** 0.5)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    # Clip negatives first: convertScaleAbs rounds and saturates at 255 but would mirror them.
    return cv2.convertScaleAbs(np.clip(img, 0, 255))


# --------------------------------------------------------------------------------------
# Sources: head-and-shoulders cut-outs of the two photos


@dataclass(frozen=True)
class _Source:
    name: str
    rgb: np.ndarray  # float32 crop around the face
    alpha: np.ndarray  # float32 matte in [0, 1]: head and shoulders, feathered
    face: tuple[float, float]  # face-box centre in crop pixels
    face_width: float


def _photo(name: str) -> np.ndarray:
    if name == "astronaut":
        from skimage import data

        return data.astronaut()
    from matplotlib import cbook

    bgr = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _matte(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Hand-drawn head-and-shoulders matte of a photo: the studio backdrop goes, the person stays."""
    (centre, axes), body = HEADS[name], BODIES[name]
    alpha = np.zeros(shape[:2], np.float32)
    cv2.ellipse(alpha, centre, axes, 0, 0, 360, 1.0, -1)
    cv2.fillPoly(alpha, [np.int32(body)], 1.0)
    return alpha


@lru_cache(maxsize=None)
def _source(name: str) -> _Source:
    rgb = _photo(name)
    x, y, w, h = FACE_BOXES[name]
    cx, cy, fw = x + w / 2, y + h / 2, float(w)
    x0, x1 = max(0, int(cx - 1.7 * fw)), min(rgb.shape[1], int(cx + 1.7 * fw))
    y0, y1 = max(0, int(cy - 1.4 * fw)), min(rgb.shape[0], int(cy + 2.3 * fw))
    alpha = _matte(name, rgb.shape)[y0:y1, x0:x1]
    # Where the crop cuts the body, fade out instead of showing a straight edge.
    margin = max(2, round(0.06 * fw))
    alpha[:margin], alpha[:, :margin], alpha[:, -margin:] = 0, 0, 0
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.04 * fw)
    return _Source(name, rgb[y0:y1, x0:x1].astype(np.float32), alpha, (cx - x0, cy - y0), fw)


# --------------------------------------------------------------------------------------
# Sessions: one background family and one lighting per pseudo-subject


@dataclass(frozen=True)
class _Session:
    family: str
    colours: np.ndarray  # (2, 3) float32 background palette
    temperature: float  # -1 cool .. +1 warm
    brightness: float
    contrast: float
    side_light: float  # strength of a lamp on one side


def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int], channels: int = 3) -> np.ndarray:
    """Low-frequency noise in about [0, 1]: a few random cells upsampled smoothly."""
    small = rng.random((cells[0], cells[1], channels), dtype=np.float32)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC).reshape(H, W, channels)


def _mix(colours: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend the palette's two colours by a weight plane t (anything broadcasting to (H, W))."""
    t = np.broadcast_to(t, (H, W))
    return _rgb(*(colours[0, i] + (colours[1, i] - colours[0, i]) * t for i in range(3)))


def _bg_gradient(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0, 2 * np.pi)
    t = XS * np.float32(np.cos(a) / W) + YS * np.float32(np.sin(a) / H)
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    return _mix(c, t) + (_smooth_noise(rng, (3, 4)) - 0.5) * 30


def _bg_stripes(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    period, phase = rng.uniform(24, 64), rng.uniform(0, 2 * np.pi)
    t = 0.5 + 0.5 * np.tanh(3 * np.cos(2 * np.pi / period * XS + phase))  # soft-edged wallpaper stripes
    return _mix(c, t) * (1 - 0.15 / H * YS)[..., None]


def _bg_tiles(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = np.float32(rng.integers(48, 96))
    ox, oy = np.float32(rng.uniform(0, k, 2))
    u, v = (XS + ox) % k, (YS + oy) % k
    checker = ((XS + ox) // k % 2) != ((YS + oy) // k % 2)
    grout = (u < 3) | (v < 3)
    return _mix(c, checker) * _rgb(1 - 0.45 * grout)


def _bg_bokeh(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Out-of-focus lights: drawn and blurred at quarter size, then upsampled (they are smooth).
    lights = np.zeros((H // 4, W // 4, 3), np.float32)
    for _ in range(int(rng.integers(14, 22))):
        centre = (int(rng.integers(0, W // 4)), int(rng.integers(0, H // 4)))
        colour = c[1] * rng.uniform(0.5, 1.2) + rng.uniform(-30, 30, 3)
        cv2.circle(lights, centre, int(rng.integers(3, 12)), tuple(float(v) for v in colour), -1, cv2.LINE_AA)
    lights = cv2.resize(cv2.GaussianBlur(lights, (0, 0), 1.75), (W, H), interpolation=cv2.INTER_LINEAR)
    return 0.7 * lights + _row(c[0] * 0.35)


def _bg_shelves(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = np.tile(_row(c[0] * 0.6), (H, 1, 1))
    shelf = int(rng.integers(110, 150))
    for top in range(int(rng.integers(-40, 0)), H, shelf):
        cv2.rectangle(img, (0, top + shelf - 12), (W, top + shelf), tuple(float(v) for v in c[1] * 0.7), -1)
        x = int(rng.integers(-20, 0))
        while x < W:  # a row of books of random width, height and colour
            width, height = int(rng.integers(10, 32)), int(rng.integers(60, shelf - 20))
            colour = c[int(rng.integers(0, 2))] * rng.uniform(0.5, 1.3) + rng.uniform(-40, 40, 3)
            cv2.rectangle(img, (x, top + shelf - 12 - height), (x + width - 2, top + shelf - 12),
                          tuple(float(v) for v in colour), -1)
            x += width
    return img


def _bg_clouds(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t = 0.7 * _smooth_noise(rng, (4, 5), 1)[..., 0] + 0.3 * _smooth_noise(rng, (12, 16), 1)[..., 0]
    return _mix(c, np.clip((t - 0.5) * 2 + 0.5, 0, 1))


BACKGROUNDS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gradient": _bg_gradient, "stripes": _bg_stripes, "tiles": _bg_tiles,
    "bokeh": _bg_bokeh, "shelves": _bg_shelves, "clouds": _bg_clouds,
}
FAMILIES = tuple(BACKGROUNDS)


def _session(seed: int, identity: int, session: int) -> _Session:
    rng = _rng(seed, identity, session, 0, STREAM["session"])
    # Offset by identity: each split then sees several families, not one per identity.
    family = FAMILIES[(session - 1 + 3 * identity) % len(FAMILIES)]
    colours = rng.uniform(30, 225, (2, 3)).astype(np.float32)
    return _Session(family, colours, temperature=float(rng.uniform(-1, 1)), brightness=float(rng.uniform(0.85, 1.12)),
                    contrast=float(rng.uniform(0.85, 1.12)), side_light=float(rng.uniform(-0.3, 0.3)))


def _background(session: _Session, rng: np.random.Generator) -> np.ndarray:
    colours = session.colours * rng.uniform(0.92, 1.08, (2, 3)).astype(np.float32)
    return BACKGROUNDS[session.family](colours, rng).astype(np.float32, copy=False)


def _light(img: np.ndarray, session: _Session, rng: np.random.Generator) -> np.ndarray:
    """Scene lighting: contrast, brightness, colour temperature, and a lamp to one side."""
    temp = session.temperature + rng.normal(0, 0.1)
    brightness = session.brightness * rng.uniform(0.93, 1.07)
    gains = np.float32([1 + 0.12 * temp, 1 + 0.02 * temp, 1 - 0.12 * temp]) * np.float32(brightness)
    side = 1 + (XS / W - 0.5) * np.float32(session.side_light + rng.normal(0, 0.05))  # (1, W)
    contrast = np.float32(session.contrast * rng.uniform(0.95, 1.05))
    return (img * contrast + 128 * (1 - contrast)) * (_row(gains) * side[..., None])


def _camera(img: np.ndarray, rng: np.random.Generator, blur: tuple[float, float], noise: tuple[float, float]) -> np.ndarray:
    """Optics and sensor: mild defocus blur and luminance noise."""
    sigma = rng.uniform(*blur)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    # One noise plane for all channels (what demosaiced sensor noise mostly looks like), and
    # uniform draws of the same spread: 4x cheaper than Gaussian ones, alike to the eye.
    return img + _rgb(_unit_noise(img.shape[:2], rng) * np.float32(rng.uniform(*noise)))


def _composite(back: np.ndarray, front: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return back + (front - back) * _rgb(alpha)


# --------------------------------------------------------------------------------------
# Live


def _live(src: _Source, session: _Session, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float], float]:
    """Live frame (uint8 RGB), its face centre and face width in canvas pixels."""
    rgb, alpha, (fx, fy) = src.rgb, src.alpha, src.face
    if rng.random() < 0.5:
        rgb, alpha, fx = np.ascontiguousarray(rgb[:, ::-1]), np.ascontiguousarray(alpha[:, ::-1]), rgb.shape[1] - 1 - fx
    width = rng.uniform(*FACE_WIDTH)
    cx, cy = rng.uniform(*FACE_X) * W, rng.uniform(*FACE_Y) * H
    m = cv2.getRotationMatrix2D((fx, fy), rng.uniform(-8, 8), width / src.face_width)
    m[:, 2] += (cx - fx, cy - fy)  # rotate and scale about the face, then move the face to (cx, cy)
    # Replicated borders keep bilinear sampling from pulling black into the matte's edge.
    fg = cv2.warpAffine(rgb, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(alpha, m, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
    img = _composite(_background(session, rng), fg, a)
    img = _camera(_light(img, session, rng), rng, blur=(0.0, 1.0), noise=(1.0, 3.0))
    return _to_uint8(img), (cx, cy), width


# --------------------------------------------------------------------------------------
# Attacks: a sheet (paper or screen) carrying the live image, re-photographed in the scene


def _recapture(sheet: np.ndarray, session: _Session, rng: np.random.Generator,
               scale: tuple[float, float], jitter: float) -> np.ndarray:
    """Photograph a flat sheet held in front of the camera, slightly tilted (a perspective warp)."""
    sh, sw = sheet.shape[:2]
    s = rng.uniform(*scale) * min(W / sw, H / sh)
    dw, dh = sw * s, sh * s
    x0, y0 = (W - dw) * rng.uniform(0.25, 0.75), (H - dh) * rng.uniform(0.25, 0.75)
    dst = np.float32([[x0, y0], [x0 + dw, y0], [x0 + dw, y0 + dh], [x0, y0 + dh]])
    dst += (rng.uniform(-jitter, jitter, (4, 2)) * (W, H)).astype(np.float32)
    src = np.float32([[0, 0], [sw, 0], [sw, sh], [0, sh]])
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(sheet, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpPerspective(np.ones((sh, sw), np.float32), m, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
    img = _composite(_background(session, rng), warped, mask)
    return _to_uint8(_camera(_light(img, session, rng), rng, blur=(0.4, 1.2), noise=(1.5, 3.5)))


# Attack strengths: about the strongest that keep BlazeFace finding >= 95% of faces in
# each class (measured: 0-1 misses in 60 per class over seeds 0-7, all on the astronaut).
# Stronger or coarser halftone, or stronger moire bands across the face, make it miss.
HALFTONE_PITCH, HALFTONE_MIX = (3.0, 4.5), (0.15, 0.3)  # dot pitch (px), blend weight
MOIRE_PERIOD, MOIRE_DEPTH = (14.0, 40.0), (0.03, 0.07)  # band period (px), modulation depth

# Screen angles of offset printing (cyan, magenta, yellow): their beat is the rosette.
HALFTONE_ANGLES = np.deg2rad([15.0, 75.0, 0.0])


def _halftone(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blend in a CMY dot screen: each channel's ink coverage becomes dots of varying size."""
    k = 2 * np.pi / rng.uniform(*HALFTONE_PITCH)
    screens = []
    for angle in HALFTONE_ANGLES + rng.uniform(0, 0.3):
        kc, ks = np.float32(k * np.cos(angle)), np.float32(k * np.sin(angle))
        # cos u + cos v, with (u, v) the pixel coordinates rotated by the screen angle
        screens.append(0.5 + 0.25 * (_wave(kc * XS, ks * YS) + _wave(-ks * XS, kc * YS)))
    dots = np.clip((1 - img / 255 - _rgb(*screens)) * 4 + 0.5, 0, 1)  # soft threshold: ink where coverage > screen
    a = np.float32(rng.uniform(*HALFTONE_MIX))
    return img * (1 - a) + (1 - dots) * (255 * a)


def _paper_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Multiplicative paper: horizontal fibres plus faint blotches, as a 3-plane image."""
    fibres = cv2.GaussianBlur(_unit_noise(shape, rng), (0, 0), sigmaX=2.5, sigmaY=0.6)
    blotch = cv2.resize(rng.random((6, 8), dtype=np.float32), shape[::-1], interpolation=cv2.INTER_CUBIC)
    return _rgb(1 + fibres * np.float32(0.04 / (fibres.std() + 1e-6)) + 0.04 * (blotch - 0.5))


def _print_attack(live: np.ndarray, session: _Session, rng: np.random.Generator) -> np.ndarray:
    # One colour matrix: keep a fraction of the chroma (printers lose saturation) and squeeze
    # the range (ink never reaches black, paper never white).
    keep, span = rng.uniform(0.45, 0.75), rng.uniform(0.7, 0.82)
    grey = np.tile([[0.299, 0.587, 0.114]], (3, 1))
    matrix = np.hstack([span * ((1 - keep) * grey + keep * np.eye(3)), np.full((3, 1), 28.0)])
    img = _halftone(cv2.transform(live.astype(np.float32), matrix.astype(np.float32)), rng)
    paper = rng.uniform(232, 250) + np.array([3.0, 1.0, -4.0])  # slightly warm paper white
    b = round(rng.uniform(0.025, 0.05) * W)
    sheet = cv2.copyMakeBorder(img, b, b, b, b, cv2.BORDER_CONSTANT, value=tuple(float(v) for v in paper))
    sheet = sheet * _paper_texture(sheet.shape[:2], rng)
    return _recapture(sheet, session, rng, scale=(0.86, 0.95), jitter=0.035)


def _pixel_grid(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RGB sub-pixel stripes (a (1, W, 3) row) and dark gaps between pixel rows (an (H, 1, 1) column).

    A screen pixel spans 3-4 camera pixels.
    """
    p = float(rng.integers(3, 5))
    stripe = np.floor((XS[..., None] % p) * 3 / p)  # 0, 1, 2: which sub-pixel column a camera pixel sees
    columns = 1 - np.float32(rng.uniform(0.08, 0.16)) * (stripe != np.arange(3, dtype=np.float32))
    rows = 1 - np.float32(rng.uniform(0.06, 0.15)) * (YS[..., None] % p >= p - 1)
    return np.ascontiguousarray(columns, np.float32), rows.astype(np.float32)


def _moire(rng: np.random.Generator) -> np.ndarray:
    """Coloured, slightly curved interference bands (screen grid beating with the sensor grid)."""
    angle, k = rng.uniform(0, np.pi), 2 * np.pi / rng.uniform(*MOIRE_PERIOD)
    cx, cy, bend = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(-2e-5, 2e-5)
    # phase = straight bands + a radial bend: an x part plus a y part
    fx = (k * np.cos(angle) * XS + bend * (XS - cx) ** 2).astype(np.float32)
    gy = (k * np.sin(angle) * YS + bend * (YS - cy) ** 2).astype(np.float32)
    shifts = np.array([0.0, 2.1, 4.2]) * rng.uniform(0.2, 0.6)  # channels out of phase: colour fringes
    depth = np.float32(rng.uniform(*MOIRE_DEPTH))
    return _rgb(*(1 + depth * _wave(fx + np.float32(shift), gy) for shift in shifts))


def _glare(shape: tuple[int, int], face: tuple[float, float], face_width: float, rng: np.random.Generator) -> np.ndarray:
    """Additive specular highlight off the screen glass, centred away from the face."""
    h, w = shape
    for _ in range(20):  # first candidate clear of the face (a glare over it hides the face from any detector)
        gx, gy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        if np.hypot(gx - face[0], gy - face[1]) > 0.9 * face_width:
            break
    q = 4  # a smooth blob: computed at quarter size and upsampled
    ys, xs = np.ogrid[0:h:q, 0:w:q]
    t = rng.uniform(0, np.pi)
    u = ((xs - gx) * np.cos(t) + (ys - gy) * np.sin(t)).astype(np.float32)
    v = ((ys - gy) * np.cos(t) - (xs - gx) * np.sin(t)).astype(np.float32)
    su, sv = np.float32(rng.uniform(0.1, 0.25) * w), np.float32(rng.uniform(0.04, 0.12) * h)
    broad = np.exp(-0.5 * ((u / su) ** 2 + (v / sv) ** 2))
    core = np.exp(-0.5 * ((u / (0.25 * su)) ** 2 + (v / (0.25 * sv)) ** 2))
    blob = np.float32(rng.uniform(70, 140)) * (0.6 * broad + 0.4 * core)
    blob = cv2.resize(blob, (w, h), interpolation=cv2.INTER_LINEAR)
    return _rgb(0.95 * blob, 0.98 * blob, blob)  # glass reflections of daylight: a touch blue


def _replay_attack(live: np.ndarray, face: tuple[float, float], face_width: float,
                   session: _Session, rng: np.random.Generator) -> np.ndarray:
    gamma = rng.uniform(0.72, 0.88) if rng.random() < 0.5 else rng.uniform(1.15, 1.4)  # display gamma != camera's
    white = np.array([rng.uniform(0.88, 0.97), 1.0, rng.uniform(1.03, 1.12)])  # cold LCD white point
    brightness = rng.uniform(1.0, 1.15)  # emissive: a bit brighter than the scene
    levels = 255 * brightness * (np.arange(256) / 255) ** gamma
    img = cv2.LUT(live, np.ascontiguousarray((levels[:, None] * white)[:, None, :], np.float32))  # float32 out
    columns, rows = _pixel_grid(rng)
    img = img * columns * rows * _moire(rng)
    b = round(rng.uniform(0.025, 0.05) * W)
    sheet = cv2.copyMakeBorder(img, b, b, b, b, cv2.BORDER_CONSTANT, value=(float(rng.uniform(10, 45)),) * 3)
    sheet = sheet + _glare(sheet.shape[:2], (face[0] + b, face[1] + b), face_width, rng)  # glass covers the bezel too
    return _recapture(sheet, session, rng, scale=(0.86, 0.96), jitter=0.03)


# --------------------------------------------------------------------------------------
# The dataset


def _session_splits(sessions: int) -> dict[int, str]:
    """Session -> split, the same for both identities: disjoint subjects, both identities everywhere."""
    if sessions < 3:
        raise ValueError(f"sessions must be >= 3 (one each for train, dev, test), got {sessions}")
    n_dev, n_test = max(1, round(sessions / 6)), max(1, round(sessions / 3))
    n_train = sessions - n_dev - n_test
    return {s: "train" if s <= n_train else "dev" if s <= n_train + n_dev else "test" for s in range(1, sessions + 1)}


def _prepare(root: Path) -> None:
    """Create ``root``; replace an earlier demo there, but never write over other files."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise ValueError(f"demo-data: {root} is not empty and holds no {MARKER}; choose an empty or new folder")
        for split in SPLITS:
            shutil.rmtree(root / split, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    # Written first so an interrupted run can still be replaced by the next one.
    (root / MARKER).write_text(json.dumps({"generator": __name__, "complete": False}) + "\n")


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), PNG_PARAMS):
        raise OSError(f"demo-data: could not write {path}")


def _subject_images(seed: int, identity: int, session: int, n: int) -> dict[str, np.ndarray]:
    """The live image ``n`` of one pseudo-subject and its two attacks."""
    src, style = _source(IDENTITIES[identity]), _session(seed, identity, session)
    live, face, face_width = _live(src, style, _rng(seed, identity, session, n, STREAM["live"]))
    return {
        "live": live,
        "print": _print_attack(live, style, _rng(seed, identity, session, n, STREAM["print"])),
        "replay": _replay_attack(live, face, face_width, style, _rng(seed, identity, session, n, STREAM["replay"])),
    }


def make_demo_dataset(out: str | Path, seed: int = 0, sessions: int = 6, per_subject: int = 5) -> dict:
    """Write the demo dataset under ``out``; returns a JSON-able summary.

    ``sessions`` pseudo-subjects per identity (split train/dev/test by session),
    ``per_subject`` live images per pseudo-subject, each with one print and one
    replay attack: 2 x 6 x 5 x 3 = 180 images by default.
    """
    if seed < 0 or per_subject < 1:
        raise ValueError(f"demo-data: seed must be >= 0 and per_subject >= 1, got {seed} and {per_subject}")
    start = time.perf_counter()
    root = Path(out).expanduser().resolve()
    splits = _session_splits(sessions)
    _prepare(root)
    counts = {split: {"live": 0, "spoof": {kind: 0 for kind in ATTACK_TYPES}} for split in SPLITS}
    subjects: dict[str, list[str]] = {split: [] for split in SPLITS}
    for identity, name in enumerate(IDENTITIES):
        for session, split in splits.items():
            subject = f"{name}-s{session}"
            subjects[split].append(subject)
            for n in range(per_subject):
                for kind, rgb in _subject_images(seed, identity, session, n).items():
                    folder = root / split / ("live" if kind == "live" else f"spoof/{kind}")
                    _write(folder / f"{subject}_{n}.png", rgb)
                    if kind == "live":
                        counts[split]["live"] += 1
                    else:
                        counts[split]["spoof"][kind] += 1
    totals = {"live": sum(c["live"] for c in counts.values()),
              **{kind: sum(c["spoof"][kind] for c in counts.values()) for kind in ATTACK_TYPES}}
    summary = {"out": str(root), "seed": seed, "images": sum(totals.values()), "identities": list(IDENTITIES),
               "subjects": subjects, "counts": counts, "totals": totals}
    # The marker leaves out the path and the timing: two runs with one seed give identical trees.
    marker = {"generator": __name__, "complete": True, **{k: v for k, v in summary.items() if k != "out"}}
    (root / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    return {**summary, "seconds": round(time.perf_counter() - start, 2)}
