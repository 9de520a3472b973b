"""LPIPS: normalised deep-feature differences, weighted per channel, averaged over space, summed
over layers. Inputs are NCHW RGB in [-1, 1]; outputs have shape (N,)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from worker.perceptual.backbones import PRESETS, trunk
from worker.perceptual.extractor import extract
from worker.perceptual.heads import Heads, shipped_heads
from worker.perceptual.normalise import NORMALISERS
from worker.perceptual.reduce import REDUCTIONS
from worker.perceptual.spatial import fine_map
from worker.perceptual.stats import layer_stats

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHUNK_BYTES = 4 * 2**20  # of one layer's activations: a CPU's cache holds it between passes


@dataclass
class Features:
    """Normalised fp32 features per tapped layer, and the raw activations' statistics per image."""

    layers: list[torch.Tensor]
    stats: list[list[dict[str, float]]] = field(default_factory=list)  # [layer][image]

    def take(self, index: torch.Tensor | slice) -> Features:
        rows = range(self.layers[0].shape[0])[index] if isinstance(index, slice) else index.tolist()
        return Features(
            [f[index] for f in self.layers],
            [[per_image[i] for i in rows] for per_image in self.stats],
        )

    def clone(self) -> Features:
        """Own copies: a cached slice would otherwise keep its whole batch alive."""
        return Features([f.clone() for f in self.layers], [list(per_image) for per_image in self.stats])

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.layers)


@dataclass
class Result:
    distance: torch.Tensor  # (N,)
    layers: torch.Tensor  # (N, L): each layer's contribution
    ref_stats: list[list[dict[str, float]]]
    cand_stats: list[list[dict[str, float]]]
    map: torch.Tensor | None = None  # (N, 1, H, W)
    fine: torch.Tensor | None = None  # (N, 1, h, w): the map at the first tapped layer's resolution


