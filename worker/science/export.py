"""The whole LPIPS metric as one ONNX graph: two NCHW RGB batches in [-1, 1] in, distances (N,) out,
with dynamic batch, height and width (torch.export's dynamic shapes, the dynamo exporter)."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from gate.errors import GateError
from worker.images import MIN_SIZE
from worker.perceptual import LPIPS
from worker.perceptual.normalise import l2

OPSET = 18


class MetricGraph(nn.Module):
    """LPIPS without hooks or inference mode, so it can be traced: the trunk's layers run in order
    and each tapped output is normalised, differenced, weighted by its head and averaged."""

    shift: torch.Tensor  # buffers, registered in __init__
    scale: torch.Tensor

    def __init__(self, model: LPIPS):
        super().__init__()
        if not model.is_lpips or model.heads is None:  # heads are None only without lin, which is not LPIPS
            raise ValueError("only LPIPS itself (linear heads, l2 normalisation, mean reduction) can be exported")
        self.scale_inputs = model.version != "0.0"
        last = int(model.taps[-1].split(".")[1])
        self.layers = nn.ModuleList(model.trunk.features[: last + 1])
        self.tapped = [int(t.split(".")[1]) for t in model.taps]
        self.heads = nn.ModuleList(model.heads[i] for i in range(len(self.tapped)))
        self.register_buffer("shift", model.shift.clone())
        self.register_buffer("scale", model.scale.clone())

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        n = in0.shape[0]
        x = torch.cat([in0, in1])
        if self.scale_inputs:
            x = (x - self.shift) / self.scale
        distance = torch.zeros_like(in0[:, 0, 0, 0])
        heads = iter(self.heads)
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self.tapped:
                features = l2(x)
                distance = distance + next(heads)((features[:n] - features[n:]) ** 2).mean(dim=(1, 2, 3))
        return distance


def export_onnx(model: LPIPS, path: Path, *, metadata: dict[str, str], opset: int = OPSET) -> Path:
    """Write `model` as ONNX (inputs in0, in1; output distance), with `metadata` in the model's properties."""
    try:
        import onnx  # deferred: only export needs it
        import onnxscript  # noqa: F401  (torch's exporter needs it; checked here to fail before the work)
    except ImportError as exc:
        raise GateError(f"ONNX export needs the onnx extra: pip install 'lpips-gate[onnx]' ({exc})") from exc

    graph = MetricGraph(model).eval()
    side = max(MIN_SIZE[model.net], 32)
    example = tuple(torch.zeros(2, 3, side, side, device=model.shift.device) for _ in range(2))
    batch = torch.export.Dim("batch", min=1)
    height = torch.export.Dim("height", min=MIN_SIZE[model.net])
    width = torch.export.Dim("width", min=MIN_SIZE[model.net])
    axes = {0: batch, 2: height, 3: width}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes on renamed axes
        program = torch.onnx.export(graph, example, dynamo=True, opset_version=opset, external_data=False,
                                    input_names=["in0", "in1"], output_names=["distance"],
                                    dynamic_shapes={"in0": axes, "in1": axes}, verbose=False)
    if program is None:  # the TorchScript exporter's answer; dynamo=True returns the program
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    proto = program.model_proto
    for key, value in sorted(metadata.items()):
        proto.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path
