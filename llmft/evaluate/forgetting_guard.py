"""The forgetting guard: a candidate that forgot more than `promotion.max_forgetting` on the probe has its
trained update scaled back toward the base model (weight-space interpolation, as in WiSE-FT:
weights = base + share * (trained - base)) to the largest share whose answers to a second set of general
questions stay within the bound; the probe then measures that model, and the gate reads it.

The share is chosen on `probes/guard_general.jsonl`, a parallel form of the probe (the same kinds of
questions, none of the same ones, scored the same way), never on the probe itself: the probe stays a
fair measurement of the model that ships. A LoRA adapter keeps its form (its B matrices scaled: the
merged weights are then exactly the interpolation); a whole model (full, freeze) is saved interpolated.
Other adapter kinds (DoRA's normalised weights, prompt tuning's new tokens) are not linear in a share
and are left alone.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmft import plots
from llmft.base_model import load_model, load_tokenizer, resolve_base_model
from llmft.config import ModelConfig
from llmft.config_stages import ProbeSettings
from llmft.contracts import ProbeRun, TrainingResult
from llmft.evaluate.forgetting import load_probe, run_probe
from llmft.evaluate.stage import probe
from llmft.locations import scratch_dir
from llmft.precision import for_inference
from llmft.train.methods import is_adapter, load_trained

log = logging.getLogger(__name__)

GUARD_FILE = Path(__file__).parent / "probes" / "guard_general.jsonl"
# shares of the trained update tried, largest first: the first within the bound is kept (below 0.2 the
# candidate is mostly the base model, which the gate already measures)
SHARES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class GuardScan:
    """The guard questions' accuracy for the base and for each share tried; `chosen` is the largest
    share within the bound, or None when none was."""

    base: float
    by_share: dict[float, float] = field(default_factory=dict)
    chosen: float | None = None

    def line(self, bound: float) -> str:
        tried = ", ".join(f"{s:g}: {a:.3f}" for s, a in self.by_share.items())
        if self.chosen is None:
            return (f"forgetting guard: no share of the update down to {min(self.by_share):g} kept the guard "
                    f"questions within {bound:g} of the base's {self.base:.3f} ({tried}); the whole update was kept")
        return (f"forgetting guard: kept {self.chosen:g} of the trained update, the largest share whose guard "
                f"questions stayed within {bound:g} of the base's {self.base:.3f} ({tried})")


def choose_share(base: float, measure: Callable[[float], float], bound: float,
                 shares: tuple[float, ...] = SHARES) -> GuardScan:
    """Try `shares` largest first; keep the first whose guard accuracy is within `bound` of `base`."""
    scan = GuardScan(base=base)
    for share in shares:
        scan.by_share[share] = measure(share)
        if base - scan.by_share[share] <= bound + 1e-9:
            scan.chosen = share
            break
    return scan


def not_scalable(trained_dir: Path) -> str | None:
    """Why the saved model's update cannot be scaled by a share, or None when it can."""
    if not is_adapter(trained_dir):
        return None  # a whole model
    config = json.loads((trained_dir / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        return f"a {config.get('peft_type')} adapter is not linear in a share of its update"
    if config.get("use_dora"):
        return "a DoRA adapter's normalised weights are not linear in a share of its update"
    if config.get("modules_to_save"):
        return "an adapter that also saves whole modules (a new head) is not scaled"
    if not (trained_dir / ADAPTER_WEIGHTS).is_file():
        return f"no {ADAPTER_WEIGHTS} in the adapter folder"
    return None


class UpdateScaler:
    """One model whose weights can be set to base + share * (trained - base) in place; only the weights
    training changed are kept twice."""

    def __init__(self, base_model: Any, trained_model: Any):
        self.model = trained_model
        base = dict(base_model.named_parameters())
        self.start: dict[str, torch.Tensor] = {}
        self.delta: dict[str, torch.Tensor] = {}
        for name, param in trained_model.named_parameters():
            before = base.get(name)
            if before is None or before.shape != param.shape:
                raise ValueError(f"the trained model's {name} has no counterpart of its shape in the base model")
            if not torch.equal(before, param):
                self.start[name] = before.detach().float().clone()
                self.delta[name] = param.detach().float() - self.start[name]

    @torch.no_grad()
    def set(self, share: float) -> Any:
        for name, param in self.model.named_parameters():
            if name in self.delta:
                param.copy_(self.start[name] + share * self.delta[name])
        return self.model


def guard_accuracy(model: Any, tokenizer: Any, questions: list[dict[str, Any]], settings: ProbeSettings,
                   desc: str) -> float:
    return run_probe(model, tokenizer, questions, settings.max_new_tokens, settings.batch_size, desc=desc).accuracy


def save_scaled(trained_dir: Path, share: float, out: Path, scaler: UpdateScaler) -> Path:
    """The model at `share` of its update, saved in the form `trained_dir` has (an adapter stays an
    adapter: its lora_B matrices times `share`)."""
    if is_adapter(trained_dir):
        shutil.copytree(trained_dir, out, dirs_exist_ok=True)
        tensors = load_file(str(trained_dir / ADAPTER_WEIGHTS))
        scaled = {k: (v * share if ".lora_B." in k else v) for k, v in tensors.items()}
        save_file(scaled, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    else:
        scaler.model.float()  # then the share is set in full precision
        model = scaler.set(share)
        model.save_pretrained(out)
        load_tokenizer(str(trained_dir)).save_pretrained(out)
    return out


def guard(trained_model: Path, training: TrainingResult, base_probe: ProbeRun, candidate_probe: ProbeRun,
          model: ModelConfig, settings: ProbeSettings, max_forgetting: float,
          enabled: bool) -> tuple[Path, TrainingResult, ProbeRun, GuardScan | None]:
    """The candidate as the gate will see it: unchanged unless it forgot more than `max_forgetting` on the
    probe; then scaled back to the share `choose_share` finds, saved, and probed again (in the gate's own
    precision). The scan, when one ran, is returned for the MLflow run."""
    if (not enabled or not candidate_probe.applicable or base_probe.accuracy is None
            or candidate_probe.accuracy is None or base_probe.accuracy - candidate_probe.accuracy <= max_forgetting):
        return trained_model, training, candidate_probe, None
    why = not_scalable(trained_model)
    if why is not None:
        note = f"forgetting guard: not applied ({why})"
        log.warning(note)
        return trained_model, training.model_copy(update={"guard_note": note}), candidate_probe, None
    base_path = resolve_base_model(model)
    scan, out = scan_and_save(base_path, trained_model, training.labels, settings, max_forgetting)
    note = scan.line(max_forgetting)
    log.warning(note)
    noted = training.model_copy(update={"guard_note": note})
    if out is None:
        return trained_model, noted, candidate_probe, scan
    probed = probe(lambda: load_trained(base_path, out, training.labels), settings, "probe guarded")
    return out, noted.model_copy(update={"update_share": scan.chosen}), probed, scan


def scan_and_save(base_path: str, trained_model: Path, labels: list[str] | None, settings: ProbeSettings,
                  bound: float) -> tuple[GuardScan, Path | None]:
    """The guard's scan (in bf16 where the CPU has it: the choice only needs the guard's answers) and the
    model at the chosen share, saved; no folder when no share was within `bound`."""
    tuned, tokenizer = load_trained(base_path, trained_model, labels)
    scaler = UpdateScaler(load_model(base_path), tuned)
    for_inference(tuned, "auto")
    questions = load_probe(GUARD_FILE)

    def measure(share: float) -> float:
        return guard_accuracy(scaler.set(share), tokenizer, questions, settings, f"guard {share:g}")

    scan = choose_share(measure(0.0), measure, bound)
    if scan.chosen is None:
        return scan, None
    return scan, save_scaled(trained_model, scan.chosen, scratch_dir("guarded-"), scaler)


def log_scan(scan: GuardScan, bound: float) -> None:
    """The guard's choice to the active MLflow run: the share kept, each share's guard accuracy, a plot."""
    import mlflow

    mlflow.log_metrics({"forgetting_guard/base_accuracy": scan.base,
                        **{f"forgetting_guard/accuracy_at_{s:g}": a for s, a in scan.by_share.items()}})
    mlflow.log_params({"forgetting_guard.update_share": scan.chosen if scan.chosen is not None else "none"})
    mlflow.set_tag("forgetting_guard", scan.line(bound)[:5000])
    mlflow.log_figure(plots.guard_scan(scan.base, scan.by_share, bound, scan.chosen), "plots/forgetting_guard.png")
