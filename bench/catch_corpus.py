"""A generated, deterministic corpus of render regressions that sampling noise hides (issue 13).

Procedural scenes (gradients and shapes, fine textures, bricks, marble, woven cloth) are "rendered"
as the clean image plus Gaussian sampling noise of the scene's level (sigma 6-14 on 8-bit), one seed
per render: the reference, good re-renders for calibration, more good ones for testing, and ten
regressions, each a good render damaged in a known box. The sizes the issue gives are for a 1024px
frame and scale with the image, so a 256px corpus is the same scenes with the same damage.

    write_corpus(folder, size=256, scenes=3, calib=3, test=3)

writes ref/, good_calib_{k}/, good_test_{k}/ and one folder per regression class, each holding
scene_{i}.png, and manifest.json with the damage boxes ([x, y, w, h], null for whole-frame damage).
Only numpy and Pillow: the light test level imports it without torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # x, y, w, h in image pixels
Damage = Callable[["Scene", np.ndarray, np.random.Generator], tuple[np.ndarray, Box | None]]

FULL_SIZE = 1024  # the frame size the damage sizes are given for
SIGMAS = (6.0, 14.0, 10.0, 8.0)  # sampling noise per scene, on 8-bit values; 4 levels over 5 kinds: every pairing
REF_SEED, CALIB_SEED, TEST_SEED, REGRESSION_SEED = 0, 1, 101, 201  # render seeds: calib < 100 renders
MAGENTA = (255, 0, 255)  # how an 8-bit render shows a NaN
HOT = 255  # a firefly: a sample far above anything the light could give


def scaled(px_at_full: int, size: int, minimum: int = 2) -> int:
    """A length given for a 1024px frame, at `size` (never below `minimum`)."""
    return max(minimum, round(px_at_full * size / FULL_SIZE))


@dataclass(frozen=True)
class Scene:
    index: int
    seed: int
    kind: str
    sigma: float
    without_prop: np.ndarray  # float32 HxWx3, 0..255: everything but the prop
    prop_mask: np.ndarray  # bool HxW: the object the missing-object regression removes
    clean: np.ndarray  # float32 HxWx3: the noiseless image

    @property
    def size(self) -> int:
        return self.clean.shape[0]

    def render(self, render_seed: int) -> np.ndarray:
        """The clean image plus this render's sampling noise, as 8-bit RGB."""
        return self.noisy(self.clean, np.random.default_rng([self.seed, self.index, render_seed]))

    def noisy(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _to_uint8(clean + rng.normal(0.0, self.sigma, clean.shape))


# --- scenes -----------------------------------------------------------------------------------------

def _value_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth noise in [0, 1], `cells` lattice cells across the frame (so the same at any size)."""
    lattice = rng.random((cells + 1, cells + 1, channels))
    at = np.linspace(0.0, cells, size, endpoint=False)
    low = at.astype(int)
    t = at - low
    t = t * t * (3 - 2 * t)
    rows = lattice[low] * (1 - t)[:, None, None] + lattice[low + 1] * t[:, None, None]
    return rows[:, low] * (1 - t)[None, :, None] + rows[:, low + 1] * t[None, :, None]


def _fbm(rng: np.random.Generator, size: int, cells: int, octaves: int, channels: int = 1) -> np.ndarray:
    """Fractal noise in [0, 1]: octaves of value noise, each twice as fine and half as strong."""
    total, weight = np.zeros((size, size, channels)), 0.0
    for octave in range(octaves):
        amplitude = 0.5**octave
        total += amplitude * _value_noise(rng, size, cells * 2**octave, channels)
        weight += amplitude
    return total / weight


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the frame: scenes scale with the size."""
    at = (np.arange(size) + 0.5) / size
    return np.meshgrid(at, at, indexing="ij")  # y, x


def _colour(rng: np.random.Generator, low: float = 40, high: float = 215) -> np.ndarray:
    return rng.uniform(low, high, 3)


def _sky(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradients: a vertical sky blend, a horizontal tint and faint clouds."""
    y, x = _grid(size)
    top, bottom, tint = _colour(rng), _colour(rng), rng.uniform(-25, 25, 3)
    base = top * (1 - y[..., None]) + bottom * y[..., None] + tint * (x[..., None] - 0.5)
    return base + 30 * (_fbm(rng, size, 3, 3) - 0.5)


def _stone(rng: np.random.Generator, size: int) -> np.ndarray:
    """A fine colour texture: fractal noise down to a few pixels per cell at 1024."""
    grain = _fbm(rng, size, 4, 7, channels=3)
    return _colour(rng, 60, 190) + 150 * (grain - 0.5)


def _bricks(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bricks with mortar lines, a colour per brick and a fine grain."""
    y, x = _grid(size)
    rows = 12
    row = np.floor(y * rows).astype(int)
    u = x * rows / 2 + 0.5 * (row % 2)
    column = np.floor(u).astype(int)
    mortar = ((y * rows) % 1 < 0.12) | (u % 1 < 0.06)
    tones = rng.uniform(0.7, 1.2, (rows + 1, rows + 2, 1))
    brick = _colour(rng, 110, 200) * tones[row, column]
    grain = 50 * (_fbm(rng, size, 32, 3) - 0.5)
    return np.where(mortar[..., None], _colour(rng, 50, 90), brick + grain)


def _marble(rng: np.random.Generator, size: int) -> np.ndarray:
    """Veins: a sine warped by fractal noise."""
    y, x = _grid(size)
    turbulence = _fbm(rng, size, 4, 5)[..., 0]
    veins = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * x + 2 * y + 2.5 * turbulence))
    dark, light = _colour(rng, 40, 100), _colour(rng, 160, 220)
    return dark + (light - dark) * veins[..., None] ** 0.6


