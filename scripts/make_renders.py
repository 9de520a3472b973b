"""A small render set for the demo: reference frames and candidates with mild and strong changes."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def scene(seed: int, size: int = 128) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(6 * x + seed), np.cos(5 * y - seed), np.sin(4 * (x + y))], axis=-1)
    rgb = (rgb * 0.5 + 0.5) * 200 + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def main(folder: Path) -> None:
    ref, cand = folder / "renders" / "ref", folder / "renders" / "cand"
    ref.mkdir(parents=True, exist_ok=True)
    cand.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        frame = scene(i)
        frame.save(ref / f"frame_{i:03d}.png")
        changed = frame.filter(ImageFilter.GaussianBlur(4)) if i == 5 else frame.filter(ImageFilter.SMOOTH)
        changed.save(cand / f"frame_{i:03d}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
