"""Procedural coloured shapes: labels, captions, segmentation masks and attributes, no download.

Image ``i`` of a split is a pure function of ``(seed, split, i)``: a numpy ``Generator`` seeded from
those draws a resolution-independent *scene* (shapes in normalised coordinates plus a background),
and the scene is rasterised at ``resolution`` with box-filtered supersampling (anti-aliasing). The
same scene therefore exists at every resolution, which is what a downsampling-factor sweep wants.

Fine detail an f=16/f=32 autoencoder should visibly lose: a thin dark outline on every shape,
optional diagonal stripes or a lattice of spots inside it, and a background made of a colour
gradient plus a faint sinusoidal grating.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from latentgen.data.base import PURPOSE_SCENE, SPLIT_CODE, ImageDataset
from latentgen.data.transforms import match_channels, to_tensor
from latentgen.errors import ConfigError

# Bump when the scene sampling or the rasteriser changes what image i looks like.
SCENE_VERSION = 1

KINDS = ("circle", "square", "triangle", "star", "cross", "ring")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.15, 0.12),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.40, 0.98),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.90, 0.20, 0.85),
    "cyan": (0.10, 0.85, 0.90),
    "white": (0.95, 0.95, 0.95),
}
COLOUR_NAMES = tuple(COLOURS)
_COLOUR_RGB = np.array(list(COLOURS.values()), dtype=np.float32)  # (num_colours, 3)
SIZES = ("small", "medium", "large")
_SIZE_RADIUS = (0.085, 0.12, 0.155)  # shape radius as a fraction of the image side
POSITIONS = (
    "top left", "top center", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom center", "bottom right",
)  # fmt: skip
PATTERNS = ("plain", "striped", "spotted")

#: Every attribute a classifier can be trained on, with its class names.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "kind": KINDS,
    "colour": COLOUR_NAMES,
    "size": SIZES,
    "position": POSITIONS,
    "pattern": PATTERNS,
}

_CELL = 1.0 / 3.0  # grid cell side (normalised)
_EXTENT = 1.07  # farthest point of any shape from its centre, in units of its radius (square corner)
_OUTLINE = 0.16  # outline width in units of the radius


@dataclass(frozen=True)
class ShapeSpec:
    """One shape of a scene; coordinates are fractions of the image side (x right, y down)."""

    kind: int
    colour: int
    size: int
    position: int
    pattern: int
    cx: float
    cy: float
    radius: float
    angle: float  # rotation in radians (small: about +-20 degrees)
    brightness: float


@dataclass(frozen=True)
class Scene:
    shapes: tuple[ShapeSpec, ...]
    bg_from: tuple[float, float, float]
    bg_to: tuple[float, float, float]
    bg_angle: float
    grating_freq: float  # cycles per image side
    grating_angle: float
    grating_phase: float


def sample_scene(rng: np.random.Generator, max_shapes: int) -> Scene:
    """Draw a scene. The order of the draws defines the dataset: change it only with SCENE_VERSION."""
    n = int(rng.integers(1, max_shapes + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    shapes = []
    for cell in cells:
        kind = int(rng.integers(len(KINDS)))
        colour = int(rng.integers(len(COLOUR_NAMES)))
        size = int(rng.integers(len(SIZES)))
        pattern = int(rng.integers(len(PATTERNS)))
        radius = _SIZE_RADIUS[size]
        # jitter inside the cell so that the shape never leaves it (no overlaps between shapes)
        slack = max(0.0, 0.5 * _CELL - _EXTENT * radius)
        jx, jy = rng.uniform(-0.8, 0.8, size=2) * slack
        row, col = divmod(int(cell), 3)
        angle = float(rng.uniform(-0.35, 0.35))  # about +-20 degrees
        brightness = float(rng.uniform(0.8, 1.0))
        shapes.append(
            ShapeSpec(
                kind=kind,
                colour=colour,
                size=size,
                position=int(cell),
                pattern=pattern,
                cx=(col + 0.5) * _CELL + float(jx),
                cy=(row + 0.5) * _CELL + float(jy),
                radius=radius,
                angle=angle,
                brightness=brightness,
            )
        )
    bg = rng.uniform(0.06, 0.42, size=(2, 3))
    bg = 0.5 * bg + 0.5 * bg.mean(axis=1, keepdims=True)  # (2, 3): halve the saturation
    bg_from, bg_to = bg
    return Scene(
        shapes=tuple(shapes),
        bg_from=tuple(float(c) for c in bg_from),
        bg_to=tuple(float(c) for c in bg_to),
        bg_angle=float(rng.uniform(0.0, 2 * math.pi)),
        grating_freq=float(rng.uniform(3.0, 7.0)),
        grating_angle=float(rng.uniform(0.0, math.pi)),
        grating_phase=float(rng.uniform(0.0, 2 * math.pi)),
    )


def describe(shape: ShapeSpec) -> str:
    """'a small striped red circle at the top left' (the pattern word only when not plain)."""
    words = [SIZES[shape.size]]
    if PATTERNS[shape.pattern] != "plain":
        words.append(PATTERNS[shape.pattern])
    words += [COLOUR_NAMES[shape.colour], KINDS[shape.kind]]
    return f"a {' '.join(words)} at the {POSITIONS[shape.position]}"


def caption(scene: Scene) -> str:
    return " and ".join(describe(s) for s in scene.shapes)


# ----------------------------------------------------------------------------------------------
# Signed distances in a shape's local frame: (u, v) in units of its radius, v pointing down.
# Negative inside. Exact inside the shape (where the outline is measured), approximate outside.


def _sdf_circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - 1.0


def _sdf_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) - 0.75


_TRI_NORMALS = [(math.sin(a), math.cos(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]


def _sdf_triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # equilateral, apex up, inscribed in the unit circle: every edge lies at distance 0.5
    d = _TRI_NORMALS[0][0] * u + _TRI_NORMALS[0][1] * v
    for nx, ny in _TRI_NORMALS[1:]:
        d = np.maximum(d, nx * u + ny * v)
    return d - 0.5


_STAR_POINTS = 5
_STAR_INNER = 0.45
_STAR_SECTOR = 2 * math.pi / _STAR_POINTS
# Folded frame: the tip A = (1, 0), the neighbouring inner vertex B at angle pi/5.
_STAR_A = np.array([1.0, 0.0])
_STAR_B = _STAR_INNER * np.array([math.cos(_STAR_SECTOR / 2), math.sin(_STAR_SECTOR / 2)])
_star_edge = _STAR_B - _STAR_A
_STAR_N = np.array([_star_edge[1], -_star_edge[0]]) / np.linalg.norm(_star_edge)
if float(_STAR_N @ (-_STAR_A)) > 0:  # make the normal point away from the centre
    _STAR_N = -_STAR_N


def _sdf_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u) + math.pi / 2  # 0 at the top tip (screen up is -v)
    phi = np.mod(phi, _STAR_SECTOR)
    phi = np.minimum(phi, _STAR_SECTOR - phi)  # fold onto [0, pi/5]
    qx, qy = rho * np.cos(phi), rho * np.sin(phi)
    return _STAR_N[0] * (qx - _STAR_A[0]) + _STAR_N[1] * (qy - _STAR_A[1])


def _sdf_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    arm_h = np.maximum(au - 0.9, av - 0.28)
    arm_v = np.maximum(au - 0.28, av - 0.9)
    return np.minimum(arm_h, arm_v)


def _sdf_ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(u, v) - 0.775) - 0.225


_SDF = {
    "circle": _sdf_circle,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "star": _sdf_star,
    "cross": _sdf_cross,
    "ring": _sdf_ring,
}
_SDF_BY_KIND = tuple(_SDF[k] for k in KINDS)


def _render_background(scene: Scene, size: int) -> np.ndarray:
    """Gradient plus a faint grating, sampled at pixel centres: ``(size, size, 3)`` float32."""
    p = (np.arange(size, dtype=np.float32) + 0.5) / size  # (S,) pixel centres in [0, 1]
    x, y = p[None, :], p[:, None]  # (1, S), (S, 1)
    ca, sa = math.cos(scene.bg_angle), math.sin(scene.bg_angle)
    t = np.clip((x - 0.5) * ca + (y - 0.5) * sa + 0.5, 0.0, 1.0)  # (S, S)
    c0 = np.asarray(scene.bg_from, dtype=np.float32)
    c1 = np.asarray(scene.bg_to, dtype=np.float32)
    img = c0 + (c1 - c0) * t[:, :, None]  # (S, S, 3)
    cg, sg = math.cos(scene.grating_angle), math.sin(scene.grating_angle)
    phase = 2 * math.pi * scene.grating_freq * (x * cg + y * sg) + scene.grating_phase  # (S, S)
    img += 0.02 * np.sin(phase)[:, :, None]
    return img.astype(np.float32)


def _render_shape(canvas: np.ndarray, mask: np.ndarray, shape: ShapeSpec, ss: int) -> None:
    """Composite one shape into ``canvas`` (S, S, 3) and ``mask`` (S, S) in place."""
    size = canvas.shape[0]
    r = shape.radius * size  # radius in pixels
    cx, cy = shape.cx * size, shape.cy * size
    ext = _EXTENT * r + 1.0
    x0, x1 = max(0, math.floor(cx - ext)), min(size, math.ceil(cx + ext))
    y0, y1 = max(0, math.floor(cy - ext)), min(size, math.ceil(cy + ext))
    h, w = y1 - y0, x1 - x0
    if h <= 0 or w <= 0:
        return
    offs = (np.arange(ss, dtype=np.float64) + 0.5) / ss  # (ss,) sub-sample offsets in a pixel
    ys = (np.arange(y0, y1, dtype=np.float64)[:, None] + offs[None, :]).reshape(-1)  # (h*ss,)
    xs = (np.arange(x0, x1, dtype=np.float64)[:, None] + offs[None, :]).reshape(-1)  # (w*ss,)
    dx = ((xs - cx) / r)[None, :]  # (1, w*ss)
    dy = ((ys - cy) / r)[:, None]  # (h*ss, 1)
    # rotate the sample points into the shape's frame
    ca, sa = math.cos(shape.angle), math.sin(shape.angle)
    u = ca * dx - sa * dy  # (h*ss, w*ss)
    v = sa * dx + ca * dy  # (h*ss, w*ss)
    sdf = _SDF_BY_KIND[shape.kind](u, v)
    inside = sdf <= 0.0

    base = _COLOUR_RGB[shape.colour] * shape.brightness  # (3,)
    col = np.broadcast_to(base, u.shape + (3,)).copy()  # (h*ss, w*ss, 3)
    pattern = PATTERNS[shape.pattern]
    if pattern == "striped":
        stripes = np.mod((u + v) * 2.2, 1.0) < 0.5  # diagonal stripes, period ~0.32 r
        col[stripes] = 0.55 * base
    elif pattern == "spotted":
        fu, fv = np.mod(u / 0.42, 1.0) - 0.5, np.mod(v / 0.42, 1.0) - 0.5
        spots = fu * fu + fv * fv < 0.28**2
        col[spots] = 1.0 - 0.8 * base
    outline = sdf > -_OUTLINE
    col[outline] = 0.35 * base

    cov_s = inside.astype(np.float32)  # (h*ss, w*ss)
    prem = col * cov_s[:, :, None]  # premultiplied colour
    cov = cov_s.reshape(h, ss, w, ss).mean(axis=(1, 3))  # (h*ss, w*ss) -> (h, w) coverage
    prem = prem.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))  # (h*ss, w*ss, 3) -> (h, w, 3)
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - cov[:, :, None]
    region += prem
    mask[y0:y1, x0:x1][cov >= 0.5] = shape.kind + 1


def render_scene(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise ``scene``: uint8 ``(S, S, 3)`` RGB and uint8 ``(S, S)`` mask (0 background, kind+1)."""
    ss = 4 if size <= 128 else 2
    canvas = _render_background(scene, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    for shape in scene.shapes:
        _render_shape(canvas, mask, shape, ss)
    image = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
    return image, mask


class ShapesDataset(ImageDataset):
    """Procedural coloured shapes with ``image``, ``label`` (kind of the first shape), ``caption``, ``mask``.

    Args:
        resolution, channels, split, seed: see :class:`ImageDataset`. Image ``i`` of ``split``
            depends only on ``(seed, split, i)`` (and ``resolution``/``channels`` for the raster).
        num_train, num_val: number of images of each split.
        max_shapes: 1..9 shapes per image (uniform), each in its own cell of a 3x3 grid.
        cache: keep rendered images in memory (per process) once drawn; switched off above
            ``cache_max_mb`` of uint8 pixels.
        return_attributes: add ``"attributes"``: a dict of int64 scalars (kind, colour, size,
            position, pattern of the first shape, and num_shapes) for attribute classifiers.
    """

    def __init__(
        self,
        resolution: int = 32,
        channels: int = 3,
        split: str = "train",
        seed: int = 0,
        num_train: int = 5000,
        num_val: int = 500,
        max_shapes: int = 1,
        cache: bool = True,
        cache_max_mb: float = 512.0,
        return_attributes: bool = False,
    ) -> None:
        super().__init__(resolution=resolution, channels=channels, split=split, seed=seed)
        for key, value in (("num_train", num_train), ("num_val", num_val)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"ShapesDataset: data.dataset.{key}={value!r} must be a positive integer.")
        if isinstance(max_shapes, bool) or not isinstance(max_shapes, (int, np.integer)) or not 1 <= max_shapes <= 9:
            raise ConfigError(
                f"ShapesDataset: data.dataset.max_shapes={max_shapes!r} must be an integer in 1..9 "
                "(one shape per cell of the 3x3 grid)."
            )
        self.num_train, self.num_val = int(num_train), int(num_val)
        self.max_shapes = int(max_shapes)
        self.return_attributes = bool(return_attributes)
        self.num_classes = len(KINDS)
        self.class_names = list(KINDS)
        self._length = self.num_train if self.split == "train" else self.num_val
        bytes_per_image = self.resolution**2 * (self.channels + 1)
        self.cache = bool(cache) and self._length * bytes_per_image <= cache_max_mb * 2**20
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self._length

    def scene(self, index: int) -> Scene:
        """The scene of image ``index`` (cheap: no rendering)."""
        if not 0 <= index < self._length:
            raise IndexError(f"ShapesDataset[{self.split}]: index {index} out of range for length {self._length}")
        rng = np.random.default_rng([PURPOSE_SCENE, SCENE_VERSION, self.seed, SPLIT_CODE[self.split], index])
        return sample_scene(rng, self.max_shapes)

    def attributes(self, index: int) -> dict[str, Any]:
        """Attributes of image ``index``: the first shape's indices at top level, every shape under "shapes".

        Keys: kind, colour, size, position, pattern (indices into ``ATTRIBUTES[key]``), num_shapes,
        caption, and shapes (a list of dicts that also carry ``*_name`` strings and the geometry).
        """
        scene = self.scene(index)
        shapes = []
        for s in scene.shapes:
            d = asdict(s)
            for key, names in ATTRIBUTES.items():
                d[f"{key}_name"] = names[d[key]]
            shapes.append(d)
        main = scene.shapes[0]
        out: dict[str, Any] = {key: getattr(main, key) for key in ATTRIBUTES}
        out.update(num_shapes=len(scene.shapes), caption=caption(scene), shapes=shapes)
        return out

    def _rendered(self, index: int, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(index) if self.cache else None
        if hit is not None:
            return hit
        rgb, mask = render_scene(scene, self.resolution)
        image = match_channels(rgb, self.channels)  # (S, S, 3) -> (S, S, C)
        if self.cache:
            self._cache[index] = (image, mask)
        return image, mask

    def _get(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        scene = self.scene(index)
        image, mask = self._rendered(index, scene)
        main = scene.shapes[0]
        sample: dict[str, Any] = {
            "image": to_tensor(image),
            "label": torch.tensor(main.kind, dtype=torch.int64),
            "caption": caption(scene),
            "mask": torch.from_numpy(mask.astype(np.int64)),
        }
        if self.return_attributes:
            attrs = {key: torch.tensor(getattr(main, key), dtype=torch.int64) for key in ATTRIBUTES}
            attrs["num_shapes"] = torch.tensor(len(scene.shapes), dtype=torch.int64)
            sample["attributes"] = attrs
        return sample
