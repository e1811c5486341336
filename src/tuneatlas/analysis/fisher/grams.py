"""Per-layer Gram matrices of per-example gradients (S2's empirical-Fisher spectra) from one
forward and one backward pass.

For a mini-batch of N examples and each transformer layer l, K_l[i, j] = <g_i^l, g_j^l>, where
g_i^l is the gradient of example i's log p(y_i | x_i) (or loss: the sign does not change K) with
respect to *all* parameters of layer l: attention and FFN Linear weights and biases, and the
LayerNorm / RMSNorm weights (and biases). K_l has the non-zero eigenvalues of layer l's
empirical Fisher G_l G_l^T / N up to the factor N.

"Layer l" is the l-th block of the model's layer list: ``encoder.layer[l]`` of a BertModel,
``layers[l]`` of a LlamaModel (`find_layers` finds it inside wrappers such as the package's
SequenceClassifier or LlamaForCausalLM). Embeddings, the pooler and the head are not layers and
have no Gram matrix here.

How (`layer_grams`): the caller's function returns the N per-example log-probs; their sum is
back-propagated once. Forward hooks keep each Linear's input a [N, T, d_in] and each norm's
input, tensor hooks receive the output gradients g [N, T, d_out]. Because examples do not
interact in a transformer (no batch statistics), g[i] is the gradient of example i's own term,
so example i's weight gradient is sum_t g_it a_it^T. Per Linear, the cheaper of two exact forms
is used, by the FLOP count below (memory is bounded by chunking either form to ``chunk_bytes``):

- "per_example": form the per-example weight gradients W_i = g_i^T a_i ([N, d_out, d_in], in
  chunks of output rows) and accumulate W W^T. FLOPs 2 N T d_in d_out + 2 N^2 d_in d_out.
- "ghost": K_ij = sum_{t,s} (a_it . a_js)(g_it . g_js), the elementwise product of the token-pair
  activation Gram and output-gradient Gram, summed. FLOPs 2 N^2 T^2 (d_in + d_out + 1), in
  chunks of examples. It wins only when T^2 (d_in + d_out) < d_in d_out (T + N) / N, i.e. for
  short sequences (at width 384 and T = 64 the per-example form is ~20x cheaper).

Bias gradients are sum_t g_it; a norm's weight gradient is sum_t g_it * xhat_it with xhat the
normalised input (recomputed from the kept input), its bias gradient sum_t g_it. The backward
pass asks autograd only for the gradient of layer 0's input, so no parameter ``.grad`` is
touched and no weight gradient of the batch is formed. Each contribution is added as soon as
its output gradient arrives, and the kept inputs are then released.

Precision (`PRECISIONS`): the gradients are float32 (the model's own); what differs is the
dtype of the Gram products. Each chunk's N x N product is summed over a few thousand to a few
hundred thousand terms and then added into a float64 accumulator, so the rounding of a float32
product stays local to its chunk. S2 reads the spectra only through erank (the smallest j
holding more than 99% of the mass) and their sums, so "exact" is defined by those: "fast"
(float32 products) gives each layer's erank of the float64 N-backward reference and every
eigenvalue above 1e-3 of the layer's largest within 1e-4 relative (measured on MiniLM, N up to
128: within 3e-6); smaller eigenvalues are returned but not promised (a fresh head makes one
direction dominate, spans of 1e4 to 1e6, where float32 products err by up to 1e-3 on the
smallest). "exact" (float64 products, about 1.4x the time of "fast" at N = 128) keeps every
eigenvalue above 1e-6 of the largest within 1e-4.

Padding: padded positions reach the loss only through attention, where the mask gives them a
weight of exactly 0, so their output gradients are exactly 0 and they add nothing; nothing is
masked here (masking would hide a model that does use them). The tests check this against the
N-backward reference on a padded batch.

Put the model in eval mode (or disable dropout) for a deterministic result: the one-backward
form is exact for the dropout masks of its own forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tuneatlas.analysis.fisher.spectrum import ERANK_MASS, FisherSpectrum, fisher_spectrum

STRATEGIES = ("auto", "per_example", "ghost")
# dtype of the Gram products per precision; their N x N results are summed in float64 either way
PRECISIONS = {"fast": torch.float32, "exact": torch.float64}
# Small enough that a chunk of per-example weight gradients is still in cache when its Gram
# product reads it (MiniLM, N = 64, 1 thread: 8 MiB took 0.55x the time of 256 MiB in float64,
# 0.9x in float32), large enough that each product is one efficient matmul.
DEFAULT_CHUNK_BYTES = 8 * 2**20

PerExampleFn = Callable[[nn.Module], torch.Tensor]


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer block list of a BERT-style (``encoder.layer``) or LLaMA-style
    (``layers``) model, also inside wrappers (SequenceClassifier, *ForCausalLM, ...): the
    outermost ModuleList named ``layers`` or ``encoder.layer``."""
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if name in ("layers", "encoder.layer") or name.endswith((".layers", ".encoder.layer")):
            return module
    raise ValueError(
        f"find_layers: {type(model).__name__} has no ModuleList named 'encoder.layer' "
        "(BERT-style) or 'layers' (LLaMA-style); pass layers= explicitly"
    )


