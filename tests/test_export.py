"""Export for llama.cpp and Ollama: a model registered as a real MLflow version, exported (merged
safetensors, f16 and Q8_0 GGUF, Modelfile), and the GGUFs loaded back with transformers. The plumbing
runs on the tiny model of the real architecture; the round trip's tolerances are also held on the
embedded SmolLM2 (guard tier).

Stated tolerances (relative to the merged model's max |logit| over the same positions, teacher-forced
over three real conversations with the trained system prompt): f16 max |diff| <= 1%, mean <= 0.2%,
top-1 agreement >= 98%; Q8_0 max |diff| <= 15%, mean <= 1%, top-1 agreement >= 90%.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmft.config import ConfigError, ExportConfig
from llmft.config_files import load_config
from llmft.export.gguf_writer import ExportError, interleave_rotary
from llmft.export.ollama import go_template, inspect_template, modelfile
from llmft.export.stage import export_model, export_version

ROOT = Path(__file__).resolve().parents[1]
NAME = "products-extraction"
INSTRUCTION = "Extract the product attributes from the listing as a JSON object."
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _register_and_export(model_path: str, tokenizer, root: Path):
    """The model registered as a version (as the register step does, instruction tag included), made
    champion, and exported through the stage the pipeline runs."""
    import mlflow
    import torch

    from llmft.base_model import load_model
    from llmft.registry.versions import register_model, set_alias

    torch.set_num_threads(2)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")  # the caller resets it
    experiment = mlflow.create_experiment("export", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        registered = register_model(load_model(model_path), tokenizer, NAME,
                                    {"task": "extraction", "instruction": INSTRUCTION})
    set_alias(NAME, registered.version)
    result = export_version(NAME, ExportConfig(), out_root=root / "exports")
    return result, run.info.run_id


@pytest.fixture(scope="module")
def exported(tiny_model_path: str, tokenizer, tmp_path_factory: pytest.TempPathFactory):
    import mlflow

    try:
        yield _register_and_export(tiny_model_path, tokenizer, tmp_path_factory.mktemp("export"))
    finally:
        mlflow.set_tracking_uri("")


def _assert_round_trip_within_tolerance(result) -> None:
    checks = {check.quant: check for check in result.checks}
    assert set(checks) == {"f16", "q8_0"}
    f16, q8 = checks["f16"], checks["q8_0"]
    assert f16.tokenizer_matches is True  # the GGUF's own tokenizer gives the same ids
    assert f16.tokens >= 150
    assert f16.max_abs_diff <= 0.01 * f16.logit_scale, f16
    assert f16.mean_abs_diff <= 0.002 * f16.logit_scale, f16
    assert f16.top1_agreement >= 0.98, f16
    assert q8.max_abs_diff <= 0.15 * q8.logit_scale, q8
    assert q8.mean_abs_diff <= 0.01 * q8.logit_scale, q8
    assert q8.top1_agreement >= 0.90, q8
    assert q8.max_abs_diff > f16.max_abs_diff  # the quantised file really is quantised
    assert all(check.passed for check in result.checks)
    print("round trip:", json.dumps([c.model_dump() for c in result.checks], indent=1))


def test_round_trip_logits_match_within_tolerance(exported):
    _assert_round_trip_within_tolerance(exported[0])


@pytest.mark.guard
def test_round_trip_on_the_real_model(base_model_path: str, tokenizer, tmp_path: Path):
    import mlflow

    try:
        _assert_round_trip_within_tolerance(_register_and_export(base_model_path, tokenizer, tmp_path)[0])
    finally:
        mlflow.set_tracking_uri("")


def test_files_merged_weights_and_gguf_metadata(exported, tiny_model_path: str, tokenizer):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from llmft.base_model import load_model

    result, _ = exported
    out = Path(result.output_dir)
    assert result.version == "1" and result.architecture == "LlamaForCausalLM"
    for name in ("merged/config.json", "merged/model.safetensors", "merged/tokenizer.json",
                 "merged/tokenizer_config.json", f"{NAME}-v1.f16.gguf", f"{NAME}-v1.q8_0.gguf", "Modelfile",
                 "checks.json"):
        assert (out / name).is_file(), name
    # the weights, not the files: the tiny model's tokenizer metadata is most of each file
    tensor_bytes = {quant: sum(int(t.n_bytes) for t in GGUFReader(out / f"{NAME}-v1.{quant}.gguf").tensors)
                    for quant in ("f16", "q8_0")}
    assert tensor_bytes["q8_0"] < 0.6 * tensor_bytes["f16"], tensor_bytes
    assert result.sizes[f"{NAME}-v1.q8_0.gguf"] < result.sizes[f"{NAME}-v1.f16.gguf"]

    # merged weights in HF layout load on their own and give the registered model's logits (f16 rounding)
    reference = load_model(tiny_model_path).eval()
    config = reference.config
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    ids = tokenizer("<|im_start|>user\nHello there<|im_end|>\n", return_tensors="pt").input_ids
    with torch.no_grad():
        ref_logits, merged_logits = reference(ids).logits, merged(ids).logits
    assert (ref_logits - merged_logits).abs().max() <= 0.01 * ref_logits.abs().max()

    reader = GGUFReader(out / f"{NAME}-v1.f16.gguf")
    fields = {key: field.contents() for key, field in reader.fields.items()
              if key.startswith(("general.", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos",
                                 "tokenizer.ggml.eos", "tokenizer.ggml.padding", "tokenizer.chat", "llama."))}
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == 2
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["llama.attention.head_count_kv"] == config.num_key_value_heads == 2
    assert fields["llama.rope.freq_base"] == 100000.0
    assert len(reader.fields["tokenizer.ggml.merges"].data) == 48900
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 49152
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied head: llama.cpp reuses token_embd
    # the stored K projection is llama.cpp's interleaved layout, which transformers turns back into ours
    stored = tensors["blk.0.attn_k.weight"].data.astype("float32")
    hf = reference.model.layers[0].self_attn.k_proj.weight.detach().numpy().astype("float16").astype("float32")
    assert not (stored == hf).all()
    restored = LlamaTensorProcessor(config={"num_attention_heads": config.num_attention_heads,
                                            "num_key_value_heads": config.num_key_value_heads}).process(
        stored, "blk.0.attn_k.weight").weights
    assert (restored == hf).all()


def test_modelfile_and_mlflow_record(exported):
    from mlflow import MlflowClient

    result, run_id = exported
    text = Path(result.modelfile).read_text()
    lines = text.splitlines()
    assert f"FROM ./{NAME}-v1.q8_0.gguf" in lines
    assert f'SYSTEM """{INSTRUCTION}"""' in lines  # the instruction recorded on the version
    for stop in ("<|im_end|>", "<|im_start|>", "<|endoftext|>"):
        assert f'PARAMETER stop "{stop}"' in lines
    assert 'TEMPLATE """{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n' in text
    assert f"{SMOLLM_SYSTEM}<|im_end|>" in text  # the template's own default when nothing sets a system turn
    assert "<|im_start|>assistant\n\"\"\"" in text

    client = MlflowClient()
    logged = {item.path for item in client.list_artifacts(run_id, "export")}
    assert {f"export/{NAME}-v1.f16.gguf", f"export/{NAME}-v1.q8_0.gguf", "export/Modelfile",
            "export/merged"} <= logged
    tags = client.get_model_version(NAME, "1").tags
    assert tags["export.uri"] == f"runs:/{run_id}/export"
    assert tags["export.check.f16"].startswith("pass") and tags["export.check.q8_0"].startswith("pass")


def test_go_template_renders_like_the_jinja_template(tokenizer):
    """The Go template's two branches, spelled out, against what transformers renders."""
    chat = inspect_template(tokenizer)
    assert chat.kind == "chatml" and chat.default_system == SMOLLM_SYSTEM
    template = go_template(chat.default_system)
    turn = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    jinja_default = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                  add_generation_prompt=True)
    assert jinja_default == f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n{turn}"
    # each branch of the Go template emits exactly this system block
    assert "{{ else }}" + f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n" + "{{ end }}" in template
    assert template.endswith('{{ end }}{{ end }}<|im_start|>assistant\n')
    assert "ne .Role \"system\"" in template  # system turns are not rendered twice
    text, _ = modelfile("m.gguf", tokenizer)
    assert "SYSTEM" not in text  # no recorded instruction: the template's default applies


