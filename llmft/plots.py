"""Figures logged to MLflow: what people would rather see than read (the data stage's own, token lengths and
class balance, are in `data/figures.py`)."""

from __future__ import annotations

from typing import Any

from llmft.evaluate.slices import ROLE_NAMES, roles
from llmft.evaluate.text_metrics import LOWER_IS_BETTER


def loss_curve(history: list[dict[str, float]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    points = [(h["step"], h["loss"]) for h in history if "loss" in h]
    if points:
        ax.plot(*zip(*points, strict=True), label="train loss")
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", color="C1", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Fine-tuning loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def metric_comparison(metrics: dict[str, dict[str, float]], names: list[str]) -> Any:
    """Horizontal grouped bars, one group per metric, one bar per model (base, candidate, champion)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m, values in metrics.items() if values]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) * max(len(models), 1) / 2 + 1.5))
    height = 0.8 / max(len(models), 1)
    top = 1.0
    for i, model in enumerate(models):
        values = [metrics[model].get(n, 0.0) for n in names]
        top = max([top, *values])
        ax.barh([j + i * height for j in range(len(names))], values, height=height, label=model)
    labels = [f"{n} (lower is better)" if n in LOWER_IS_BETTER else n for n in names]
    ax.set_yticks([j + height * (len(models) - 1) / 2 for j in range(len(names))], labels)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.05)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Test split: " + " vs ".join(models))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=max(len(models), 1), frameon=False)
    fig.tight_layout()
    return fig


def confusion_matrix(matrix: list[list[int]], labels: list[str], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    peak = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def preference_rewards(history: list[dict[str, float]]) -> Any:
    """Preference training: chosen and rejected rewards (left), their margin and accuracy (right),
    per logged training step, with the validation values as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rewards, margin) = plt.subplots(1, 2, figsize=(10, 3.5))
    for prefix, style, where in (("", "-", "train"), ("eval_", "o", "validation")):
        for key, color in (("rewards/chosen", "C2"), ("rewards/rejected", "C3")):
            points = [(h["step"], h[prefix + key]) for h in history if prefix + key in h]
            if points:
                rewards.plot(*zip(*points, strict=True), style, color=color, label=f"{where} {key.split('/')[1]}")
        for key, color in (("rewards/margin", "C0"), ("rewards/accuracy", "C1")):
            points = [(h["step"], h[prefix + key]) for h in history if prefix + key in h]
            if points:
                margin.plot(*zip(*points, strict=True), style, color=color, label=f"{where} {key.split('/')[1]}")
    rewards.set_title("Rewards")
    margin.set_title("Reward margin and accuracy")
    for ax in (rewards, margin):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def slice_metric(report: Any) -> Any:
    """The bias check as bars: one group per slice (largest first, as listed), one bar per model; the
    fine-tuned model's overall value as a dashed line, so a slice below (or above) it stands out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = roles(report)
    slices = report.slices
    fig, ax = plt.subplots(figsize=(8.5, 0.35 * len(slices) * max(len(models), 1) / 2 + 1.8))
    height = 0.8 / max(len(models), 1)
    for i, role in enumerate(models):
        values = [s.values.get(role) for s in slices]
        ax.barh([j + i * height for j in range(len(slices))], [v if v is not None else 0.0 for v in values],
                height=height, label=ROLE_NAMES[role])
    overall = report.overall.get("finetuned")
    if overall is not None:
        ax.axvline(overall, color="black", linestyle="--", linewidth=1, label="fine-tuned, all rows")
    labels = [f"{s.name[:30]} ({s.rows})" + (" <- worst" if s.name == report.worst else "") for s in slices]
    ax.set_yticks([j + height * (len(models) - 1) / 2 for j in range(len(slices))], labels)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    way = "higher" if report.higher_is_better else "lower"
    ax.set_xlabel(f"{report.metric} ({way} is better)")
    shown = f"{len(slices)} of {report.total} slices" if report.left_out else f"{len(slices)} slices"
    ax.set_title(f"{report.metric} by {report.column} ({shown}; rows in brackets)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)  # clear of the bars
    fig.tight_layout()
    return fig


def guard_scan(base: float, by_share: dict[float, float], bound: float, chosen: float | None) -> Any:
    """The forgetting guard's guard-question accuracy per share of the trained update, against the bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    shares = sorted(by_share)
    ax.plot(shares, [by_share[s] for s in shares], marker="o", label="share of the update")
    ax.axhline(base, color="C2", linestyle="--", label="base model")
    ax.axhline(base - bound, color="C3", linestyle=":", label="base - promotion.max_forgetting")
    if chosen is not None:
        ax.plot([chosen], [by_share[chosen]], marker="*", markersize=14, color="C1", linestyle="", label="kept")
    ax.set_xlabel("share of the trained update")
    ax.set_ylabel("guard questions answered")
    ax.set_title("Forgetting guard")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
