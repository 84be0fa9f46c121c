"""The data stage's figures, logged to MLflow with the exported dataset: token lengths and class balance per
split. (The training and evaluation figures are in `llmft/plots.py`, which reads evaluation modules that
themselves read the data stages.)"""

from __future__ import annotations

from typing import Any


def token_lengths(lengths: dict[str, list[int]], max_seq_length: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in lengths.items():
        if values:
            ax.hist(values, bins=30, alpha=0.6, label=f"{name} ({len(values)})")
    ax.axvline(max_seq_length, color="red", linestyle="--", label=f"max_seq_length {max_seq_length}")
    ax.set_xlabel("tokens per example (chat template applied)")
    ax.set_ylabel("examples")
    ax.set_title("Token lengths by split")
    ax.legend()
    fig.tight_layout()
    return fig


def class_balance(counts: dict[str, dict[str, int]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({label for split in counts.values() for label in split}, key=str)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(counts), 1)
    for i, (name, split) in enumerate(counts.items()):
        ax.bar([j + i * width for j in range(len(labels))], [split.get(label, 0) for label in labels],
               width=width, label=name)
    ax.set_xticks([j + width * (len(counts) - 1) / 2 for j in range(len(labels))], labels)
    ax.set_ylabel("examples")
    ax.set_title("Class balance by split")
    ax.legend()
    fig.tight_layout()
    return fig
