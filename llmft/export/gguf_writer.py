"""Write a Llama-architecture causal LM as a GGUF file (f16 or Q8_0) with the `gguf` package.

What llama.cpp (and Ollama, which embeds it) needs, and what `transformers` reads back with
`gguf_file=`: the hyper-parameters under `llama.*`, the byte-level BPE tokenizer (tokens, token
types, merges, special ids, whether BOS is added), the chat template, and the tensors under
llama.cpp's names. Q and K projections are stored with each head's rotary halves interleaved,
because llama.cpp applies RoPE to adjacent pairs while Hugging Face rotates first half against
second half; transformers undoes this on load, so the round trip is the proof.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmft.errors import UserFacingError

log = logging.getLogger(__name__)

SUPPORTED = "the Llama family (LlamaForCausalLM, model_type llama) with a byte-level BPE tokenizer, e.g. SmolLM2"
QUANT_TYPES = ("f16", "q8_0")

# Hugging Face parameter name (inside a decoder layer) -> llama.cpp tensor name
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


class ExportError(UserFacingError, RuntimeError):
    """The model cannot be exported to GGUF (architecture, tokenizer or settings)."""


@dataclass
class TokenizerMetadata:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]  # bos, eos, unk, pad
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def architecture_of(model: Any) -> str:
    """The model's class (what it really is), not `config.architectures` (what it was saved as)."""
    return type(model).__name__


def check_supported(model: Any) -> None:
    """One clear line for anything this writer would get wrong, before any file is written."""
    config = model.config
    arch, model_type = architecture_of(model), getattr(config, "model_type", "?")
    if model_type != "llama" or arch != "LlamaForCausalLM":
        raise ExportError(f"cannot export {arch} (model_type {model_type}) to GGUF: supported is {SUPPORTED}")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise ExportError(f"cannot export {arch} with rope type {rope_type!r} to GGUF: only plain RoPE is "
                          f"supported ({SUPPORTED})")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ExportError(f"cannot export {arch} with attention/MLP biases to GGUF: supported is {SUPPORTED}")


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    if isinstance(rope, dict) and "rope_theta" in rope:
        return float(rope["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _has_byte_level(node: dict[str, Any] | None) -> bool:
    if not node:
        return False
    if node.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(child) for child in node.get("pretokenizers", []))


def _guess_pre(tokens: list[str]) -> str:
    """llama.cpp picks its pre-tokenizer regex by name; SmolLM's vocabulary has its own."""
    if len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]:
        return "smollm"
    log.warning("unknown byte-level BPE vocabulary: writing tokenizer.ggml.pre=default (GPT-2 split); set "
                "export.tokenizer_pre if llama.cpp tokenizes differently from transformers")
    return "default"


