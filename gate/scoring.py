"""The run options the worker scores by, in one place: the submission writes them into a run's options
(`region_px`, `area_level`, `masks`; `resize` and `exposure` when not the defaults), the worker reads
them back with `ScoreOptions.from_options`, and `glob_matches` picks the masks that apply to a
candidate. No torch: the gate imports it.

`masks` is a list of {"glob": str, "rects": [[x, y, w, h], ...], "mask": path or null}: every rule whose
glob matches a candidate applies to it; rectangles are in the candidate's pixels, a mask image is a path
under the image root whose white (above mid grey) pixels are ignored. Masks apply to the LPIPS map before
any score is taken (grown by MASK_MARGIN_PX there), and to the pixel guards (as drawn)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from gate.vocabulary import AREA_LEVEL, REGION_PX, RESIZE_MODES, Resize

# how far around a mask the LPIPS map is ignored too, in image pixels: the map at a position sees its
# neighbourhood's features, so a change under a tight mask would otherwise raise the scores just outside it
MASK_MARGIN_PX = 24

Rect = tuple[int, int, int, int]  # x, y, width, height in the candidate's pixels


def glob_matches(glob: str, path: str) -> bool:
    """A per-image glob matches a stored path from its right end, one path component per pattern
    component: "shots/ui_*" matches "cand/shots/ui_title.png", "*.exr" any EXR; "*" never crosses "/"."""
    return PurePosixPath(path).match(glob)


@dataclass(frozen=True)
class MaskRule:
    """What to ignore in the candidates `glob` matches."""

    glob: str
    rects: tuple[Rect, ...] = ()
    mask: str | None = None  # image path under the image root; white = ignored

    @classmethod
    def from_json(cls, data: Any, where: str) -> MaskRule:
        if not isinstance(data, Mapping) or not isinstance(data.get("glob"), str) or not data["glob"]:
            raise ValueError(f"{where}: expected {{'glob': str, 'rects': [...], 'mask': path or null}}, got {data!r}")
        mask = data.get("mask")
        if mask is not None and (not isinstance(mask, str) or not mask):
            raise ValueError(f"{where}.mask: expected a path or null, got {mask!r}")
        rects = tuple(_rect(rect, f"{where}.rects[{i}]") for i, rect in enumerate(data.get("rects") or ()))
        return cls(glob=data["glob"], rects=rects, mask=mask)


@dataclass(frozen=True)
class ScoreOptions:
    """The scoring options of one run; absent options take the vocabulary's defaults."""

    region_px: int = REGION_PX
    area_level: float = AREA_LEVEL
    masks: tuple[MaskRule, ...] = ()
    resize: Resize = "none"  # which side is resized to the other's size when they differ
    exposure: float = 0.0  # OpenEXR input: stops before the tone map

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ScoreOptions:
        """Read from a run's options; ValueError names a malformed one."""
        region_px = options.get("region_px", REGION_PX)
        if isinstance(region_px, bool) or not isinstance(region_px, int) or region_px < 1:
            raise ValueError(f"region_px: expected an integer >= 1, got {region_px!r}")
        area_level = options.get("area_level", AREA_LEVEL)
        if isinstance(area_level, bool) or not isinstance(area_level, int | float) or not math.isfinite(area_level) \
                or area_level < 0:
            raise ValueError(f"area_level: expected a finite number >= 0, got {area_level!r}")
        masks = options.get("masks") or []
        if not isinstance(masks, list):
            raise ValueError(f"masks: expected a list of mask rules, got {masks!r}")
        rules = tuple(MaskRule.from_json(rule, f"masks[{i}]") for i, rule in enumerate(masks))
        resize = options.get("resize", "none")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        exposure = options.get("exposure", 0.0)
        if isinstance(exposure, bool) or not isinstance(exposure, int | float) or not math.isfinite(exposure):
            raise ValueError(f"exposure: expected a finite number of stops, got {exposure!r}")
        return cls(region_px=region_px, area_level=float(area_level), masks=rules, resize=resize,
                   exposure=float(exposure))

    def masks_for(self, cand: str) -> tuple[MaskRule, ...]:
        """The mask rules that apply to this candidate (its path as stored)."""
        return tuple(rule for rule in self.masks if glob_matches(rule.glob, cand))


def _rect(data: Any, where: str) -> Rect:
    if (not isinstance(data, list | tuple) or len(data) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in data)
            or data[2] < 1 or data[3] < 1):
        raise ValueError(f"{where}: expected [x, y, width, height] as integers, width and height >= 1, got {data!r}")
    x, y, width, height = data
    return (x, y, width, height)
