"""What the model does outside the chat batcher: classifying texts, and the smoke request every
model must answer before it takes traffic (at start and before a hot swap)."""

from __future__ import annotations

from llmft.config_serving import ServerLimits
from llmft.generation import complete_batch
from llmft.serve.loading import Served
from llmft.serve.parsing import parse_chat, parse_texts
from llmft.serve.protocol import Classification, Prediction
from llmft.tasks.classification import predict

SMOKE_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
SMOKE_TEXT = "The product arrived on time and works as described."


def classify(served: Served, ids: list[list[int]]) -> Classification:
    classes, probs = predict(served.model, ids, served.tokenizer.pad_token_id, batch_size=16, progress=False)
    return Classification(predictions=[
        Prediction(label=served.labels[c], score=p[c], scores=dict(zip(served.labels, p, strict=True)))
        for c, p in zip(classes, probs, strict=True)])


def smoke(served: Served, limits: ServerLimits) -> str:
    """A candidate must answer before it takes traffic: a non-empty reply, or a known label."""
    if served.classifier:
        ids = parse_texts({"inputs": [SMOKE_TEXT]}, served, limits)
        label = classify(served, ids).predictions[0].label
        if label not in served.labels:
            raise RuntimeError(f"smoke request returned unknown label {label!r}")
        return label
    request = parse_chat({"messages": SMOKE_MESSAGES, "max_tokens": 16}, served, limits)
    completion = complete_batch(served.model, served.tokenizer, [request.prompt], [16])[0]
    if not completion.text:
        raise RuntimeError("smoke request got an empty reply")
    return completion.text
