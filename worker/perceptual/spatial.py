"""Local scores from the LPIPS map: the worst region, the share of the frame above a level, and the mean
over what the masks leave. The map is taken at the first tapped layer's resolution (a quarter of the
image's side on alex), not the image's: each deeper layer's map is upsampled to it, and a window of
`region_px` image pixels becomes one of region_px / stride positions, so pooling costs 16x less.

Boxes come back as [x, y, width, height] in the pixels of the image the map was computed on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Box = list[int]


def fine_map(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum of per-layer maps (N,1,h_i,w_i), each bilinearly upsampled to the first one's size."""
    size = maps[0].shape[-2:]
    total = maps[0].float().clone()
    for layer in maps[1:]:
        total += F.interpolate(layer.float(), size=size, mode="bilinear", align_corners=False)
    return total


def grid_ignored(ignored: torch.Tensor, grid: tuple[int, int], margin_px: int = 0) -> torch.Tensor:
    """(N,1,H,W) ignored image pixels -> (N,1,h,w) ignored map positions: a position is ignored where any
    pixel it covers is, or one within `margin_px` image pixels of it. The map at a position sees the
    features of its neighbourhood, so without the margin what changes under a mask leaks into the scores
    just outside it."""
    on_grid = F.adaptive_max_pool2d(ignored.float(), grid)
    margin = tuple(round(margin_px * cells / pixels) for cells, pixels in zip(grid, ignored.shape[-2:]))
    if any(margin):
        size = tuple(2 * m + 1 for m in margin)
        on_grid = F.max_pool2d(on_grid, size, stride=1, padding=margin)
    return on_grid > 0


def window_cells(region_px: int, image_size: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """The window of `region_px` image pixels in map positions (rows, columns): at least one, at most the map."""
    (rows, cols), (height, width) = grid, image_size
    return min(rows, max(1, round(region_px * rows / height))), min(cols, max(1, round(region_px * cols / width)))


def cells_to_box(row: int, col: int, window: tuple[int, int], image_size: tuple[int, int],
                 grid: tuple[int, int]) -> Box:
    """A window of map positions starting at (row, col) as the image pixels it covers, clipped to the image."""
    (height, width), (rows, cols) = image_size, grid
    y0, x0 = math.floor(row * height / rows), math.floor(col * width / cols)
    y1 = min(height, math.ceil((row + window[0]) * height / rows))
    x1 = min(width, math.ceil((col + window[1]) * width / cols))
    return [x0, y0, x1 - x0, y1 - y0]


def spatial_scores(
    fine: torch.Tensor,
    *,
    image_size: tuple[int, int],
    region_px: int,
    area_level: float,
    ignored: torch.Tensor | None = None,
) -> list[tuple[dict[str, float], dict[str, Box]]]:
    """Per row of a (N,1,h,w) map: scores {"mean", "region", "area"} and the region's box in image pixels.

    Ignored positions (N,1,h,w) count as zero distance and are left out of `mean` and `area`'s
    denominators; a window partly over them is averaged with those zeros. A row with every position
    ignored scores 0 and has no box."""
    rows, cols = fine.shape[-2:]
    above = (fine > area_level).float()
    if ignored is None:  # every position kept: no masking passes
        masked, kept_count = fine, torch.full(fine.shape[:1], float(rows * cols), device=fine.device)
    else:
        kept = (~ignored).float()
        masked, kept_count, above = fine * kept, kept.sum(dim=(1, 2, 3)), above * kept
    share = kept_count.clamp(min=1)
    mean = masked.sum(dim=(1, 2, 3)) / share
    area = above.sum(dim=(1, 2, 3)) / share
    window = window_cells(region_px, image_size, (rows, cols))
    pooled = F.avg_pool2d(masked, window, stride=1).flatten(1)
    region, where = pooled.max(dim=1)
    columns = cols - window[1] + 1
    values = torch.stack([mean, region, area, where.float(), kept_count], dim=1).tolist()  # one device sync
    out = []
    for mean_value, region_value, area_value, index, count in values:
        row, col = divmod(int(index), columns)
        boxes = {"region": cells_to_box(row, col, window, image_size, (rows, cols))} if count else {}
        out.append(({"mean": mean_value, "region": region_value, "area": area_value}, boxes))
    return out
