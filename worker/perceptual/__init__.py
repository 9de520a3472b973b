"""Pure LPIPS math: backbones, hook extraction, normalisation, heads, reductions, statistics."""

from worker.perceptual.backbones import PRESETS
from worker.perceptual.metric import LPIPS, Features, Result

__all__ = ["LPIPS", "PRESETS", "Features", "Result"]