def tokenizer_metadata(tokenizer: Any, vocab_size: int, pre: str | None = None) -> TokenizerMetadata:
    """Tokens, types, merges and special ids from a fast (tokenizers-backed) byte-level BPE tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"cannot export tokenizer {type(tokenizer).__name__} to GGUF: it needs a fast "
                          f"(tokenizer.json) tokenizer; supported is {SUPPORTED}")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _has_byte_level(spec.get("pre_tokenizer")):
        kind = "SentencePiece-style BPE" if model.get("byte_fallback") else model.get("type")
        raise ExportError(f"cannot export a {kind} tokenizer to GGUF: supported is {SUPPORTED}")
    by_id: dict[int, str] = {index: token for token, index in model["vocab"].items()}
    types = {index: _NORMAL for index in by_id}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = _CONTROL if added.get("special") else _USER_DEFINED
    count = max(vocab_size, max(by_id) + 1)
    if count > vocab_size:
        raise ExportError(f"tokenizer has {count} tokens but the model's embedding has {vocab_size} rows")
    # rows of the embedding no token uses still need a name: llama.cpp expects one token per row
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(count)]
    token_types = [types.get(i, _UNUSED) for i in range(count)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special_ids = {name: int(value) for name in ("bos", "eos", "unk", "pad")
                   if (value := getattr(tokenizer, f"{name}_token_id", None)) is not None}
    # what the tokenizer really does with plain text, not what its config claims
    probe = tokenizer("a")["input_ids"]
    add_bos = bool(probe) and "bos" in special_ids and probe[0] == special_ids["bos"]
    add_eos = bool(probe) and "eos" in special_ids and probe[-1] == special_ids["eos"]
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return TokenizerMetadata(tokens=tokens, token_types=token_types, merges=merges, pre=pre or _guess_pre(tokens),
                             special_ids=special_ids, add_bos=add_bos, add_eos=add_eos, chat_template=template)


def interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from [first half | second half] (HF rotate_half) to pairs (x0, x_d/2), (x1, ...):
    the adjacent-pair layout llama.cpp's RoPE for Llama expects."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensor_name(hf_name: str) -> str | None:
    if hf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[hf_name]
    match = _LAYER.match(hf_name)
    if match and match.group(2) in _LAYER_TENSORS:
        return f"blk.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}"
    return None


def llama_tensors(state_dict: dict[str, Any], config: Any) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) for every weight, Q/K interleaved, the tied head left out."""
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out: list[tuple[str, np.ndarray]] = []
    for hf_name, tensor in state_dict.items():
        if "rotary_emb" in hf_name or (tied and hf_name == "lm_head.weight"):
            continue  # inv_freq is recomputed from rope.freq_base; a tied head is token_embd itself
        name = gguf_tensor_name(hf_name)
        if name is None:
            raise ExportError(f"cannot export tensor {hf_name!r} to GGUF: not part of {SUPPORTED}")
        array = tensor.detach().float().cpu().numpy()
        if name.endswith("attn_q.weight"):
            array = interleave_rotary(array, config.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            array = interleave_rotary(array, config.num_key_value_heads)
        out.append((name, np.ascontiguousarray(array)))
    return out


def _encode(array: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """(data, GGML type): norms stay f32 (tiny, precision-sensitive), matrices f16 or Q8_0."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if array.ndim == 1:
        return array.astype(np.float32), GGMLQuantizationType.F32
    if quant == "q8_0" and array.shape[-1] % 32 == 0:  # Q8_0 blocks are 32 values of one row
        return quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return array.astype(np.float16), GGMLQuantizationType.F16


def _add_tokenizer(writer: Any, vocab: Any) -> None:
    """The tokenizer as llama.cpp reads it: byte-level BPE tokens, merges, special ids, chat template."""
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for key, token_id in vocab.special_ids.items():
        adders[key](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def write_gguf(model: Any, tokenizer: Any, path: Path, quant: str = "f16", name: str = "model",
               tokenizer_pre: str | None = None, description: str | None = None) -> Path:
    """Write `model` (a Llama causal LM in full precision) and its tokenizer to `path` as GGUF."""
    from gguf import GGML_QUANT_VERSION, GGUFWriter, LlamaFileType

    if quant not in QUANT_TYPES:
        raise ExportError(f"GGUF type {quant!r} is not supported; choose from {', '.join(QUANT_TYPES)}")
    config = model.config
    check_supported(model)
    vocab = tokenizer_metadata(tokenizer, int(config.vocab_size), tokenizer_pre)
    tensors = llama_tensors(model.state_dict(), config)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")  # never leave a truncated file under the final name
    writer = GGUFWriter(tmp, "llama")
    writer.add_type("model")
    writer.add_name(name)
    if description:
        writer.add_description(description)
    writer.add_file_type(LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    head_dim = _head_dim(config)
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)

    _add_tokenizer(writer, vocab)

    for tensor_name, array in tensors:
        data, ggml_type = _encode(array, quant)
        writer.add_tensor(tensor_name, data, raw_dtype=ggml_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path
