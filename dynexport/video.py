"""Procedural video: textured backgrounds, moving shapes, sensor noise, camera jitter, scene
cuts and illumination drift. No downloads; the same seed gives the same clip everywhere.

Used by the examples (training data with keypoint and action labels) and by the tests and
``verify``/``bench`` (``--synthetic NAME`` picks a preset).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")


@dataclasses.dataclass(frozen=True)
class Scene:
    """How a clip is made. Sizes in pixels, speeds in pixels per frame."""

    frames: int = 32
    height: int = 64
    width: int = 64
    shapes: int = 3
    shape_size: tuple[float, float] = (5.0, 10.0)  # radius range
    speed: float = 1.5
    spin: float = 0.1  # largest rotation per frame (radians)
    noise_std: float = 1.0  # sensor noise, in 0..255 units
    jitter: float = 0.0  # camera shake amplitude (pixels)
    pan: float = 0.0  # camera pan (pixels per frame)
    cuts: tuple[int, ...] = ()  # frames where a new scene starts
    still: tuple[int, int] | None = None  # [start, stop) frames where nothing moves and no noise changes
    drift: float = 0.0  # illumination change per frame (fraction of brightness)
    texture_scale: float = 8.0  # background feature size; small values look like foliage


PRESETS: dict[str, Scene] = {
    "static_camera": Scene(),
    "handheld": Scene(jitter=3.0, pan=0.7, texture_scale=2.0, shapes=5),
    "scene_cut": Scene(cuts=(16,)),
    "drift": Scene(shapes=0, drift=0.004, noise_std=0.0),
    "still": Scene(speed=0.0, spin=0.0, noise_std=0.0),
    "mixed": Scene(frames=40, still=(8, 16), cuts=(28,), drift=0.001),
    # a fixed camera watching a few small, slow objects (a parking lot, a hallway): most of
    # every frame is exactly the previous one, the bench case of a deep network (issue 14)
    "small_objects": Scene(shapes=2, shape_size=(3.0, 5.0), speed=1.0, spin=0.05, noise_std=0.0),
}


@dataclasses.dataclass
class Clip:
    frames: np.ndarray  # uint8 [T, 3, H, W]
    centers: np.ndarray  # float32 [T, S, 2] (y, x) of each shape; NaN when not visible
    kinds: np.ndarray  # int64 [T, S] index into SHAPES

    def as_float(self) -> np.ndarray:
        """[T, 3, H, W] float32 in [0, 1], the normalization the examples train with."""
        return self.frames.astype(np.float32) / 255.0


def _texture(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Smooth random color texture [3, H, W] in 0..255 from a few random sinusoids."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((3, height, width), np.float32)
    for _ in range(6):
        freq = rng.uniform(0.5, 1.5) / scale
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * freq + phase)
        image += rng.uniform(10, 30, size=(3, 1, 1)).astype(np.float32) * wave
    base = rng.uniform(60, 190, size=(3, 1, 1)).astype(np.float32)
    return np.clip(base + image, 0, 255)


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if kind == "circle":
        return u * u + v * v <= r * r
    if kind == "square":
        return (np.abs(u) <= r * 0.8) & (np.abs(v) <= r * 0.8)
    if kind == "triangle":
        return (v <= r * 0.6) & (v >= -r + 1.6 * np.abs(u))
    # star: radius modulated by the angle around the center
    theta = np.arctan2(v, u)
    radius = r * (0.55 + 0.45 * np.cos(5 * theta))
    return u * u + v * v <= radius * radius


@dataclasses.dataclass
class _Shape:
    kind: int
    y: float
    x: float
    vy: float
    vx: float
    radius: float
    angle: float
    spin: float
    color: np.ndarray


def _new_shapes(rng, scene: Scene, kinds=None, colors=None) -> list[_Shape]:
    shapes = []
    for i in range(scene.shapes):
        kind = int(kinds[i]) if kinds is not None else int(rng.integers(len(SHAPES)))
        direction = rng.uniform(0, 2 * np.pi)
        speed = scene.speed * rng.uniform(0.5, 1.5)
        shapes.append(_Shape(
            kind=kind,
            y=rng.uniform(0.2, 0.8) * scene.height, x=rng.uniform(0.2, 0.8) * scene.width,
            vy=speed * np.sin(direction), vx=speed * np.cos(direction),
            radius=rng.uniform(*scene.shape_size), angle=rng.uniform(0, np.pi),
            spin=rng.uniform(-scene.spin, scene.spin),
            color=np.asarray(colors[i], np.float32) if colors is not None else rng.uniform(0, 255, size=3).astype(np.float32),
        ))
    return shapes


def _move(shape: _Shape, scene: Scene) -> None:
    shape.y += shape.vy
    shape.x += shape.vx
    shape.angle += shape.spin
    if not shape.radius <= shape.y <= scene.height - shape.radius:
        shape.vy = -shape.vy
    if not shape.radius <= shape.x <= scene.width - shape.radius:
        shape.vx = -shape.vx


def generate(scene: Scene | str = "static_camera", seed: int = 0, kinds=None, colors=None, **overrides) -> Clip:
    """Render a clip. ``scene`` is a ``Scene`` or a preset name (see ``PRESETS``); keyword
    overrides change fields of it (e.g. ``frames=8, height=48``). ``kinds`` and ``colors``
    fix the shapes' kinds (indices into ``SHAPES``) and RGB colors instead of drawing them."""
    if isinstance(scene, str):
        if scene not in PRESETS:
            raise ValueError(f"unknown synthetic clip {scene!r}; expected one of {', '.join(PRESETS)}")
        scene = PRESETS[scene]
    scene = dataclasses.replace(scene, **overrides)
    rng = np.random.default_rng(seed)
    margin = int(np.ceil(scene.jitter + abs(scene.pan) * scene.frames)) + 1
    yy, xx = np.mgrid[0:scene.height, 0:scene.width].astype(np.float32)

    def new_world():
        background = _texture(rng, scene.height + 2 * margin, scene.width + 2 * margin, scene.texture_scale)
        return background, _new_shapes(rng, scene, kinds, colors)

    background, shapes = new_world()
    frames = np.zeros((scene.frames, 3, scene.height, scene.width), np.uint8)
    centers = np.full((scene.frames, scene.shapes, 2), np.nan, np.float32)
    kind_table = np.zeros((scene.frames, scene.shapes), np.int64)
    noise = np.zeros((3, scene.height, scene.width), np.float32)
    pan_offset = 0.0
    for t in range(scene.frames):
        still = scene.still is not None and scene.still[0] <= t < scene.still[1]
        if t in scene.cuts:
            background, shapes = new_world()
            pan_offset = 0.0
        if t > 0 and not still:
            for shape in shapes:
                _move(shape, scene)
            pan_offset += scene.pan
        shake = rng.uniform(-scene.jitter, scene.jitter, size=2) if scene.jitter and not still else (0.0, 0.0)
        oy = int(round(margin + shake[0]))
        ox = int(round(margin + shake[1] + pan_offset - abs(scene.pan) * scene.frames / 2))
        ox = min(max(ox, 0), 2 * margin)
        image = background[:, oy:oy + scene.height, ox:ox + scene.width].copy()
        for i, shape in enumerate(shapes):
            mask = _shape_mask(SHAPES[shape.kind], yy, xx, shape.y, shape.x, shape.radius, shape.angle)
            image[:, mask] = shape.color[:, None]
            centers[t, i] = (shape.y, shape.x)
            kind_table[t, i] = shape.kind
        image *= 1.0 + scene.drift * t
        if scene.noise_std and not still:
            noise = rng.normal(0, scene.noise_std, size=image.shape).astype(np.float32)
        frames[t] = np.clip(image + noise, 0, 255).round().astype(np.uint8)
    return Clip(frames=frames, centers=centers, kinds=kind_table)


def keypoint_heatmaps(clip: Clip, sigma: float = 2.0, stride: int = 1) -> np.ndarray:
    """Pose-like targets: one Gaussian heatmap channel per shape kind, [T, len(SHAPES), H/s, W/s]."""
    t_count, _, height, width = clip.frames.shape
    h, w = height // stride, width // stride
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    maps = np.zeros((t_count, len(SHAPES), h, w), np.float32)
    for t in range(t_count):
        for (cy, cx), kind in zip(clip.centers[t], clip.kinds[t]):
            if np.isnan(cy):
                continue
            g = np.exp(-((yy - cy / stride) ** 2 + (xx - cx / stride) ** 2) / (2 * sigma**2))
            g[g < 1e-4] = 0.0  # no denormal tails: they make float32 training crawl
            maps[t, kind] = np.maximum(maps[t, kind], g)
    return maps
