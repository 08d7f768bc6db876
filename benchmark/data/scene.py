"""Procedural street scenes: one label map (in three encodings) and one rendered image per call.

Why it looks like this: the benchmark needs a segmentation task a small model can learn from shape and
context (sky on top, road converging to a vanishing point, vehicles on the road, people on the sidewalk)
but cannot solve from appearance alone. Classes that share a context (building/wall/fence,
vegetation/terrain, car/truck/bus, person/rider) draw colours and textures independently from one shared
distribution per image, so only the shapes and the specific image tell them apart: a model can memorise
its training images yet generalises imperfectly, which is the train/held-out gap membership inference needs.
Per-image noise textures add detail that is unique to each image. All drawing is vectorised numpy
(boolean masks from coordinate grids, table lookups); Python loops run over objects, never over pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from benchmark.data.labels import CITYSCAPES_TRAINID_TO_LABELID, IGNORE_INDEX

# trainIds
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

# The Mapillary v1.2 id each trainId is written with unless a drawing step picks another one.
MAPILLARY_PRIMARY = np.array([13, 15, 17, 6, 3, 45, 48, 50, 30, 29, 27, 19, 20, 55, 61, 54, 58, 57, 52], np.uint8)
# Ignored things: (Cityscapes labelId, Mapillary id) pairs whose trainId is 255 in both label spaces.
EGO = (1, 64)  # ego vehicle
PARKING = (9, 10)  # parking
CLUTTER = ((4, 5), (4, 1), (5, 4), (4, 33), (5, 51))  # static/dynamic vs barrier, animal, guard rail, bench, trash can

N_TEXTURES = 6  # flat, fine noise, vertical stripes, horizontal stripes, windows, blotches
FLAT, NOISE, VSTRIPES, HSTRIPES, WINDOWS, BLOTCH = range(N_TEXTURES)


@dataclass(frozen=True)
class Style:
    """What makes one dataset look different from another (the domain shift of the independent setting)."""

    horizon: tuple[float, float]  # horizon row as a fraction of the height (camera height / pitch)
    sky: tuple[float, float, float]  # mean sky colour
    sky_jitter: float
    saturation: float  # 0 = grey, 1 = unchanged, >1 = more saturated
    brightness: float
    tint: tuple[float, float, float]  # per-channel gain (white balance)
    gamma: float
    noise: tuple[float, float]  # range of the per-image sensor noise std
    ego_prob: float  # probability of an ignored ego-vehicle hood at the bottom
    blur: float  # Gaussian blur sigma in pixels (0 = sharp)


class LabelMaps(NamedTuple):
    """One scene's label map in the three encodings the layouts store: Cityscapes trainIds and labelIds,
    Mapillary v1.2 ids."""

    train: np.ndarray
    cs: np.ndarray
    mv: np.ndarray

    def shifted(self, move: Callable[[np.ndarray], np.ndarray]) -> LabelMaps:
        return LabelMaps(*(move(a) for a in self))


class Canvas:
    """Label maps (trainIds, Cityscapes labelIds, Mapillary ids) and per-pixel appearance, painted in layers."""

    def __init__(self, h: int, w: int, rng: np.random.Generator) -> None:
        self.h, self.w, self.rng = h, w, rng
        self.yy = np.arange(h, dtype=np.float32)[:, None]
        self.xx = np.arange(w, dtype=np.float32)[None, :]
        self.train = np.full((h, w), IGNORE_INDEX, np.uint8)
        self.cs = np.zeros((h, w), np.uint8)
        self.mv = np.full((h, w), 65, np.uint8)
        self.colour = np.zeros((h, w, 3), np.float32)
        self.tex = np.zeros((h, w), np.intp)
        self.amp = np.zeros((h, w), np.float32)

    def rect(self, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        return (self.yy >= y0) & (self.yy < max(y1, y0 + 1)) & (self.xx >= x0) & (self.xx < max(x1, x0 + 1))

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((self.yy - cy) / max(ry, 0.6)) ** 2 + ((self.xx - cx) / max(rx, 0.6)) ** 2 <= 1.0

    def paint(self, mask: np.ndarray, tid: int, colour: np.ndarray, tex: int = FLAT, amp: float = 0.0,
              ids: tuple[int, int] | None = None) -> None:
        """Label `mask` as trainId `tid` (ignored things pass their (labelId, Mapillary id) in `ids`)."""
        cs, mv = ids if ids is not None else (CITYSCAPES_TRAINID_TO_LABELID[tid], MAPILLARY_PRIMARY[tid])
        self.train[mask], self.cs[mask], self.mv[mask] = tid, cs, mv
        self.colour[mask] = colour
        self.tex[mask], self.amp[mask] = tex, amp

    def labels(self) -> LabelMaps:
        return LabelMaps(self.train, self.cs, self.mv)

    def tint(self, mask: np.ndarray, colour: np.ndarray) -> None:
        """Change the appearance only (windows, wheels, lamps), keeping the labels."""
        self.colour[mask] = colour
        self.amp[mask] = 0.0

    def uniform_colour(self, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, 3).astype(np.float32)

    def near(self, base: tuple[float, float, float] | np.ndarray, jitter: float) -> np.ndarray:
        return np.clip(np.asarray(base, np.float32) + self.rng.normal(0, jitter, 3), 0, 255).astype(np.float32)


def _textures(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Per-image texture fields in [-1, 1], shape (N_TEXTURES, H, W); random periods and phases."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    px, py = rng.uniform(3, 9, 2)
    coarse = rng.uniform(-1, 1, (max(h // 8, 2), max(w // 8, 2))).astype(np.float32)
    return np.stack([
        np.zeros((h, w), np.float32),
        np.clip(rng.normal(0, 0.5, (h, w)), -1, 1).astype(np.float32),
        np.sign(np.sin(2 * np.pi * xx / px + rng.uniform(0, 6.3))),
        np.sign(np.sin(2 * np.pi * yy / py + rng.uniform(0, 6.3))),
        np.where(((xx % (2 * px)) < px) & ((yy % (2 * py)) < py), 1.0, -1.0).astype(np.float32),
        cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR),
    ])


def _facade(c: Canvas) -> tuple[np.ndarray, int, float]:
    """Appearance shared by building, wall and fence (drawn independently per class: deliberately ambiguous)."""
    return c.uniform_colour(50, 200), int(c.rng.choice([NOISE, VSTRIPES, HSTRIPES, WINDOWS, BLOTCH])), float(c.rng.uniform(8, 35))


def _green(c: Canvas) -> tuple[np.ndarray, int, float]:
    """Appearance shared by vegetation and terrain."""
    colour = np.array([c.rng.uniform(40, 150), c.rng.uniform(70, 170), c.rng.uniform(20, 90)], np.float32)
    return colour, int(c.rng.choice([NOISE, BLOTCH])), float(c.rng.uniform(8, 30))


def _vehicle_colour(c: Canvas) -> np.ndarray:
    """One palette for every vehicle class: colour never tells a car from a truck or a bus."""
    return c.uniform_colour(25, 230) if c.rng.random() < 0.6 else np.full(3, c.rng.uniform(30, 220), np.float32)


def draw_scene(h: int, w: int, style: Style, rng: np.random.Generator) -> tuple[LabelMaps, np.ndarray]:
    """Draw one street scene; returns its label maps and the rendered HxWx3 uint8 RGB image."""
    c = Canvas(h, w, rng)
    hz = round(h * rng.uniform(*style.horizon))
    vx = w * rng.uniform(0.3, 0.7)
    s_road = rng.uniform(0.7, 1.8) * w / h
    s_side = s_road * rng.uniform(1.3, 2.0)

    def depth(y: float) -> float:  # perspective scale: 0 at the horizon, 1 at the bottom row
        return float(np.clip((y - hz) / max(h - hz, 1), 0.08, 1.0))

    _ground(c, hz, vx, s_road, s_side, style)
    _skyline(c, hz)
    objects = _ground_objects(c, hz, vx, s_road, s_side, depth)
    for _, _, draw in sorted(objects, key=lambda o: (o[0], o[1])):  # far to near
        draw()
    if rng.random() < style.ego_prob:
        top = h * (1 - rng.uniform(0.06, 0.14))
        c.paint(c.ellipse(h + (h - top) * 2.5, w / 2, (h - top) * 3.5, w * 0.9), IGNORE_INDEX,
                c.uniform_colour(10, 60), NOISE, 5.0, ids=EGO)
    return c.labels(), _render(c, style)


def _ground(c: Canvas, hz: int, vx: float, s_road: float, s_side: float, style: Style) -> None:
    h, w, rng = c.h, c.w, c.rng
    c.paint(c.rect(0, hz, 0, w), SKY, c.near(style.sky, style.sky_jitter), int(rng.choice([FLAT, BLOTCH])),
            float(rng.uniform(0, 20)))
    below = c.rect(hz, h, 0, w)
    dist, dep = np.abs(c.xx - vx), np.maximum(c.yy - hz, 0)
    road = below & (dist <= dep * s_road + 0.5)
    side = below & ~road & (dist <= dep * s_side + 1)
    sidewalk_colour = c.near((150, 140, 130), 25)
    for outer in (below & ~road & ~side & (c.xx < vx), below & ~road & ~side & (c.xx >= vx)):
        if rng.random() < 0.6:
            c.paint(outer, TERRAIN, *_green(c))
        else:
            c.paint(outer, SIDEWALK, sidewalk_colour, HSTRIPES, float(rng.uniform(3, 12)))
    c.paint(side, SIDEWALK, sidewalk_colour, int(rng.choice([HSTRIPES, WINDOWS, NOISE])), float(rng.uniform(3, 15)))
    curb = side & (dist <= dep * s_road + 1.5)
    c.paint(curb, SIDEWALK, c.near((175, 175, 170), 15), ids=(8, 2))  # Mapillary 'Curb'
    c.paint(road, ROAD, c.near((85, 85, 90), 15), int(rng.choice([NOISE, BLOTCH])), float(rng.uniform(4, 15)))
    lane = road & (np.abs(c.xx - vx - (c.yy - hz) * rng.uniform(-0.3, 0.3)) <= 0.4 + dep * 0.03)
    lane &= ((c.yy - hz) % 6) < 3
    c.paint(lane, ROAD, c.near((230, 230, 220), 10), ids=(7, 24))  # Mapillary 'Lane Marking - General'
    if rng.random() < 0.4:
        y = rng.uniform(hz + (h - hz) * 0.5, h - 2)
        c.paint(road & c.ellipse(y, vx + rng.uniform(-0.3, 0.3) * (y - hz) * s_road, 1.2, 3), ROAD,
                c.near((50, 50, 55), 8), ids=(7, 41))  # Mapillary 'Manhole'
    if rng.random() < 0.3:  # a parking bay on the outer ground: ignored in every label space
        y0 = rng.uniform(hz + 2, h - 6)
        x0 = rng.uniform(0, w * 0.3) if rng.random() < 0.5 else rng.uniform(w * 0.7, w - 4)
        c.paint(c.rect(y0, y0 + rng.uniform(3, 8), x0, x0 + rng.uniform(6, 20)) & below & ~road, IGNORE_INDEX,
                c.near((110, 105, 100), 15), NOISE, 6.0, ids=PARKING)


def _skyline(c: Canvas, hz: int) -> None:
    """Facade blocks (building, wall, vegetation) along the horizon; gaps stay sky."""
    w, rng = c.w, c.rng
    appearance = {BUILDING: _facade(c), WALL: _facade(c), VEGETATION: _green(c)}
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        width = rng.uniform(0.08, 0.3) * w
        kind = int(rng.choice([BUILDING, WALL, VEGETATION, SKY], p=[0.6, 0.12, 0.18, 0.1]))
        base = hz + rng.uniform(0, 3)
        if kind == BUILDING:
            top = hz - rng.uniform(0.25, 0.95) * hz
            c.paint(c.rect(top, base, x, x + width), BUILDING, *appearance[BUILDING])
        elif kind == WALL:
            c.paint(c.rect(hz - rng.uniform(0.06, 0.25) * hz, base, x, x + width), WALL, *appearance[WALL])
        elif kind == VEGETATION:
            cy, ry = hz - rng.uniform(0.2, 0.5) * hz, rng.uniform(0.15, 0.4) * hz + 2
            c.paint(c.ellipse(cy, x + width / 2, ry, width / 2) | c.rect(cy, base, x + width * 0.45, x + width * 0.55),
                    VEGETATION, *appearance[VEGETATION])
        x += width + (rng.uniform(0, 0.08) * w if rng.random() < 0.3 else 0)


Draw = Callable[[], None]


def _ground_objects(c: Canvas, hz: int, vx: float, s_road: float, s_side: float,
                    depth: Callable[[float], float]) -> list[tuple[float, int, Draw]]:
    """Things standing on the ground, as (bottom row, order, draw) so they can be drawn far to near."""
    h, w, rng = c.h, c.w, c.rng
    objects: list[tuple[float, int, Draw]] = []

    def on_road(y: float) -> float:
        return vx + rng.uniform(-0.8, 0.8) * (y - hz) * s_road

    def off_road(y: float) -> float:
        side = rng.choice([-1, 1])
        return vx + side * rng.uniform(1.05, 1.6) * (y - hz) * (s_road + s_side) / 2

    def bottom() -> float:
        return rng.uniform(hz + 2, h - 1)

    def add(y: float, draw: Draw) -> None:
        objects.append((y, len(objects), draw))

    for _ in range(rng.integers(1, 6)):  # vehicles
        y = bottom()
        kind = int(rng.choice([CAR, TRUCK, BUS], p=[0.6, 0.2, 0.2]))
        add(y, _vehicle(c, kind, y, on_road(y), depth(y)))
    if rng.random() < 0.3:  # a tram / train across the far road
        y = hz + rng.uniform(1, 4)
        add(y, _train(c, y, rng.uniform(0, w * 0.6)))
    for _ in range(rng.integers(1, 5)):  # poles with lights and signs
        y = bottom()
        add(y, _pole(c, y, off_road(y), depth(y), hz))
    for _ in range(rng.integers(0, 4)):  # pedestrians
        y = bottom()
        add(y, _person(c, PERSON, y, off_road(y), depth(y)))
    for _ in range(rng.integers(0, 3)):  # riders on bicycles or motorcycles, on the road
        y = bottom()
        add(y, _ridden(c, y, on_road(y), depth(y), int(rng.choice([BICYCLE, MOTORCYCLE]))))
    for _ in range(rng.integers(0, 2)):  # parked two-wheelers
        y = bottom()
        add(y, _two_wheeler(c, int(rng.choice([BICYCLE, MOTORCYCLE])), y, off_road(y), depth(y)))
    for _ in range(rng.integers(0, 3)):  # fences and low walls beside the road
        y = bottom()
        add(y, _barrier(c, int(rng.choice([FENCE, WALL], p=[0.7, 0.3])), y, off_road(y), depth(y)))
    for _ in range(rng.integers(0, 3)):  # roadside trees
        y = bottom()
        add(y, _tree(c, y, off_road(y), depth(y)))
    for _ in range(rng.integers(0, 3)):  # unlabelled clutter (ignored in every label space)
        y = bottom()
        add(y, _clutter(c, y, off_road(y), depth(y)))
    return objects


def _vehicle(c: Canvas, kind: int, y: float, x: float, s: float) -> Draw:
    rng = c.rng
    width = c.w * s * {CAR: rng.uniform(0.18, 0.3), TRUCK: rng.uniform(0.2, 0.32), BUS: rng.uniform(0.3, 0.5)}[kind]
    height = width * {CAR: rng.uniform(0.45, 0.6), TRUCK: rng.uniform(0.8, 1.1), BUS: rng.uniform(0.6, 0.85)}[kind]
    colour, window = _vehicle_colour(c), c.uniform_colour(20, 90)
    amp = float(rng.uniform(0, 10))

    def draw() -> None:
        x0, top = x - width / 2, y - height
        if kind == CAR:
            body = c.rect(y - height * 0.55, y, x0, x0 + width)
            cabin = c.rect(top, y - height * 0.5, x0 + width * 0.2, x0 + width * 0.8)
            c.paint(body | cabin, CAR, colour, NOISE, amp)
            c.tint(c.rect(top + height * 0.1, y - height * 0.55, x0 + width * 0.25, x0 + width * 0.75), window)
        elif kind == TRUCK:
            cab = c.rect(y - height * 0.6, y, x0, x0 + width * 0.3)
            cargo = c.rect(top, y - height * 0.1, x0 + width * 0.28, x0 + width)
            c.paint(cab | cargo, TRUCK, colour, NOISE, amp)
            c.tint(c.rect(y - height * 0.55, y - height * 0.35, x0 + width * 0.05, x0 + width * 0.25), window)
        else:
            c.paint(c.rect(top, y, x0, x0 + width), BUS, colour, NOISE, amp)
            c.tint(c.rect(top + height * 0.15, top + height * 0.45, x0 + width * 0.05, x0 + width * 0.95), window)
        wheel = max(height * 0.12, 0.8)
        for wx in (x0 + width * 0.2, x0 + width * 0.8):
            c.tint(c.ellipse(y - wheel, wx, wheel, wheel) & (c.train == kind), np.full(3, 25, np.float32))

    return draw


def _train(c: Canvas, y: float, x0: float) -> Draw:
    height, width = c.h * c.rng.uniform(0.1, 0.2), c.w * c.rng.uniform(0.3, 0.6)
    colour, window = _vehicle_colour(c), c.uniform_colour(20, 90)

    def draw() -> None:
        c.paint(c.rect(y - height, y, x0, x0 + width), TRAIN, colour, HSTRIPES, 6.0)
        c.tint(c.rect(y - height * 0.8, y - height * 0.5, x0 + 2, x0 + width - 2) & ((c.xx - x0) % 6 < 4), window)

    return draw


def _pole(c: Canvas, y: float, x: float, s: float, hz: int) -> Draw:
    rng = c.rng
    height = (y - hz) * rng.uniform(2.0, 4.0) + 4
    width = max(0.6, s * c.w * 0.012)
    colour = c.near((110, 110, 115), 25)
    mv = int(rng.choice([45, 47]))  # Mapillary 'Pole' or 'Utility Pole'
    light, sign = rng.random() < 0.55, rng.random() < 0.6
    lamp = np.array([(220, 40, 30), (40, 200, 60), (230, 180, 30)][rng.integers(0, 3)], np.float32)
    sign_colour = np.array([(220, 200, 40), (40, 80, 200), (200, 40, 40), (230, 230, 230)][rng.integers(0, 4)],
                           np.float32)
    size = max(1.5, s * c.w * 0.05)

    def draw() -> None:
        top = y - height
        c.paint(c.rect(top, y, x - width / 2, x + width / 2), POLE, colour, ids=(17, mv))
        if light:
            box = c.rect(top, top + size * 2, x - size / 2, x + size / 2)
            c.paint(box, LIGHT, c.near((35, 35, 35), 10))
            c.tint(box & c.ellipse(top + size * 0.5, x, size * 0.35, size * 0.35), lamp)
        if sign:
            sy = top + size * (2.5 if light else 0.5)
            c.paint(c.ellipse(sy + size / 2, x, size * 0.7, size * 0.7), SIGN, sign_colour)

    return draw


def _person(c: Canvas, tid: int, y: float, x: float, s: float, mv: int | None = None) -> Draw:
    rng = c.rng
    ids = (int(CITYSCAPES_TRAINID_TO_LABELID[tid]), int(MAPILLARY_PRIMARY[tid]) if mv is None else mv)
    height = c.h * s * rng.uniform(0.25, 0.45)
    width = max(height * rng.uniform(0.25, 0.35), 1.0)
    shirt, legs, skin = c.uniform_colour(20, 235), c.uniform_colour(20, 200), c.near((190, 150, 120), 30)

    def draw() -> None:
        head = c.ellipse(y - height * 0.9, x, height * 0.1, width * 0.35)
        torso = c.rect(y - height * 0.8, y - height * 0.4, x - width / 2, x + width / 2)
        leg = c.rect(y - height * 0.4, y, x - width * 0.4, x + width * 0.4)
        c.paint(head | torso | leg, tid, shirt, NOISE, 5.0, ids=ids)
        c.tint(leg, legs)
        c.tint(head, skin)

    return draw


def _two_wheeler(c: Canvas, tid: int, y: float, x: float, s: float) -> Draw:
    size = c.h * s * c.rng.uniform(0.12, 0.2)
    frame = c.uniform_colour(20, 110) if tid == BICYCLE else c.uniform_colour(20, 200)

    def draw() -> None:
        r = max(size * 0.3, 0.8)
        wheels = c.ellipse(y - r, x - size * 0.55, r, r) | c.ellipse(y - r, x + size * 0.55, r, r)
        body = c.rect(y - size * (0.9 if tid == MOTORCYCLE else 0.7), y - r, x - size * 0.5, x + size * 0.5)
        c.paint(wheels | body, tid, frame)
        c.tint(wheels, np.full(3, 20, np.float32))

    return draw


def _ridden(c: Canvas, y: float, x: float, s: float, vehicle: int) -> Draw:
    """A rider on a bicycle or motorcycle: the person is labelled rider, never person."""
    bike = _two_wheeler(c, vehicle, y, x, s)
    mv = 20 if vehicle == BICYCLE else int(c.rng.choice([21, 22]))  # bicyclist / motorcyclist / other rider
    rider = _person(c, RIDER, y - c.h * s * 0.2, x, s, mv)

    def draw() -> None:
        bike()
        rider()

    return draw


def _barrier(c: Canvas, tid: int, y: float, x: float, s: float) -> Draw:
    width = c.w * s * c.rng.uniform(0.15, 0.4)
    height = c.h * s * c.rng.uniform(0.08, 0.2) * (1.4 if tid == WALL else 1.0)
    appearance = _facade(c)

    def draw() -> None:
        c.paint(c.rect(y - height, y, x - width / 2, x + width / 2), tid, *appearance)

    return draw


def _tree(c: Canvas, y: float, x: float, s: float) -> Draw:
    height = c.h * s * c.rng.uniform(0.5, 0.9)
    radius = height * c.rng.uniform(0.25, 0.4)
    appearance, aspect = _green(c), c.rng.uniform(0.8, 1.3)

    def draw() -> None:
        crown = c.ellipse(y - height + radius, x, radius, radius * aspect)
        trunk = c.rect(y - height + radius, y, x - max(radius * 0.12, 0.5), x + max(radius * 0.12, 0.5))
        c.paint(crown | trunk, VEGETATION, *appearance)
        c.tint(trunk, c.near((90, 70, 50), 15))

    return draw


def _clutter(c: Canvas, y: float, x: float, s: float) -> Draw:
    size = c.h * s * c.rng.uniform(0.08, 0.18)
    ids = CLUTTER[c.rng.integers(0, len(CLUTTER))]
    colour = c.uniform_colour(30, 220)

    def draw() -> None:
        c.paint(c.rect(y - size, y, x - size * 0.6, x + size * 0.6), IGNORE_INDEX, colour, NOISE, 10.0, ids=ids)

    return draw


def _render(c: Canvas, style: Style) -> np.ndarray:
    """Appearance -> RGB: textures, lighting, the layout's colour style and sensor noise (all vectorised)."""
    rng, h, w = c.rng, c.h, c.w
    textures = _textures(h, w, rng)
    img = c.colour + (c.amp * textures[c.tex, np.arange(h)[:, None], np.arange(w)[None, :]])[..., None]
    light = 1 + rng.uniform(-0.25, 0.25) * (c.yy / h - 0.5) + rng.uniform(-0.25, 0.25) * (c.xx / w - 0.5)
    img = img * light[..., None] * style.brightness * rng.uniform(0.85, 1.15)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + style.saturation * (img - grey)
    img = img * np.asarray(style.tint, np.float32)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** style.gamma
    img = img + rng.normal(0, rng.uniform(*style.noise), img.shape)
    if style.blur > 0:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), style.blur)
    return np.clip(img, 0, 255).astype(np.uint8)
