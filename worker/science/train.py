"""Learning the LPIPS linear heads on 2AFC judgements, with the trunk frozen.

A head is a 1x1 convolution followed by a spatial mean, so a triplet's distance is, exactly,
sum over layers of w_l . m_l, where m_l is the per-channel spatial mean of the squared difference of
normalised features. The m_l of (ref, p0) and (ref, p1) are computed once; training then runs on
these small vectors. As in the LPIPS paper, a small ranking network (Dist2LogitLayer) turns (d0, d1)
into the probability that people prefer p1, trained with BCE against the judgement (Adam,
betas (0.5, 0.999)); heads are clamped to >= 0 after every step. Heads start at 1, the uncalibrated
(lin=False) metric, and no dropout is used (it would act on the reduced vectors, not on positions)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from worker.perceptual import LPIPS, PRESETS
from worker.science import bapps
from worker.science.evaluate import two_afc


@dataclass
class TripletMeans:
    """m_l for (ref, p0) and (ref, p1): one (N, C_l) tensor per layer; judgements (N,)."""

    d0: list[torch.Tensor]
    d1: list[torch.Tensor]
    judgements: torch.Tensor

    def __len__(self) -> int:
        return len(self.judgements)


@dataclass
class Trained:
    state: dict[str, torch.Tensor]  # heads, keys lin{i}.model.1.weight, shape (1, C, 1, 1)
    losses: list[float]  # mean BCE per epoch
    score_before: float  # training-set 2AFC of the starting heads (all ones)
    score_after: float


class Dist2Logit(nn.Module):
    """LPIPS's ranking network: (d0, d1, d0-d1, d0/(d1+eps), d1/(d0+eps)) -> 32 -> 32 -> 1, sigmoid."""

    def __init__(self, hidden: int = 32, eps: float = 0.1):
        super().__init__()
        self.eps = eps
        self.model = nn.Sequential(nn.Linear(5, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                   nn.LeakyReLU(0.2), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        pair = torch.stack([d0, d1, d0 - d1, d0 / (d1 + self.eps), d1 / (d0 + self.eps)], dim=1)
        return self.model(pair).squeeze(1)


def layer_means(model: LPIPS, subsets: list[bapps.Subset], *, batch: int, max_pixels: int, min_size: int,
                device: torch.device, progress: Callable[[int], None] = lambda n: None) -> TripletMeans:
    """The trunk runs once per image; only the (N, C_l) means are kept."""
    if any(s.kind != "2afc" for s in subsets):
        raise ValueError("heads are trained on 2afc data")
    d0: list[list[torch.Tensor]] = []
    d1: list[list[torch.Tensor]] = []
    judgements = []
    with ThreadPoolExecutor(2, thread_name_prefix="bapps") as pool:
        for subset in subsets:
            for item in bapps.batches(subset, size=batch, max_pixels=max_pixels, min_size=min_size, pool=pool):
                n = len(item.stems)
                layers = model.features(torch.cat(item.images).to(device), with_stats=False).layers
                d0.append([((f[:n] - f[n:2 * n]) ** 2).mean(dim=(2, 3)).cpu() for f in layers])
                d1.append([((f[:n] - f[2 * n:]) ** 2).mean(dim=(2, 3)).cpu() for f in layers])
                judgements.append(item.judgements.float())
                progress(n)
    def per_layer(parts: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.cat([p[i] for p in parts]).clone() for i in range(len(parts[0]))]

    return TripletMeans(per_layer(d0), per_layer(d1), torch.cat(judgements).clone())


def distances(weights: list[torch.Tensor], means: list[torch.Tensor]) -> torch.Tensor:
    return cast(torch.Tensor, sum(m @ w for w, m in zip(weights, means)))  # a tensor: there is always a layer


def agreement(weights: list[torch.Tensor], data: TripletMeans) -> float:
    with torch.no_grad():
        d0, d1 = distances(weights, data.d0), distances(weights, data.d1)
    return float(two_afc(d0.numpy(), d1.numpy(), data.judgements.double().numpy()).mean())


def train(data: TripletMeans, *, net: str, epochs: int, lr: float = 1e-2, batch: int = 50,
          seed: int = 0, on_epoch: Callable[[int, float], None] = lambda epoch, loss: None) -> Trained:
    """Heads and ranking network learned jointly; only the heads are returned."""
    if epochs < 1 or batch < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch >= 1 and lr > 0 (got {epochs}, {batch}, {lr})")
    channels = PRESETS[net].channels
    if [m.shape[1] for m in data.d0] != list(channels):
        raise ValueError(f"features have {[m.shape[1] for m in data.d0]} channels, {net!r} has {list(channels)}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the ranking network's initialisation
    weights = [torch.ones(c, requires_grad=True) for c in channels]
    rank = Dist2Logit()
    optimiser = torch.optim.Adam([*weights, *rank.parameters()], lr=lr, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    before = agreement(weights, data)
    losses = []
    for epoch in range(epochs):
        total = 0.0
        for rows in torch.randperm(len(data), generator=generator).split(batch):
            d0 = distances(weights, [m[rows] for m in data.d0])
            d1 = distances(weights, [m[rows] for m in data.d1])
            loss = bce(rank(d0, d1), data.judgements[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                for w in weights:
                    w.clamp_(min=0)
            total += loss.item() * len(rows)
        losses.append(total / len(data))
        on_epoch(epoch + 1, losses[-1])
    state = {f"lin{i}.model.1.weight": w.detach().clone().view(1, -1, 1, 1) for i, w in enumerate(weights)}
    return Trained(state, losses, before, agreement(weights, data))
