"""Every method really trains a few steps (on the tiny model of the real architecture; same-seed-same-losses
also on the real model, in the guard tier); results load back in full precision."""

from pathlib import Path

import pytest
from conftest import TINY_AND_REAL

from llmft.chat_format import build_messages, encode_messages
from llmft.config_files import load_config
from llmft.train.loop import train
from llmft.train.methods import PROMPT_TOKEN, load_trained

INSTRUCTION = ("Extract the fields from the text. Answer with only a JSON object with the keys brand, category, "
               "color, material, size, price. Use null for anything not stated.")

LISTINGS = [("Lumora rain jacket | navy blue | nylon | Size M | $79.99",
             '{"brand": "Lumora", "category": "clothing", "color": "navy blue", "material": "nylon", "size": "M", '
             '"price": 79.99}'),
            ("Halden table lamp, teal, ceramic, only $34.00",
             '{"brand": "Halden", "category": "home", "color": "teal", "material": "ceramic", "size": null, '
             '"price": 34.0}')]

# a learning rate per method that moves the loss in 4 steps without diverging
METHODS = {"lora": 2e-3, "dora": 2e-3, "qlora": 2e-3, "full": 5e-5, "freeze": 1e-4, "prompt_tuning": 3e-2}


def _sft_examples(tokenizer):
    # one batch of 4: every step sees the same rows, so the loss must fall
    return [encode_messages(tokenizer, build_messages(INSTRUCTION, p, r)) for p, r in LISTINGS] * 2


def _cfg(method: str, *extra: str):
    return load_config(None, [f"train.method={method}", "train.max_steps=4", "train.batch_size=4",
                              f"train.learning_rate={METHODS[method]}", "train.warmup_ratio=0",
                              "train.eval_steps=null", *extra]).train


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_and_loads_in_full_precision(method: str, tiny_model_path: str, tokenizer, tmp_path: Path):
    import torch

    examples = _sft_examples(tokenizer)
    extra = ["train.freeze.trainable_layers=1"] if method == "freeze" else []  # of the tiny model's two blocks
    result = train(tiny_model_path, examples, examples[:2], _cfg(method, *extra), tmp_path, init_text=INSTRUCTION,
                   log_to_mlflow=False)
    assert result.steps == 4
    assert result.last_loss < result.first_loss  # the loss moved the right way
    assert 0 < result.trainable_parameters <= result.total_parameters
    if method in ("lora", "dora", "qlora", "prompt_tuning"):
        assert result.trainable_parameters < 0.05 * result.total_parameters
    model, tok = load_trained(tiny_model_path, result.output_dir)
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == torch.float32 and not hasattr(weight, "quant_state")  # never a 4-bit artifact
    if method == "freeze":  # only the last blocks moved
        base, _ = load_trained(tiny_model_path, tiny_model_path)
        assert torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
        assert not torch.equal(model.model.layers[-1].mlp.up_proj.weight, base.model.layers[-1].mlp.up_proj.weight)
    if method == "prompt_tuning":
        baked = [t for t in tok.get_added_vocab() if t.startswith(PROMPT_TOKEN.split("{")[0])]
        assert len(baked) == 16 and tok.chat_template.startswith(PROMPT_TOKEN.format(0))


def test_baked_prompt_tuning_matches_the_peft_model(tiny_model_path: str, tokenizer, tmp_path: Path):
    """The registered prompt-tuned model computes exactly what PEFT's virtual tokens computed."""
    import torch
    from peft import PeftModel

    from llmft.base_model import load_model
    from llmft.chat_format import render_generation_prompt

    examples = _sft_examples(tokenizer)
    result = train(tiny_model_path, examples, [], _cfg("prompt_tuning", "train.max_steps=2"), tmp_path,
                   init_text=INSTRUCTION, log_to_mlflow=False)
    peft_model = PeftModel.from_pretrained(load_model(tiny_model_path), result.output_dir).eval()
    baked, baked_tok = load_trained(tiny_model_path, result.output_dir)
    messages = build_messages(INSTRUCTION, LISTINGS[0][0])
    plain_ids = tokenizer(render_generation_prompt(tokenizer, messages), add_special_tokens=False,
                          return_tensors="pt")["input_ids"]
    baked_ids = baked_tok(render_generation_prompt(baked_tok, messages), add_special_tokens=False,
                          return_tensors="pt")["input_ids"]
    assert baked_ids.shape[1] == plain_ids.shape[1] + 16
    with torch.no_grad():
        expected = peft_model(input_ids=plain_ids).logits[0, -plain_ids.shape[1]:]
        got = baked.eval()(input_ids=baked_ids).logits[0, 16:, : expected.shape[-1]]
    assert torch.allclose(got, expected, atol=1e-4)


