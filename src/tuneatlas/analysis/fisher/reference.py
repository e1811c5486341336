"""The N-backward reference of `layer_grams`, for tests and benchmarks: one forward, then one
backward pass per example."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tuneatlas.analysis.fisher.grams import PerExampleFn, find_layers


def reference_grams(
    model: nn.Module, per_example: PerExampleFn, *, layers: Sequence[nn.Module] | None = None
) -> torch.Tensor:
    """The obvious way, for tests and benchmarks: one forward, then N backward passes (one per
    example's log-prob), each layer's parameter gradients flattened, Gram by dot products
    (float64). Returns [L, N, N]."""
    layers = list(find_layers(model) if layers is None else layers)
    params = [list(layer.parameters()) for layer in layers]
    flat = [p for ps in params for p in ps]
    was = [p.requires_grad for p in flat]
    try:
        for p in flat:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = per_example(model)
            n = out.shape[0]
            rows: list[list[torch.Tensor]] = [[] for _ in layers]
            for i in range(n):
                grads = torch.autograd.grad(out[i], flat, retain_graph=i < n - 1, allow_unused=True)
                pos = 0
                for li, ps in enumerate(params):
                    gs = [
                        torch.zeros_like(p) if gr is None else gr
                        for p, gr in zip(ps, grads[pos : pos + len(ps)], strict=True)
                    ]
                    pos += len(ps)
                    rows[li].append(torch.cat([x.reshape(-1) for x in gs]))
    finally:
        for p, w in zip(flat, was, strict=True):
            p.requires_grad_(w)
    out_k = []
    for r in rows:
        g = torch.stack(r).double()
        out_k.append(g @ g.T)
    return torch.stack(out_k).cpu()
