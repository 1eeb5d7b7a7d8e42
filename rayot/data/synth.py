"""The embedded demo world: colour x shape images, a benchmark in the layout of the real ones and pre-training captions.

Every class is a composition such as "red circle". The class order puts a checkerboard half of
the colour x shape grid first, so that the protocol's base/novel rule (sorted labels, first half
base; docs/protocol.md §3) gives two halves in which every colour and every shape occurs: each novel
class shares its colour and its shape with base classes, as CLIP has seen the words of the novel
class names in pre-training.

Two kinds of images come from separate random streams:

- pre-training images (:func:`pretrain_batch`): one object of any class on a plain, noisy grey
  background, captioned with its class ("a photo of a red circle.");
- benchmark images (:func:`write_synthetic`): fainter, noisier objects, and for the base classes
  only a colour cast: the object colour is blended a fraction ``cast`` of the way towards the
  next colour of the world's colour cycle (red -> orange -> yellow -> green -> blue -> purple ->
  red). The cast lowers zero-shot base accuracy and can be learned from the base classes' few
  shots; undoing it is the class-specific adaptation that prompt learning overfits to, and it
  miscolours the novel classes' images, which have no cast. That is the forgetting a regulariser toward the frozen features is
  meant to prevent (docs/demo-world.md has the measured effect).

Images are rendered with NumPy, vectorised over a batch and anti-aliased by supersampling.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayot.errors import DataError

logger = logging.getLogger(__name__)

DATASET_FOLDER = "synthetic"
IMAGE_ROOT = "images"
SPLIT_FILE = "split_rayot_Synthetic.json"

# RGB in [0, 1], in hue order: the colour cycle of the cast follows a world's colours in this order.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.96, 0.55, 0.08),
    "yellow": (0.92, 0.88, 0.12),
    "green": (0.15, 0.68, 0.22),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.14, 0.32, 0.90),
    "purple": (0.58, 0.20, 0.78),
    "pink": (0.98, 0.52, 0.78),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")

# Captions of pre-training images; the first is the benchmark's template (docs/protocol.md §7).
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "{}",
    "a picture of a {}.",
    "a small {}.",
    "an image of a {}.",
)

DEFAULT_CAST = 0.4

# Streams of np.random.SeedSequence([seed, stream]): the benchmark splits and pre-training never
# share a generator, so pre-training never sees a benchmark image.
_STREAM_SPLIT = {"train": 1, "val": 2, "test": 3}
_STREAM_PRETRAIN = 7
_CHUNK = 128  # images whose supersampled masks are computed at once


@dataclass(frozen=True)
class World:
    """The classes of the demo world: every combination of ``colours`` and ``shapes``.

    Label order: the combinations (c, s) with c + s even (indices into ``colours`` and
    ``shapes``), then the others, each in colour-major order. The first ``n_base`` labels are
    the protocol's base half. ``colours`` are in cast-cycle order.
    """

    colours: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")

    def __post_init__(self) -> None:
        unknown = [c for c in self.colours if c not in COLOURS]
        unknown += [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise DataError(
                f"synthetic world: unknown colour/shape {', '.join(map(repr, unknown))}; "
                f"colours are {', '.join(COLOURS)}, shapes {', '.join(SHAPES)}"
            )
        if len(self.colours) < 2 or len(self.shapes) < 2:
            raise DataError("synthetic world: needs at least 2 colours and 2 shapes")
        if len(set(self.colours)) != len(self.colours) or len(set(self.shapes)) != len(self.shapes):
            raise DataError("synthetic world: colours and shapes must not repeat")

    @property
    def combos(self) -> list[tuple[int, int]]:
        """(colour index, shape index) of each label, in label order."""
        grid = [(c, s) for c in range(len(self.colours)) for s in range(len(self.shapes))]
        return [cs for cs in grid if sum(cs) % 2 == 0] + [cs for cs in grid if sum(cs) % 2 == 1]

    @property
    def classnames(self) -> list[str]:
        """Class name of each label, "<colour> <shape>"."""
        return [f"{self.colours[c]} {self.shapes[s]}" for c, s in self.combos]

    @property
    def n_classes(self) -> int:
        return len(self.colours) * len(self.shapes)

    @property
    def n_base(self) -> int:
        """Size of the base half, ceil(n / 2) as in docs/protocol.md §3."""
        return math.ceil(self.n_classes / 2)


DEFAULT_WORLD = World()


@dataclass(frozen=True)
class Style:
    """Ranges the per-image factors are drawn from (uniformly), in image units.

    ``radius``: the object's radius as a fraction of the image side; ``opacity``: its alpha over
    the background; ``noise``: the std of the Gaussian pixel noise; ``colour_jitter``: the std
    of a per-channel multiplicative factor on the object colour; ``background``: the grey level
    of the background; ``rotation``: the largest rotation of the object, in degrees.
    """

    radius: tuple[float, float]
    opacity: tuple[float, float]
    noise: tuple[float, float]
    colour_jitter: float
    background: tuple[float, float]
    rotation: float


# Pre-training: objects of every size, mostly clear.
PRETRAIN_STYLE = Style(
    radius=(0.14, 0.40), opacity=(0.55, 1.0), noise=(0.0, 0.12), colour_jitter=0.10,
    background=(0.15, 0.85), rotation=15.0,
)
# Benchmark: large objects, as photos of a dataset frame their object, but faint and noisy.
BENCHMARK_STYLE = Style(
    radius=(0.25, 0.40), opacity=(0.45, 0.75), noise=(0.08, 0.14), colour_jitter=0.12,
    background=(0.30, 0.70), rotation=15.0,
)


def _shape_masks(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-masks (N, S, S) of shape indices ``shape`` (N,) at local coordinates ``u, v``.

    Coordinates are in units of the object radius, the object centred at the origin.
    """
    r = np.hypot(u, v)
    out = np.zeros(u.shape, dtype=bool)
    for k, name in enumerate(SHAPES):
        sel = shape == k
        if not sel.any():
            continue
        uu, vv, rr = u[sel], v[sel], r[sel]
        if name == "circle":
            m = rr <= 1.0
        elif name == "square":
            m = np.maximum(np.abs(uu), np.abs(vv)) <= 0.85
        elif name == "triangle":
            # Equilateral, circumradius 1.2: inside the three edges at distance 0.6 from the centre.
            m = np.ones(uu.shape, dtype=bool)
            for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
                m &= -(uu * np.cos(angle) + vv * np.sin(angle)) <= 0.6
        elif name == "cross":
            m = ((np.abs(uu) <= 0.34) & (np.abs(vv) <= 1.0)) | (
                (np.abs(vv) <= 0.34) & (np.abs(uu) <= 1.0)
            )
        elif name == "ring":
            m = (rr <= 1.0) & (rr >= 0.55)
        else:  # star: five points, |cos(2.5 theta)| peaks every 72 degrees
            theta = np.arctan2(vv, uu)
            m = rr <= 0.4 + 0.7 * np.abs(np.cos(2.5 * theta)) ** 2
        out[sel] = m
    return out