class LPIPS(nn.Module):
    """The LPIPS metric, frozen and always in eval mode.

    `normalise` and `reduction` other than `l2`/`mean`, or `lin=False`, are not LPIPS: callers
    must label such results (see `is_lpips`)."""

    shift: torch.Tensor  # buffers, registered in __init__
    scale: torch.Tensor

    def __init__(
        self,
        net: str = "alex",
        version: str = "0.1",
        *,
        trunk_state: dict[str, torch.Tensor] | None,
        heads_state: dict[str, torch.Tensor] | None = None,
        lin: bool = True,
        normalise: str = "l2",
        reduction: str = "mean",
        precision: str = "fp32",
        random_weights: bool = False,
    ):
        super().__init__()
        if net not in PRESETS:
            raise ValueError(f"unknown net {net!r}; choose one of {sorted(PRESETS)}")
        if normalise not in NORMALISERS:
            raise ValueError(f"unknown normalisation {normalise!r}; choose one of {sorted(NORMALISERS)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {sorted(REDUCTIONS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
        if trunk_state is None and not random_weights:
            raise ValueError(
                f"no backbone weights for {net!r}: run `lpips-gate weights fetch --net {net}` "
                "(random weights are for tests only)"
            )
        self.net, self.version, self.lin = net, version, lin
        self.normalise, self.reduction, self.precision = normalise, reduction, precision
        self.taps = PRESETS[net].taps
        self.trunk = trunk(net, trunk_state).to(memory_format=torch.channels_last)  # faster convs on oneDNN/cuDNN
        heads = heads_state or shipped_heads(net, version)
        self.heads = Heads(PRESETS[net].channels).load_checked(heads) if lin else None
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    @property
    def is_lpips(self) -> bool:
        return self.lin and self.normalise == "l2" and self.reduction == "mean"

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's raw outputs at the taps, in the trunk's precision: the part of the work the reference
        network does too, before any statistic or normaliser."""
        _check_images(x)
        if self.version != "0.0":  # v0.0 shipped without input scaling; keep it for parity
            x = self._scaled(x)
        dtype = PRECISIONS[self.precision]
        autocast = torch.autocast(x.device.type, dtype=dtype) if dtype else nullcontext()
        with torch.inference_mode(), autocast:
            return extract(self.trunk, x.contiguous(memory_format=torch.channels_last), self.taps)

    def features(self, x: torch.Tensor, *, with_stats: bool = True) -> Features:
        """Normalised features of a batch; the network may run in bf16/fp16, normalisation is fp32."""
        raw = self.activations(x)
        norm, layers, stats = NORMALISERS[self.normalise], [], []
        with torch.inference_mode():
            while raw:  # one layer at a time, releasing each raw activation once it is used
                r = raw.pop(0)
                layer = r if r.dtype == torch.float32 else torch.empty_like(r, dtype=torch.float32)
                per_image: list[dict[str, float]] = []
                for rows in _cache_sized(layer):
                    part = layer[rows]
                    if layer is not r:
                        part.copy_(r[rows])  # to fp32 a chunk at a time, into the cache the passes below read
                    if with_stats:
                        per_image += layer_stats(part)  # before the normaliser overwrites part
                    normalised = norm(part)
                    if normalised is not part:  # a normaliser that does not work in place
                        part.copy_(normalised)
                if with_stats:
                    stats.append(per_image)
                layers.append(layer)
                del r
        return Features(layers, stats)

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        """(x - shift) / scale, the reference's arithmetic, into the channels_last batch the trunk runs on:
        as rows of pixels (N*H, W*3) against the per-channel constants repeated W times. Broadcasting
        over channels_last's 3-wide innermost dimension runs element by element, ten times slower."""
        n, _, height, width = x.shape
        rows = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n * height, width * 3)
        out = torch.sub(rows, self.shift.flatten().repeat(width)).div_(self.scale.flatten().repeat(width))
        return out.view(n, height, width, 3).permute(0, 3, 1, 2)

    def layer_maps(self, f0: Features, f1: Features) -> list[torch.Tensor]:
        """Per-position distance of each layer, (N,1,h,w)."""
        with torch.inference_mode():
            return [self._weighted(i, (a - b).square_()) for i, (a, b) in enumerate(zip(f0.layers, f1.layers))]

    def compare(self, f0: Features, f1: Features, *, size: tuple[int, int] | None = None,
                spatial: bool = False) -> Result:
        """Distances from precomputed features; `size` (H, W) also returns the spatial map, `spatial` the
        map at the first tap's resolution (`fine`) for the local scores."""
        if size is None and self.reduction == "mean":
            layers, maps = self._mean_layers(f0, f1, with_maps=spatial)
            return Result(layers.sum(dim=1), layers, f0.stats, f1.stats, fine=fine_map(maps) if spatial else None)
        maps = self.layer_maps(f0, f1)
        reduce = REDUCTIONS[self.reduction]
        with torch.inference_mode():
            layers = torch.stack([reduce(m) for m in maps], dim=1)
            full = None
            if size is not None:
                upsampled = (F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps)
                full = cast(torch.Tensor, sum(upsampled))  # maps is never empty: a tensor, never sum's start 0
            fine = fine_map(maps) if spatial else None
        return Result(layers.sum(dim=1), layers, f0.stats, f1.stats, full, fine)

    def _mean_layers(self, f0: Features, f1: Features, *, with_maps: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The spatial mean commutes with the 1x1 heads: average first, then weight (N,C), not (N,C,H,W).
        The distance always comes from these means; `with_maps` also weights each position, for the
        local scores, from the same squared differences."""
        with torch.inference_mode():
            means, maps = [], []
            for i, (a, b) in enumerate(zip(f0.layers, f1.layers)):
                squared = (a - b).square_()  # in place: no second layer-sized tensor
                means.append(squared.mean(dim=(2, 3)))
                if with_maps:
                    maps.append(self._weighted(i, squared))
                del squared
            if self.heads is None:
                return torch.stack([m.sum(dim=1) for m in means], dim=1), maps
            weights = [self.heads[i].conv.weight.flatten() for i in range(len(means))]
            return torch.stack([m @ w for m, w in zip(means, weights)], dim=1), maps

    def _weighted(self, layer: int, squared: torch.Tensor) -> torch.Tensor:
        """(N,C,h,w) squared differences -> (N,1,h,w), weighted by the layer's head (summed without one):
        a matrix-vector product over the channels-last memory, several times faster than the 1x1 conv."""
        if self.heads is None:
            return squared.sum(dim=1, keepdim=True)
        weight = self.heads[layer].conv.weight.flatten().to(squared.dtype)
        return torch.matmul(squared.permute(0, 2, 3, 1), weight).unsqueeze(1)

    def run(self, in0: torch.Tensor, in1: torch.Tensor, *, with_map: bool = False) -> Result:
        """Both images of every pair in one batched forward pass."""
        if in0.shape != in1.shape:
            raise ValueError(f"image batches differ in shape: {tuple(in0.shape)} vs {tuple(in1.shape)}")
        both = self.features(torch.cat([in0, in1]))
        n = in0.shape[0]
        return self.compare(both.take(slice(0, n)), both.take(slice(n, 2 * n)),
                            size=(in0.shape[-2], in0.shape[-1]) if with_map else None)

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        return self.run(in0, in1).distance


def _cache_sized(x: torch.Tensor) -> list[slice]:
    """Slices of a batch, each about CHUNK_BYTES of its images. On the CPU the layer statistics and the
    normaliser make a dozen passes over each layer; over a chunk they run in cache, over a whole batch at
    256px they stream it from memory every time. A GPU takes the batch in one slice: each launch costs."""
    n = x.shape[0]
    if x.device.type != "cpu" or n == 0:
        return [slice(0, n)]
    step = max(1, CHUNK_BYTES * n // (x.numel() * x.element_size()))
    return [slice(start, min(n, start + step)) for start in range(0, n, step)]


def _check_images(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected NCHW RGB images, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected floating-point images in [-1, 1], got {x.dtype}")