def test_modelfile_keeps_a_baked_in_prompt_prefix(tokenizer):
    """Prompt tuning bakes its virtual tokens into the chat template as a constant prefix."""
    import copy

    tuned = copy.deepcopy(tokenizer)
    tuned.chat_template = "<|vt_0|><|vt_1|>" + tokenizer.chat_template
    chat = inspect_template(tuned)
    assert chat.kind == "chatml" and chat.prefix == "<|vt_0|><|vt_1|>" and chat.default_system == SMOLLM_SYSTEM
    text, _ = modelfile("m.gguf", tuned)
    assert 'TEMPLATE """<|vt_0|><|vt_1|>{{- if .System }}' in text
    tuned.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert inspect_template(tuned).kind == "unknown"
    assert "TEMPLATE" not in modelfile("m.gguf", tuned)[0].replace("no TEMPLATE", "")


def test_unsupported_architecture_is_one_clear_line(tokenizer, tmp_path: Path):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForSequenceClassification

    tiny = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(ExportError) as info:
        export_model(tiny, tokenizer, tmp_path / "gpt2", "tiny")
    message = str(info.value)
    assert "\n" not in message
    assert "GPT2LMHeadModel (model_type gpt2)" in message and "LlamaForCausalLM" in message
    assert not (tmp_path / "gpt2").exists()  # refused before anything was written

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64, architectures=["LlamaForSequenceClassification"])
    with pytest.raises(ExportError, match="LlamaForSequenceClassification"):
        export_model(LlamaForSequenceClassification(config), tokenizer, tmp_path / "cls", "cls")


def test_interleave_is_undone_by_transformers():
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    for heads, kv in ((9, 9), (9, 3)):
        weight = rng.standard_normal((kv * 8, 16)).astype(np.float32)
        stored = interleave_rotary(weight, kv)
        processor = LlamaTensorProcessor(config={"num_attention_heads": heads, "num_key_value_heads": kv})
        name = "blk.0.attn_q.weight" if heads == kv else "blk.0.attn_k.weight"
        assert np.array_equal(processor.process(stored, name).weights, weight)
        assert np.array_equal(stored[1], weight[4])  # pair (x0, x_d/2): llama.cpp's adjacent-pair RoPE


def test_export_config_is_checked():
    cfg = load_config(ROOT / "configs" / "finetune.yaml", ["export.quants=[f16]", "export.modelfile_quant=f16"])
    assert cfg.export.quants == ["f16"] and not cfg.export.after_promotion
    with pytest.raises(ConfigError, match="modelfile_quant"):
        load_config(ROOT / "configs" / "finetune.yaml", ["export.quants=[f16]"])