def render(
    labels: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    *,
    world: World = DEFAULT_WORLD,
    style: Style = PRETRAIN_STYLE,
    cast: Sequence[float] | np.ndarray | float = 0.0,
    size: int = 32,
    supersample: int = 4,
) -> np.ndarray:
    """Render one image per label: (N, size, size, 3) uint8 RGB.

    ``cast`` (scalar or (N,)) blends each object's colour that fraction of the way towards the
    next colour of ``world.colours`` (cyclically); negative values blend towards the previous
    one. All randomness comes from ``rng``: the same generator state renders the same images.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n and (labels.min() < 0 or labels.max() >= world.n_classes):
        raise ValueError(f"labels must be in [0, {world.n_classes}), got {labels.min()}..{labels.max()}")
    cast = np.broadcast_to(np.asarray(cast, dtype=np.float32), (n,))
    if n and np.abs(cast).max() > 1:
        raise ValueError(f"cast must be in [-1, 1], got {np.abs(cast).max()}")
    combos = np.asarray(world.combos, dtype=np.int64)  # (n_classes, 2)
    colour_of = combos[labels, 0]  # (N,) index into world.colours
    shape_idx = np.array([SHAPES.index(s) for s in world.shapes])[combos[labels, 1]]

    def draw(bounds: tuple[float, float]) -> np.ndarray:
        return rng.uniform(bounds[0], bounds[1], size=n).astype(np.float32)

    radius = draw(style.radius) * size  # (N,) pixels
    cx = rng.uniform(radius, size - radius).astype(np.float32)
    cy = rng.uniform(radius, size - radius).astype(np.float32)
    angle = np.deg2rad(rng.uniform(-style.rotation, style.rotation, size=n)).astype(np.float32)
    opacity = draw(style.opacity)
    noise_std = draw(style.noise)
    grey = draw(style.background)

    palette = np.array([COLOURS[c] for c in world.colours], dtype=np.float32)  # (n_colours, 3)
    step = np.where(cast >= 0, 1, -1)
    colour = (1 - np.abs(cast))[:, None] * palette[colour_of] + np.abs(cast)[:, None] * palette[
        (colour_of + step) % len(world.colours)
    ]  # (N, 3)
    colour = colour * (1 + style.colour_jitter * rng.standard_normal((n, 3)).astype(np.float32))

    # Object coverage: supersampled inside-mask, box-filtered to the pixel grid; in chunks, so
    # that memory stays bounded for large batches (no random draws in here).
    fine = (np.arange(size * supersample, dtype=np.float32) + 0.5) / supersample  # pixel units
    cover = np.empty((n, size, size), dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        dx = fine[None, None, :] - cx[sl, None, None]  # (n, 1, S)
        dy = fine[None, :, None] - cy[sl, None, None]  # (n, S, 1)
        cos, sin = np.cos(angle[sl])[:, None, None], np.sin(angle[sl])[:, None, None]
        u = (dx * cos + dy * sin) / radius[sl, None, None]  # (n, S, S)
        v = (-dx * sin + dy * cos) / radius[sl, None, None]
        inside = _shape_masks(shape_idx[sl], u, v).astype(np.float32)
        cover[sl] = inside.reshape(len(u), size, supersample, size, supersample).mean(axis=(2, 4))

    alpha = (cover * opacity[:, None, None])[..., None]  # (N, H, W, 1)
    image = grey[:, None, None, None] * (1 - alpha) + colour[:, None, None, :] * alpha
    image += noise_std[:, None, None, None] * rng.standard_normal(image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def captions(labels: Sequence[int] | np.ndarray, rng: np.random.Generator, *,
             world: World = DEFAULT_WORLD) -> list[str]:
    """A caption per label, each from a random template of :data:`CAPTION_TEMPLATES`."""
    names = world.classnames
    picks = rng.integers(0, len(CAPTION_TEMPLATES), size=len(labels))
    return [CAPTION_TEMPLATES[t].format(names[int(y)]) for y, t in zip(labels, picks, strict=True)]


def pretrain_rng(seed: int) -> np.random.Generator:
    """The generator of pre-training images, a stream that no benchmark split uses."""
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM_PRETRAIN]))


def pretrain_batch(
    rng: np.random.Generator, batch_size: int, *, world: World = DEFAULT_WORLD, size: int = 32
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Captioned pre-training images, classes drawn uniformly from the whole world.

    Returns images (B, size, size, 3) uint8, B captions and labels (B,) int64. No cast.
    """
    labels = rng.integers(0, world.n_classes, size=batch_size)
    images = render(labels, rng, world=world, style=PRETRAIN_STYLE, size=size)
    return images, captions(labels, rng, world=world), labels