@TINY_AND_REAL
def test_same_seed_same_losses(model_path: str, tokenizer, tmp_path: Path):
    examples = _sft_examples(tokenizer)
    runs = [train(model_path, examples, [], _cfg("lora", "train.max_steps=3"), tmp_path / str(i),
                  log_to_mlflow=False) for i in range(2)]
    first, second = ([h["loss"] for h in r.history if "loss" in h] for r in runs)
    assert len(first) == 3 and first == second  # bit-identical on CPU, dropout masks included
    other = train(model_path, examples, [], _cfg("lora", "train.max_steps=3", "train.seed=7"),
                  tmp_path / "other", log_to_mlflow=False)
    assert [h["loss"] for h in other.history if "loss" in h] != first


def test_early_stopping_keeps_the_best_weights(tiny_model_path: str, tokenizer, tmp_path: Path):
    """A learning rate that wrecks the model: validation loss rises, training stops, the best weights return.
    Every saved checkpoint is an MLflow LoggedModel; the best one is tagged as kept, with the reason."""
    import mlflow

    examples = _sft_examples(tokenizer)
    cfg = _cfg("lora", "train.max_steps=12", "train.eval_steps=1", "train.early_stopping_patience=2",
               "train.learning_rate=0.05", "train.save_steps=1")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("early-stopping")
    with mlflow.start_run() as run:
        result = train(tiny_model_path, examples, examples[:2], cfg, tmp_path / "out",
                       checkpoint_dir=tmp_path / "checkpoints")
    assert result.stopped_early and result.steps < 12
    evals = [(h["step"], h["eval_loss"]) for h in result.history if "eval_loss" in h][:-1]  # last: after restore
    assert min(loss for _, loss in evals) < evals[-1][1]  # it got worse, which is why it stopped
    assert abs(result.validation_loss - result.best_validation_loss) < 1e-4  # measured on the restored best

    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    checkpoints = {int(m.tags["llmft.step"]): m for m in models if m.model_type == "checkpoint"}
    assert sorted(checkpoints) == list(range(1, result.steps + 1))
    kept = [step for step, m in checkpoints.items() if m.tags["llmft.kept"] == "true"]
    best_step = min(evals, key=lambda e: e[1])[0]
    assert kept == [best_step] and "lowest validation loss" in checkpoints[best_step].tags["llmft.kept_reason"]
    assert {m.key for m in checkpoints[best_step].metrics} == {"train_loss", "validation_loss"}


def test_gradient_accumulation_and_checkpointing(tiny_model_path: str, tokenizer, tmp_path: Path):
    examples = _sft_examples(tokenizer)
    cfg = _cfg("lora", "train.max_steps=2", "train.batch_size=2", "train.gradient_accumulation_steps=2",
               "train.gradient_checkpointing=true")
    result = train(tiny_model_path, examples, [], cfg, tmp_path, log_to_mlflow=False)
    assert result.steps == 2 and result.tokens == 2 * sum(len(e["input_ids"]) for e in examples)


def test_two_processes_through_accelerate(tiny_model_path: str, tokenizer, tmp_path: Path):
    """train.num_processes=2 on CPUs: accelerate starts two gloo ranks, each trains half of every step."""
    from llmft.train.launch import run_training

    examples = _sft_examples(tokenizer) * 2
    cfg = _cfg("lora", "train.max_steps=3", "train.batch_size=2", "train.num_processes=2")
    result = run_training(tiny_model_path, examples, [], cfg, tmp_path, None, None, None,
                          log_to_mlflow=False)
    assert result.num_processes == 2 and result.steps == 3
    lengths = [len(e["input_ids"]) for e in examples]
    assert 12 * min(lengths) <= result.tokens <= 12 * max(lengths)  # 3 steps x 2 ranks x 2 rows, summed over ranks
    assert result.last_loss < result.first_loss
    assert (Path(result.output_dir) / "adapter_model.safetensors").is_file()
