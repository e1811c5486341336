"""S4's parameter-matched FFN layouts: placement, widths, parameter counts against transformers'
own LlamaForCausalLM, every paper variant within 0.1% of its baseline, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tuneatlas.config import load_config
from tuneatlas.models.layouts import (
    WIDTH_MULTIPLE,
    expanded_layers,
    layout,
    llama_params,
    size_layouts,
)


@pytest.mark.parametrize(
    ("layers", "ratio", "position", "expanded"),
    [
        (12, 10, "first", [0]),
        (12, 50, "final", [6, 7, 8, 9, 10, 11]),
        (12, 70, "middle", [2, 3, 4, 5, 6, 7, 8, 9]),  # floor(8.4) = 8 layers around L/2
        (24, 30, "middle", list(range(8, 15))),  # floor(7.2) = 7
        (24, 90, "final", list(range(3, 24))),  # floor(21.6) = 21
    ],
)
def test_expanded_layers_follow_the_study(layers, ratio, position, expanded):
    assert list(expanded_layers(layers, ratio, position)) == expanded
    widths = layout(layers, 64, 128, 100, ratio, position).ffn_widths
    assert [i for i, w in enumerate(widths) if w] == expanded


@pytest.mark.parametrize(("layers", "width"), [(2, 128), (3, 96)])
def test_parameter_count_equals_transformers_llama(layers, width):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=101,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    assert llama_params(64, [width] * layers, 101) == sum(p.numel() for p in model.parameters())
    # an FFN-inactive layer drops exactly its MLP and the RMSNorm before it
    layer = model.model.layers[0]
    ffn = sum(
        p.numel() for p in (*layer.mlp.parameters(), *layer.post_attention_layernorm.parameters())
    )
    assert llama_params(64, [width, 0], 101) == llama_params(64, [width, width], 101) - ffn


def test_every_paper_variant_matches_its_baseline_within_a_tenth_of_a_percent(repo):
    s4 = load_config(repo / "paper.yaml")["studies"]["s4"]
    for size, arch in s4["sizes"].items():
        variants = size_layouts(arch, s4["ratios"], s4["positions"], s4["vocab_size"])
        assert len(variants) == 16, size  # 15 variants + baseline
        base = variants["baseline"]
        # the paper's size names count the parameters outside the embeddings and the LM head
        named = {"285M": 285e6, "570M": 570e6, "2B": 2.28e9}[size]
        embeddings = 2 * s4["vocab_size"] * arch["hidden_size"]
        assert abs(base.params - embeddings - named) / named < 0.01
        for name, lay in variants.items():
            assert abs(lay.rel_diff) < 1e-3, (size, name, lay.rel_diff)
            assert lay.params == llama_params(arch["hidden_size"], lay.ffn_widths, s4["vocab_size"])
            assert lay.baseline_params == base.params
            wide = {w for w in lay.ffn_widths if w}
            assert len(wide) == 1 and wide.pop() % WIDTH_MULTIPLE == 0


def test_a_ratio_that_expands_no_layer_is_refused():
    with pytest.raises(ValueError, match="expands floor"):
        expanded_layers(4, 10, "first")
    with pytest.raises(ValueError, match="position"):
        expanded_layers(4, 50, "centre")


def test_layouts_cli_prints_every_variant_of_every_size(repo):
    def layouts(*extra):
        cmd = [sys.executable, "-m", "tuneatlas", "layouts", str(repo / "paper.yaml"), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    rows = json.loads(layouts("--json"))
    assert len(rows) == 3 * 16  # 285M, 570M, 2B: 15 variants + baseline each
    row = next(r for r in rows if (r["size"], r["variant"]) == ("285M", "final_90"))
    assert row["ffn_widths"] == [0, 0] + [5376] * 10  # 12 x 4480 over 10 layers, to 64
    assert row["baseline_params"] - row["params"] == 2560  # the two dropped RMSNorms, net
    worst = max(abs(r["rel_diff"]) for r in rows)
    assert f"largest |rel_diff|: {worst:.2e}" in layouts()