def render_split(
    split: str,
    seed: int,
    per_class: int,
    *,
    world: World = DEFAULT_WORLD,
    cast: float = DEFAULT_CAST,
    size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Benchmark images of one split: images (N, size, size, 3) uint8 and labels (N,), label-major.

    Base classes (label < ``world.n_base``) get the colour ``cast``, novel ones none. Each split
    has its own stream of ``seed``: the same arguments give the same images.
    """
    if split not in _STREAM_SPLIT:
        raise ValueError(f"split must be one of {', '.join(_STREAM_SPLIT)}, got {split!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_SPLIT[split]]))
    labels = np.repeat(np.arange(world.n_classes), per_class)
    casts = np.where(labels < world.n_base, cast, 0.0)
    images = render(labels, rng, world=world, style=BENCHMARK_STYLE, cast=casts, size=size)
    return images, labels


def write_synthetic(
    root: str | Path,
    *,
    seed: int = 0,
    world: World = DEFAULT_WORLD,
    n_train: int = 32,
    n_val: int = 8,
    n_test: int = 40,
    cast: float = DEFAULT_CAST,
    size: int = 32,
    image_format: str = "png",
    overwrite: bool = False,
) -> Path:
    """Write the demo benchmark under ``root/synthetic`` and return that folder.

    Layout (docs/protocol.md §1): ``images/<class_name>/<split>_<i>.<ext>`` and
    ``split_rayot_Synthetic.json`` = {"train", "val", "test"}, each a list of [path under
    images/, label, class name], label-major; ``n_train``/``n_val``/``n_test`` images per class.
    Deterministic for a seed (PNG; JPEG bytes depend on the Pillow version). An existing
    non-empty folder is replaced only with ``overwrite``. Raises DataError for bad arguments.
    """
    if image_format not in ("png", "jpg"):
        raise DataError(f"synthetic data: image format must be 'png' or 'jpg', got {image_format!r}")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    bad = [f"{k}={v!r}" for k, v in counts.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise DataError(f"synthetic data: images per class must be positive ints ({', '.join(bad)})")
    if not 0 <= cast <= 1:
        raise DataError(f"synthetic data: cast must be in [0, 1], got {cast!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"synthetic data root {root} is a file, not a folder")
    folder = root / DATASET_FOLDER
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise DataError(
                f"synthetic data folder {folder} exists and is not empty; rewrite it with "
                "overwrite=True (rayot data synth --overwrite)"
            )
        shutil.rmtree(folder / IMAGE_ROOT, ignore_errors=True)
        (folder / SPLIT_FILE).unlink(missing_ok=True)

    from PIL import Image  # Pillow only when files are written

    names = world.classnames
    dirs = [name.replace(" ", "_") for name in names]
    for d in dirs:
        (folder / IMAGE_ROOT / d).mkdir(parents=True, exist_ok=True)
    split: dict[str, list[list[object]]] = {}
    for name, per_class in counts.items():
        images, labels = render_split(name, seed, per_class, world=world, cast=cast, size=size)
        entries: list[list[object]] = []
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            rel = f"{dirs[label]}/{name}_{i % per_class:04d}.{image_format}"
            Image.fromarray(image).save(folder / IMAGE_ROOT / rel)
            entries.append([rel, int(label), names[label]])
        split[name] = entries
    (folder / SPLIT_FILE).write_text(json.dumps(split) + "\n")
    logger.info("wrote %d synthetic classes (%d base) to %s", len(names), world.n_base, folder)
    return folder