def _cloth(rng: np.random.Generator, size: int) -> np.ndarray:
    """Woven threads: fine crossing gratings over a soft colour gradient."""
    y, x = _grid(size)
    threads = 80
    weave = np.sin(np.pi * threads * x) * np.sin(np.pi * threads * y)
    base = _colour(rng, 70, 170) + 40 * (x[..., None] - 0.5)
    return base + 35 * weave[..., None] + 25 * (_fbm(rng, size, 6, 2) - 0.5)


KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "sky": _sky, "stone": _stone, "bricks": _bricks, "marble": _marble, "cloth": _cloth,
}


def _shape(rng: np.random.Generator, size: int, radius: float, centre: tuple[float, float]) -> np.ndarray:
    """A disc or a square of the given radius in pixels."""
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    cy, cx = centre
    if rng.random() < 0.5:
        return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
    return (np.abs(rows - cy) <= radius) & (np.abs(cols - cx) <= radius)


def _shaded(colour: np.ndarray, size: int) -> np.ndarray:
    """A flat colour lit from the top: shapes have a gradient of their own."""
    y, _x = _grid(size)
    return colour * (1.15 - 0.3 * y[..., None])


def make_scene(index: int, *, size: int = 256, seed: int = 0) -> Scene:
    """Scene `index` of corpus `seed`: its kind and noise level cycle with the index."""
    rng = np.random.default_rng([seed, index])
    kind = list(KINDS)[index % len(KINDS)]
    image = KINDS[kind](rng, size)
    for _ in range(int(rng.integers(3, 6))):  # shapes of every size, from 24 to 160px at 1024
        radius = scaled(int(rng.integers(12, 80)), size)
        centre = tuple(rng.uniform(radius, size - radius, 2))
        image = np.where(_shape(rng, size, radius, centre)[..., None], _shaded(_colour(rng), size), image)
    image = np.clip(image, 0, 255)
    radius = scaled(48, size) / 2
    centre = tuple(rng.uniform(0.1 * size + radius, 0.9 * size - radius, 2))
    prop_mask = _shape(rng, size, radius, centre)
    behind = image[prop_mask].mean()
    prop_colour = rng.uniform(15, 50, 3) if behind > 128 else rng.uniform(200, 240, 3)  # stands out
    clean = np.where(prop_mask[..., None], prop_colour, image)
    return Scene(index=index, seed=seed, kind=kind, sigma=SIGMAS[index % len(SIGMAS)],
                 without_prop=image.astype(np.float32), prop_mask=prop_mask, clean=clean.astype(np.float32))


# --- regressions ------------------------------------------------------------------------------------

def _place(scene: Scene, rng: np.random.Generator, side: int,
           prefer: Callable[[np.ndarray], float] | None = None) -> Box:
    """A side x side box inside the frame: the first of some random spots, or the one whose clean
    pixels `prefer` ranks lowest (dark for fireflies, textured for a dropout, ...)."""
    margin = scene.size // 20
    spots = [tuple(int(v) for v in rng.integers(margin, scene.size - side - margin + 1, 2)) for _ in range(16)]
    if prefer is not None:
        spots.sort(key=lambda spot: prefer(scene.clean[spot[1]:spot[1] + side, spot[0]:spot[0] + side]))
    x, y = spots[0]
    return x, y, side, side


