"""S4's LLaMA-style causal LM with a per-layer FFN width (0 = the layer has no FFN).

transformers' Llama components (pre-RMSNorm, SwiGLU FFN, RoPE); the config's `ffn_widths`
gives each layer's FFN width, and an FFN-inactive layer has neither the FFN nor the RMSNorm
before it (attention only). Importing this module registers the config and model with the Auto
classes (model type `tuneatlas_llama_ffn`), so `AutoModelForCausalLM.from_pretrained(dir)`
round-trips a saved model and lm-evaluation-harness's HF model class loads it in this process;
a fresh process must import `tuneatlas.models.llama_ffn` first.
"""

from __future__ import annotations

from types import SimpleNamespace

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaMLP, LlamaModel

MODEL_TYPE = "tuneatlas_llama_ffn"


@strict
class FFNLlamaConfig(LlamaConfig):
    """A LlamaConfig plus `ffn_widths` (one per layer; None = `intermediate_size` everywhere)."""

    model_type = MODEL_TYPE
    ffn_widths: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.ffn_widths is None:
            self.ffn_widths = [self.intermediate_size] * self.num_hidden_layers
        self.ffn_widths = [int(w) for w in self.ffn_widths]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        if len(self.ffn_widths) != self.num_hidden_layers:
            raise ValueError(
                f"ffn_widths has {len(self.ffn_widths)} entries for {self.num_hidden_layers} layers"
            )
        if any(w < 0 for w in self.ffn_widths):
            raise ValueError(f"ffn_widths must be >= 0 (0 = no FFN), got {self.ffn_widths}")


class FFNLlamaDecoderLayer(LlamaDecoderLayer):
    """A Llama decoder layer whose FFN has the config's width for this layer; without one
    (width 0) the layer is attention + residual only."""

    def __init__(self, config: FFNLlamaConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        width = config.ffn_widths[layer_idx]
        if width == 0:
            self.mlp = None
            self.post_attention_layernorm = None
        elif width != config.intermediate_size:
            view = SimpleNamespace(
                hidden_size=config.hidden_size,
                intermediate_size=width,
                mlp_bias=config.mlp_bias,
                hidden_act=config.hidden_act,
            )
            self.mlp = LlamaMLP(view)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, **kwargs):
        if self.mlp is not None:
            return super().forward(
                hidden_states, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
        attended, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            **kwargs,
        )
        return hidden_states + attended


class FFNLlamaModel(LlamaModel):
    config_class = FFNLlamaConfig

    def __init__(self, config: FFNLlamaConfig) -> None:
        super().__init__(config)
        self.layers = type(self.layers)(
            FFNLlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.post_init()


class FFNLlamaForCausalLM(LlamaForCausalLM):
    config_class = FFNLlamaConfig
    _no_split_modules = ["FFNLlamaDecoderLayer"]

    def __init__(self, config: FFNLlamaConfig) -> None:
        super().__init__(config)
        self.model = FFNLlamaModel(config)
        self.post_init()


AutoConfig.register(MODEL_TYPE, FFNLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(FFNLlamaConfig, FFNLlamaForCausalLM, exist_ok=True)