def _is_rms_norm(module: nn.Module) -> bool:
    return "RMSNorm" in type(module).__name__ and isinstance(
        getattr(module, "weight", None), nn.Parameter
    )


def _rms_eps(module: nn.Module, dtype: torch.dtype) -> float:
    for attr in ("variance_epsilon", "eps"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return float(torch.finfo(dtype).eps)  # torch.nn.RMSNorm's eps=None


def _layer_parts(layer: nn.Module, index: int) -> list[tuple[str, nn.Module]]:
    """The modules of one layer whose parameters get Gram contributions; every parameter of
    the layer must belong to one of them."""
    parts: list[tuple[str, nn.Module]] = []
    covered: set[int] = set()
    for name, m in layer.named_modules():
        if isinstance(m, (nn.Linear, nn.LayerNorm)) or _is_rms_norm(m):
            if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
                raise ValueError(f"layer {index}: LayerNorm {name} normalises over >1 dimension")
            parts.append((name, m))
            covered.update(id(p) for p in m.parameters(recurse=False))
    missing = [n for n, p in layer.named_parameters() if id(p) not in covered]
    if missing:
        raise ValueError(
            f"layer {index}: parameters {missing} are not in an nn.Linear, nn.LayerNorm or "
            "RMSNorm module; the Fisher engine cannot form their per-example gradients"
        )
    return parts


# --------------------------------------------------------------------------------------------
# per-module Gram contributions
# --------------------------------------------------------------------------------------------


def linear_costs(n: int, t: int, d_in: int, d_out: int) -> dict[str, float]:
    """FLOPs of the two exact forms of one Linear's weight Gram (see the module docstring)."""
    return {
        "per_example": 2.0 * n * t * d_in * d_out + 2.0 * n * n * d_in * d_out,
        "ghost": 2.0 * n * n * t * t * (d_in + d_out + 1),
    }


def choose_strategy(n: int, t: int, d_in: int, d_out: int) -> str:
    """The cheaper form by `linear_costs`: "per_example" or "ghost" (ties: per_example)."""
    c = linear_costs(n, t, d_in, d_out)
    return "ghost" if c["ghost"] < c["per_example"] else "per_example"


def _blocks(n: int) -> list[tuple[int, int]]:
    """Row blocks of the N x N Gram; only blocks on or above the diagonal are computed (the
    Gram is symmetric: 4 blocks do 10/16 of the products) and `_mirror` fills the rest."""
    size = max(32, -(-n // 4))
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _mirror(k: torch.Tensor) -> torch.Tensor:
    """The full symmetric matrix from the block upper triangle `_add_gram` fills."""
    out = k.clone()
    for i, j in _blocks(k.shape[0]):
        out[j:, i:j] = k[i:j, j:].T
        out[i:j, i:j] = (k[i:j, i:j] + k[i:j, i:j].T) / 2  # BLAS rounding is not symmetric
    return out


def _add_gram(k: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> None:
    """k += the Gram of the flattened rows of x [N, ...], block upper triangle only; the
    products in `dtype`, each block added to k (float64) as it is formed."""
    x = x.reshape(x.shape[0], -1).to(dtype)
    for i, j in _blocks(x.shape[0]):
        k[i:j, i:] += x[i:j] @ x[i:].T


def row_gram(
    x: torch.Tensor, precision: str = "fast", chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """The N x N Gram (float64) of the rows of x [N, P] as `layer_grams` forms its own: in
    column chunks of `chunk_bytes`, each chunk's block upper triangle in the precision's dtype,
    summed in float64. For baselines that must do the same arithmetic (benchmarks)."""
    n = x.shape[0]
    k = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    cols = max(1, chunk_bytes // max(1, n * x.element_size()))
    for c in range(0, x.shape[1], cols):
        _add_gram(k, x[:, c : c + cols], PRECISIONS[precision])
    return _mirror(k)


def _add_per_example_gram(
    k: torch.Tensor, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int, dtype: torch.dtype
) -> None:
    """k += sum_o of the Gram of W_i[o, :] = sum_t g_it[o] a_it, in chunks of output rows o."""
    n, _, d_in = a.shape
    d_out = g.shape[-1]
    rows = max(1, min(d_out, chunk_bytes // max(1, n * d_in * a.element_size())))
    gt = g.transpose(1, 2)  # [N, d_out, T]
    for o in range(0, d_out, rows):
        _add_gram(k, torch.bmm(gt[:, o : o + rows], a), dtype)  # W chunk [N, r, d_in]


def _add_ghost_gram(
    k: torch.Tensor, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int, dtype: torch.dtype
) -> None:
    """k += K with K_ij = sum_{t,s} (a_it . a_js)(g_it . g_js), in chunks of examples i."""
    n, t, _ = a.shape
    a2, g2 = a.reshape(n * t, -1).to(dtype), g.reshape(n * t, -1).to(dtype)
    rows = max(1, min(n, chunk_bytes // max(1, 2 * t * n * t * a2.element_size())))
    for i in range(0, n, rows):
        j = min(n, i + rows)
        aa = a2[i * t : j * t] @ a2.T  # [b T, N T]
        gg = g2[i * t : j * t] @ g2.T
        k[i:j] += (aa * gg).view(j - i, t, n, t).sum((1, 3))


def _as_ntd(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.reshape(n, -1, x.shape[-1]).float()


@dataclass
class _Capture:
    layer: int
    name: str
    module: nn.Module
    kind: str  # "linear" | "layernorm" | "rmsnorm"
    inputs: torch.Tensor | None = None
    calls: int = 0


@dataclass
class LayerGrams:
    """Result of `layer_grams`: ``grams`` [L, N, N] (float64), one Gram per layer, and the
    strategy used for each Linear (``"<layer>.<module name>" -> "per_example" | "ghost"``)."""

    grams: torch.Tensor
    strategies: dict[str, str] = field(default_factory=dict)

    def spectrum(self, mass: float = ERANK_MASS) -> FisherSpectrum:
        return fisher_spectrum(self.grams, mass)


class _GramAccumulator:
    """Adds each module's contribution to its layer's Gram as its output gradient arrives."""

    def __init__(self, n_layers: int, strategy: str, chunk_bytes: int, precision: str) -> None:
        self.grams: list[torch.Tensor | None] = [None] * n_layers  # block upper triangles
        self.chosen: dict[str, str] = {}
        self.errors: list[str] = []
        self.strategy, self.chunk_bytes = strategy, chunk_bytes
        self.dtype = PRECISIONS[precision]

    def _gram(self, cap: _Capture, n: int, device: torch.device) -> torch.Tensor:
        if self.grams[cap.layer] is None:
            self.grams[cap.layer] = torch.zeros(n, n, dtype=torch.float64, device=device)
        return self.grams[cap.layer]

    def forward_hook(self, cap: _Capture) -> Callable[..., None]:
        """Keeps the module's input and asks for its output gradient."""

        def hook(module, args, output):
            cap.calls += 1
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            cap.inputs = args[0].detach()
            output.register_hook(lambda g: self.on_grad(cap, g))

        return hook

    def on_grad(self, cap: _Capture, g: torch.Tensor) -> None:
        x = cap.inputs
        cap.inputs = None  # release the kept input once its contribution is added
        if x is None:
            return
        try:
            n = x.shape[0]
            g = _as_ntd(g, n)
            k = self._gram(cap, n, g.device)
            if cap.kind == "linear":
                self._add_linear(cap, k, _as_ntd(x, n), g)
            else:
                self._add_norm(cap, k, x, g)
        except Exception as exc:  # raised inside autograd: report after backward
            self.errors.append(f"layer {cap.layer} {cap.name}: {exc!r}")

    def _add_linear(self, cap: _Capture, k: torch.Tensor, a: torch.Tensor, g: torch.Tensor) -> None:
        n = a.shape[0]
        how = self.strategy
        if how == "auto":
            how = choose_strategy(n, a.shape[1], a.shape[2], g.shape[2])
        self.chosen[f"{cap.layer}.{cap.name}"] = how
        if how == "ghost":
            _add_ghost_gram(k, a, g, self.chunk_bytes, self.dtype)
        else:
            _add_per_example_gram(k, a, g, self.chunk_bytes, self.dtype)
        if cap.module.bias is not None:
            _add_gram(k, g.sum(1), self.dtype)

    def _add_norm(self, cap: _Capture, k: torch.Tensor, x: torch.Tensor, g: torch.Tensor) -> None:
        xf = _as_ntd(x, x.shape[0])
        if cap.kind == "layernorm":
            m = cap.module
            xhat = F.layer_norm(xf, m.normalized_shape, None, None, m.eps)
        else:
            eps = _rms_eps(cap.module, x.dtype)
            xhat = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            xhat = xhat.to(x.dtype).float()
        if cap.module.weight is not None:
            _add_gram(k, (g * xhat).sum(1), self.dtype)
        if getattr(cap.module, "bias", None) is not None:
            _add_gram(k, g.sum(1), self.dtype)

    def stacked(self, n: int, device: torch.device) -> torch.Tensor:
        """[L, N, N] float64 on the CPU; a layer that got no gradient has a zero Gram."""
        zero = torch.zeros(n, n, dtype=torch.float64, device=device)
        return torch.stack([zero if k is None else _mirror(k).double() for k in self.grams]).cpu()


def _cut_below(root: list[torch.Tensor]) -> Callable[..., tuple[tuple, dict]]:
    """Forward pre-hook for layer 0 that detaches its input and keeps it in ``root``."""

    def root_hook(module, args, kwargs):
        # Cut the graph at layer 0's input: nothing below it is needed, and the backward pass
        # then asks for this one gradient only (no parameter gradients are formed).
        if args:
            x = args[0].detach().requires_grad_(True)
            root.append(x)
            return (x, *args[1:]), kwargs
        x = kwargs["hidden_states"].detach().requires_grad_(True)
        root.append(x)
        return args, {**kwargs, "hidden_states": x}

    return root_hook


def _check_forward(out: torch.Tensor, root: list[torch.Tensor], captures: list[_Capture]) -> None:
    """The one forward pass ran as `layer_grams` needs: [N] outputs, each hooked module once."""
    if out.ndim != 1:
        raise ValueError(f"per_example must return a [N] tensor, got shape {tuple(out.shape)}")
    if len(root) != 1:
        raise ValueError(f"layer 0 ran {len(root)} times in per_example (expected exactly once)")
    twice = [f"{c.layer}.{c.name}" for c in captures if c.calls > 1]
    if twice:
        raise ValueError(f"modules called more than once per forward: {twice}")


def layer_grams(
    model: nn.Module,
    per_example: PerExampleFn,
    *,
    layers: Sequence[nn.Module] | None = None,
    strategy: str = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    precision: str = "fast",
) -> LayerGrams:
    """Per-layer N x N Gram matrices of per-example gradients, from one forward and one
    backward pass (see the module docstring for the method and its cost).

    `per_example(model)` runs the model on the batch and returns the N per-example log-probs
    (or losses), shape [N]. `layers`: default `find_layers(model)`. `strategy`: "auto" (the
    cheaper form per Linear), or force "per_example" or "ghost" for every Linear.
    `chunk_bytes` bounds each temporary of the Gram forms. `precision` (`PRECISIONS`): the
    gradients are float32 either way; "fast" forms each chunk's Gram product in float32 and
    sums the N x N products in float64, "exact" forms them in float64. See the module
    docstring for what each promises.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {tuple(PRECISIONS)}")
    layers = list(find_layers(model) if layers is None else layers)
    if not layers:
        raise ValueError("layer_grams: no layers")
    captures = [
        _Capture(li, name, m, _kind(m)) for li, layer in enumerate(layers)
        for name, m in _layer_parts(layer, li)
    ]  # fmt: skip
    acc = _GramAccumulator(len(layers), strategy, chunk_bytes, precision)
    root: list[torch.Tensor] = []
    handles = [layers[0].register_forward_pre_hook(_cut_below(root), with_kwargs=True)]
    handles += [c.module.register_forward_hook(acc.forward_hook(c)) for c in captures]
    try:
        with torch.enable_grad():
            out = per_example(model)
            _check_forward(out, root, captures)
            torch.autograd.grad(out.sum(), root[0])
    finally:
        for h in handles:
            h.remove()
        for c in captures:
            c.inputs = None
    if acc.errors:
        raise RuntimeError("layer_grams failed in the backward pass: " + "; ".join(acc.errors))
    return LayerGrams(acc.stacked(out.shape[0], out.device), acc.chosen)


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    return "layernorm" if isinstance(m, nn.LayerNorm) else "rmsnorm"