def _region(image: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return image[y:y + h, x:x + w]


def _luma(pixels: np.ndarray) -> float:
    return float(pixels.mean())


def fireflies(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """About a dozen single hot pixels in a 40px area, none touching another, where it is dark."""
    box = _place(scene, rng, scaled(40, scene.size, minimum=12), prefer=_luma)
    area, out, placed = np.zeros(box[2:], bool), image.copy(), 0
    for _ in range(500):
        if placed == 12:
            break
        row, col = (int(v) for v in rng.integers(0, box[2], 2))
        if not area[max(0, row - 1):row + 2, max(0, col - 1):col + 2].any():
            area[row, col], placed = True, placed + 1
    _region(out, box)[area] = HOT
    return out, box


def missing_object(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """The prop (about 48px) drawn over with what lies behind it, noise included."""
    out = image.copy()
    out[scene.prop_mask] = scene.noisy(scene.without_prop, rng)[scene.prop_mask]
    rows, cols = np.nonzero(scene.prop_mask)
    return out, (int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1)


def texture_dropout(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """A 96px region flattened to its mean colour, where the texture is richest."""
    box = _place(scene, rng, scaled(96, scene.size), prefer=lambda pixels: -float(pixels.std()))
    out = image.copy()
    region = _region(out, box)
    region[:] = np.rint(region.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    return out, box


def black_frame(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    return np.zeros_like(image), None


def grey_frame(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    return np.full_like(image, 128), None


def colour_cast(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """A warm cast over a 128px region: red up, blue down, in linear light."""
    box = _place(scene, rng, scaled(128, scene.size))
    out = image.copy()
    region = _region(out, box)
    region[:] = _from_linear(_to_linear(region) * np.array([1.3, 1.0, 0.75]))
    return out, box


def exposure(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """Half a stop over: x 2**0.5 in linear light, clipped."""
    return _from_linear(_to_linear(image) * 2**0.5), None


def shadow_acne(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """Periodic dark diagonal stripes over an 80px region, where it is bright (acne shows there)."""
    side = scaled(80, scene.size)
    box = _place(scene, rng, side, prefer=lambda pixels: -_luma(pixels))
    period = scaled(8, scene.size, minimum=3)
    rows, cols = np.mgrid[0:side, 0:side]
    stripes = (rows + cols) % period < period // 2 + period % 2
    out = image.copy()
    region = _region(out, box)
    region[stripes] = np.rint(region[stripes] * 0.35).astype(np.uint8)
    return out, box


def nan_block(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """A 6px block of NaN samples, shown magenta as an 8-bit render shows them."""
    box = _place(scene, rng, scaled(6, scene.size))
    out = image.copy()
    _region(out, box)[:] = MAGENTA
    return out, box


def banding(scene: Scene, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """A 128px region quantised to 8 levels per channel, where the image is smoothest."""
    box = _place(scene, rng, scaled(128, scene.size), prefer=lambda pixels: float(pixels.std()))
    out = image.copy()
    region = _region(out, box)
    region[:] = np.rint(np.rint(region / 255.0 * 7) * 255.0 / 7).astype(np.uint8)
    return out, box


REGRESSIONS: dict[str, Damage] = {
    "fireflies": fireflies, "missing_object": missing_object, "texture_dropout": texture_dropout,
    "black_frame": black_frame, "grey_frame": grey_frame, "colour_cast": colour_cast, "exposure": exposure,
    "shadow_acne": shadow_acne, "nan_block": nan_block, "banding": banding,
}
WHOLE_FRAME = frozenset({"black_frame", "grey_frame", "exposure"})  # their box is None


def regression_render(scene: Scene, name: str) -> np.ndarray:
    """The good render the regression `name` damages: a seed of its own."""
    return scene.render(REGRESSION_SEED + list(REGRESSIONS).index(name))


def regressed(scene: Scene, name: str) -> tuple[np.ndarray, Box | None]:
    """The damaged render and its damage box (None: the whole frame)."""
    rng = np.random.default_rng([scene.seed, scene.index, 10_000 + list(REGRESSIONS).index(name)])
    return REGRESSIONS[name](scene, regression_render(scene, name), rng)


def _to_linear(pixels: np.ndarray) -> np.ndarray:
    v = pixels / 255.0
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _from_linear(linear: np.ndarray) -> np.ndarray:
    v = np.clip(linear, 0.0, 1.0)
    return _to_uint8(255.0 * np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# --- the corpus on disk -----------------------------------------------------------------------------

def scene_file(index: int) -> str:
    return f"scene_{index}.png"


def write_corpus(folder: str | os.PathLike[str], *, size: int = 256, scenes: int = 3, calib: int = 3,
                 test: int = 3, seed: int = 0) -> dict:
    """Write the corpus under `folder` and return its manifest (also written as manifest.json):
    {"size", "seed", "scenes": [{"file", "kind", "sigma"}], "calib": [folder], "test": [folder],
    "regressions": {class: {file: [x, y, w, h] or None}}}."""
    if calib > TEST_SEED - CALIB_SEED:
        raise ValueError(f"calib: at most {TEST_SEED - CALIB_SEED} calibration renders")
    root = Path(folder)
    calib_dirs, test_dirs = [f"good_calib_{k}" for k in range(calib)], [f"good_test_{k}" for k in range(test)]
    manifest: dict = {"size": size, "seed": seed, "scenes": [], "calib": calib_dirs, "test": test_dirs,
                      "regressions": {name: {} for name in REGRESSIONS}}
    for index in range(scenes):
        scene, name = make_scene(index, size=size, seed=seed), scene_file(index)
        manifest["scenes"].append({"file": name, "kind": scene.kind, "sigma": scene.sigma})
        _save(root / "ref" / name, scene.render(REF_SEED))
        for k, sub in enumerate(calib_dirs):
            _save(root / sub / name, scene.render(CALIB_SEED + k))
        for k, sub in enumerate(test_dirs):
            _save(root / sub / name, scene.render(TEST_SEED + k))
        for regression in REGRESSIONS:
            damaged, box = regressed(scene, regression)
            _save(root / regression / name, damaged)
            manifest["regressions"][regression][name] = None if box is None else list(box)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
