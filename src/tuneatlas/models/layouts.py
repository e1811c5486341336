"""S4's parameter-matched FFN layouts of a LLaMA-style model.

A variant (position, ratio r) of an L-layer baseline with FFN width d_f keeps every layer's
attention, makes floor(r L / 100) layers *FFN-expanded* (width d'_f > d_f) and the others
*FFN-inactive* (attention only: no FFN and no pre-FFN RMSNorm). The expanded layers sit

- first: from layer 1 (index 0) on;
- middle: symmetric around L/2 (start = floor((L - n) / 2));
- final: ending at the last layer.

d'_f is chosen so that the total parameter count matches the baseline's: the FFN parameters
(3 d d_f + d per layer, SwiGLU's gate/up/down projections and the RMSNorm before them) that the
inactive layers give up are spread over the expanded ones, and d'_f is rounded to a multiple of
64 (GPU-friendly matmul shapes; `multiple` = 1 for a toy model, whose parameter count is too
small for 64 to land within 0.1%). `rel_diff` is the residual of that rounding. r = 100 is
the baseline itself.

Parameter count (transformers' LlamaForCausalLM, no biases, as many key/value heads as query
heads): embeddings V d, per layer 4 d^2 (q, k, v, o) + d (input RMSNorm) [+ d + 3 d w for an
FFN of width w > 0], a final RMSNorm d, and an untied LM head V d.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

POSITIONS = ("first", "middle", "final")
WIDTH_MULTIPLE = 64


def expanded_layers(num_layers: int, ratio: int, position: str) -> range:
    """Indices of the FFN-expanded layers of variant (position, ratio)."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if not 1 <= ratio <= 100:
        raise ValueError(f"ratio is a percentage of layers in 1..100, got {ratio}")
    n = ratio * num_layers // 100
    if n == 0:
        raise ValueError(
            f"ratio {ratio}% of {num_layers} layers expands floor({ratio * num_layers}/100) = 0"
            " layers; use a larger ratio or more layers"
        )
    start = {"first": 0, "middle": (num_layers - n) // 2, "final": num_layers - n}[position]
    return range(start, start + n)


def llama_params(
    hidden_size: int, ffn_widths: list[int], vocab_size: int, tie_embeddings: bool = False
) -> int:
    """Parameters of a LLaMA-style causal LM whose layer i has an FFN of width ffn_widths[i]
    (0 = none)."""
    d = hidden_size
    layers = sum(4 * d * d + d + ((d + 3 * d * w) if w else 0) for w in ffn_widths)
    return vocab_size * d * (1 if tie_embeddings else 2) + layers + d


@dataclass(frozen=True)
class Layout:
    position: str | None  # first / middle / final; None for the baseline
    ratio: int  # percent of FFN-expanded layers; 100 = the baseline
    ffn_widths: list[int]  # per layer, 0 = FFN-inactive
    params: int
    baseline_params: int
    rel_diff: float  # (params - baseline_params) / baseline_params

    @property
    def variant(self) -> str:
        """ "baseline" or "<position>_<ratio>"."""
        return "baseline" if self.position is None else f"{self.position}_{self.ratio}"

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, **asdict(self)}


def layout(
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    vocab_size: int,
    ratio: int = 100,
    position: str = "first",
    multiple: int = WIDTH_MULTIPLE,
) -> Layout:
    """The per-layer FFN widths of variant (position, ratio); ratio 100 = the baseline."""
    baseline = [intermediate_size] * num_layers
    base_params = llama_params(hidden_size, baseline, vocab_size)
    if ratio == 100:
        return Layout(None, 100, baseline, base_params, base_params, 0.0)
    expanded = expanded_layers(num_layers, ratio, position)
    d, n = hidden_size, len(expanded)
    # the FFN budget of the baseline, over n expanded layers (each pays its own RMSNorm d)
    budget = num_layers * (3 * d * intermediate_size + d) - n * d
    width = max(multiple, round(budget / (3 * d * n) / multiple) * multiple)
    widths = [width if i in expanded else 0 for i in range(num_layers)]
    params = llama_params(hidden_size, widths, vocab_size)
    rel = (params - base_params) / base_params
    return Layout(position, ratio, widths, params, base_params, rel)


def size_layouts(
    arch: dict[str, Any],
    ratios: list[int],
    positions: list[str],
    vocab_size: int,
    multiple: int = WIDTH_MULTIPLE,
) -> dict[str, Layout]:
    """Baseline + every (position, ratio) variant of one size (`studies.s4.sizes.<size>`)."""
    dims = (arch["num_layers"], arch["hidden_size"], arch["intermediate_size"], vocab_size)
    out = {"baseline": layout(*dims)}
    for position in positions:
        for ratio in ratios:
            if ratio != 100:
                lay = layout(*dims, ratio=ratio, position=position, multiple=multiple)
                out[lay.variant] = lay
    return out


def s4_layouts(s4: dict[str, Any]) -> dict[str, dict[str, Layout]]:
    """Size -> its layouts, for a validated `studies.s4` section."""
    return {
        size: size_layouts(
            arch, s4["ratios"], s4["positions"], s4["vocab_size"], s4["width_multiple"]
        )
        for size, arch in s4["sizes"].items()
    }
