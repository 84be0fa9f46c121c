"""Many prompts, one model, no server: the generation behind evaluation, the forgetting probe,
self-play pairs and augmentation.

It runs on the server's continuous batcher (`serve/scheduler.py`) where the model's cache allows
(`scheduler.supports`): a finished row's place goes to the next prompt at once, and the start the
prompts share (the task's instruction; a few-shot prompt's worked examples, thousands of tokens) is
prefilled once instead of once per row. Other models use static left-padded batches
(`generation.complete_batch`). Both decode greedily unless `sampling` says otherwise.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from llmft.generation import Sampling, complete_batch

SHARED_START_TOKENS = 4096  # a few-shot prompt's worked examples (eval.few_shot_max_tokens) fit under it


def generate(model: Any, tokenizer: Any, prompt_texts: list[str], max_new_tokens: int,
             batch_size: int, desc: str = "generate", sampling: Sampling | None = None,
             engine: str = "auto") -> list[str]:
    """Outputs for `prompt_texts`, in their order, with a progress bar; at most `batch_size` rows
    decode at once. engine: auto (continuous where supported), continuous or static."""
    # the forgetting probe's answer matching (and the replay set through it) imports without torch
    from llmft.serve import scheduler  # start-up: torch

    sampling = sampling or Sampling()
    model.eval()
    continuous = engine == "continuous" or (engine == "auto" and scheduler.supports(model))
    with tqdm(total=len(prompt_texts), desc=desc, unit="row", dynamic_ncols=True) as bar:
        if continuous:
            ids = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
            done = scheduler.complete_all(model, tokenizer, ids, max_new_tokens, sampling, batch_size,
                                          SHARED_START_TOKENS, bar.update)
            return [c.text for c in done]
        return _static(model, tokenizer, prompt_texts, max_new_tokens, batch_size, sampling, bar)


def _static(model: Any, tokenizer: Any, prompt_texts: list[str], max_new_tokens: int, batch_size: int,
            sampling: Sampling, bar: Any) -> list[str]:
    """`batch_size` prompts at a time over length-sorted prompts (less padding); batch_size=1 is the
    unbatched path."""
    order = sorted(range(len(prompt_texts)), key=lambda i: len(prompt_texts[i]))
    outputs: list[str] = [""] * len(prompt_texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        done = complete_batch(model, tokenizer, [prompt_texts[i] for i in idx], [max_new_tokens] * len(idx),
                              sampling)
        for i, completion in zip(idx, done, strict=True):
            outputs[i] = completion.text
        bar.update(len(idx))
    return outputs
