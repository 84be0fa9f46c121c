"""How long to train: `train.max_steps: auto`, the time budget, and the plan printed before training.

auto: steps = ceil(train.epochs x training rows / (batch_size x gradient_accumulation_steps x processes)),
cut to what fits in `train.max_minutes`.

The speed is measured, not assumed: before training, two forward+backward passes of one real batch
(rows around the median length, so padded like the length-grouped batches; the Trainer's own loss; no
optimizer step; the random state put back and the gradients cleared) are timed, and the faster one is
kept (the first pays one-off costs). Tokens per second from it give each step's and each validation's
cost; a step also pays for what the passes leave out (the optimizer step, gradient clipping, collation,
callbacks): `STEP_OVERHEAD`, from SmolLM2-135M LoRA on 2 CPU cores, whose first steps ran at 175
tokens/s where the passes measured 218. Chosen because it is cheap (two steps' worth of compute), uses
this machine under its current load, and decides the step count before the learning-rate schedule is
built (a stop decided mid-run would cut the schedule short). The planned steps fill `FILL` of the
budget (checkpoints are not in the estimate, and the machine's load varies). A stop at the budget
itself (`time_budget_callback`) holds the bound when the machine turns out slower than measured
(another job on its cores); the summary then says training stopped for the budget.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.config import TrainConfig

FILL = 0.9  # share of train.max_minutes the planned steps may take
STEP_OVERHEAD = 1.25  # a training step over its forward+backward pass (see above)
FORWARD_SHARE = 1 / 3  # a forward pass (validation) costs about a third of a forward+backward pass
CHECKPOINTING_COST = 4 / 3  # gradient checkpointing runs each forward twice (not active while measuring)


def example_tokens(example: dict[str, Any]) -> int:
    """Tokens a training example puts through the model (both answers of a preference pair)."""
    return len(example["input_ids"]) + len(example.get("rejected_input_ids") or ())


def epoch_steps(epochs: float, rows: int, batch_size: int, accumulation: int, processes: int = 1) -> int:
    """Optimizer steps that make `epochs` passes over `rows` (at least one)."""
    return max(1, math.ceil(epochs * rows / (batch_size * accumulation * processes)))


def budget_steps(budget_seconds: float, step_seconds: float, eval_seconds: float = 0.0,
                 eval_every: int | None = None, fill: float = FILL) -> int:
    """Steps whose training (and a validation every `eval_every` steps) fit `fill` of the budget (at least one)."""
    per_step = step_seconds + (eval_seconds / eval_every if eval_every else 0.0)
    return max(1, math.floor(fill * budget_seconds / per_step)) if per_step > 0 else 1


def timing_batch(examples: Sequence[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    """`batch_size` examples around the median length: a typical, little-padded batch."""
    ordered = sorted(examples, key=example_tokens)
    start = max(0, min(len(ordered) // 2 - batch_size // 2, len(ordered) - batch_size))
    return list(ordered[start:start + batch_size])


def time_passes(run_pass: Callable[[], None], passes: int = 2) -> float:
    """Seconds of the fastest of `passes` calls."""
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        run_pass()
        times.append(time.perf_counter() - t0)
    return min(times)


def checkpoint_max_steps(checkpoint: str | None) -> int | None:
    """The step count a checkpointed run planned: a resumed `auto` run keeps its plan (and its schedule)."""
    state = Path(checkpoint) / "trainer_state.json" if checkpoint else None
    if state is None or not state.is_file():
        return None
    steps = json.loads(state.read_text()).get("max_steps")
    return int(steps) if steps else None


def _thousands(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:,.0f}"


def _epochs(e: float) -> str:
    return f"{e:g} epoch" + ("" if e == 1 else "s")


@dataclass(frozen=True)
class Plan:
    """The training about to run, for the console, the summary and the time stop."""

    rows: int
    steps: int
    epochs: float  # passes over the training rows those steps make
    tokens: int  # tokens those steps put through the model (mean example length)
    tokens_per_second: float | None  # measured before training
    minutes: float | None  # estimate: steps and validations at the measured speed
    auto: bool  # train.max_steps: auto
    wanted_epochs: float  # train.epochs (auto)
    wanted_steps: int  # steps train.epochs needs (auto), or train.max_steps
    budget_minutes: float | None  # train.max_minutes where it applies (auto)
    batch: str  # "4 x 1 accumulation"
    resumed_steps: int | None = None  # a resumed run keeps the checkpoint's plan

    @property
    def capped(self) -> bool:
        """The time budget left out steps that train.epochs asked for."""
        return self.auto and self.steps < self.wanted_steps

    @property
    def budget_seconds(self) -> float | None:
        return self.budget_minutes * 60 if self.budget_minutes is not None else None

    def cap_reason(self) -> str | None:
        if not self.capped:
            return None
        return (f"the {self.budget_minutes:g}-min budget (train.max_minutes) fits {self.steps} of the "
                f"{self.wanted_steps} steps of train.epochs={self.wanted_epochs:g} at the measured "
                f"{self.tokens_per_second:,.0f} tokens/s: {self.epochs:.2f} epochs; raise train.max_minutes "
                "(or lower train.epochs) to change it")

    def lines(self) -> list[str]:
        """One line (two when the budget cut the steps)."""
        if self.auto:
            head = (f"training plan: {self.rows:,} rows x {_epochs(self.wanted_epochs)} = {self.wanted_steps} "
                    f"steps of {self.batch}")
            if self.capped:
                head += f"; {self.steps} steps fit the budget ({self.epochs:.2f} epochs)"
        else:
            head = (f"training plan: {self.rows:,} rows, {self.steps} steps of {self.batch} (train.max_steps) = "
                    f"{self.epochs:.2f} epochs")
        if self.resumed_steps is not None:
            head += f"; resuming a run planned for {self.resumed_steps} steps"
        head += f", ~{_thousands(self.tokens)} tokens"
        if self.minutes is not None and self.tokens_per_second:
            took = f"{self.minutes:.1f} min" if self.minutes >= 0.1 else f"{self.minutes * 60:.0f} s"
            head += f", ~{took} at {self.tokens_per_second:,.0f} tokens/s measured here"
        if self.budget_minutes is not None:
            head += f" (budget {self.budget_minutes:g} min, train.max_minutes)"
        reason = self.cap_reason()
        return [head, *([f"  {reason}"] if reason else [])]


def plan_training(cfg: TrainConfig, tokens: Sequence[int], validation_rows: int, tokens_per_second: float | None,
                  processes: int = 1, resumed_steps: int | None = None) -> Plan:
    """The steps to train and what they cost. `tokens`: each training example's token count;
    `resumed_steps`: the step count of the checkpoint an `auto` run resumes (its plan is kept)."""
    rows = len(tokens)
    per_step_rows = cfg.batch_size * cfg.gradient_accumulation_steps * processes
    mean_tokens = sum(tokens) / rows if rows else 0.0
    auto = cfg.max_steps == "auto"
    wanted = epoch_steps(cfg.epochs, rows, cfg.batch_size, cfg.gradient_accumulation_steps, processes) if auto \
        else int(cfg.max_steps)
    evaluating = validation_rows > 0 and cfg.eval_steps is not None
    step_seconds = eval_seconds = None
    if tokens_per_second:
        # processes run side by side: each does its share of the step's rows
        step_seconds = per_step_rows / processes * mean_tokens / tokens_per_second * STEP_OVERHEAD
        eval_seconds = (validation_rows / processes * mean_tokens / tokens_per_second * FORWARD_SHARE
                        if evaluating else 0.0)
    steps = wanted
    budget = cfg.max_minutes if auto else None
    if auto and resumed_steps is not None:
        steps = resumed_steps
    elif budget is not None and step_seconds is not None:
        steps = min(wanted, budget_steps(budget * 60, step_seconds, eval_seconds or 0.0,
                                         cfg.eval_steps if evaluating else None))
    minutes = None
    if step_seconds is not None:
        evaluations = (steps // cfg.eval_steps + 1) if evaluating and cfg.eval_steps else 0
        minutes = (steps * step_seconds + evaluations * (eval_seconds or 0.0)) / 60
    return Plan(rows=rows, steps=steps, epochs=steps * per_step_rows / rows if rows else 0.0,
                tokens=round(steps * per_step_rows * mean_tokens), tokens_per_second=tokens_per_second,
                minutes=minutes, auto=auto, wanted_epochs=cfg.epochs, wanted_steps=wanted, budget_minutes=budget,
                batch=f"{cfg.batch_size} x {cfg.gradient_accumulation_steps} accumulation"
                      + (f" x {processes} processes" if processes > 1 else ""),
                resumed_steps=resumed_steps if auto else None)


def measure_tokens_per_second(trainer: Any, collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
                              examples: Sequence[dict[str, Any]], cfg: TrainConfig) -> float:
    """Training tokens per second on this machine: two timed forward+backward passes of one real batch
    through `trainer.compute_loss` (see the module docstring). Across processes, the slowest one's."""
    import contextlib

    import torch

    batch = timing_batch(examples, cfg.batch_size)
    tokens = sum(example_tokens(e) for e in batch)
    model = trainer.model
    was_training = model.training
    model.train()
    cuda = torch.cuda.is_available()
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    # the Trainer's autocast, not yet active: on a GPU, and for bf16 on a CPU too (timed without it, a bf16
    # run on a CPU with AVX512-BF16 planned fp32's speed and stopped at half its budget)
    autocast = (torch.autocast("cuda" if cuda else "cpu", dtype=half)
                if half is not None and (cuda or half is torch.bfloat16) else contextlib.nullcontext())

    def one_pass() -> None:
        inputs = trainer._prepare_inputs(collator(batch))
        with trainer.compute_loss_context_manager(), autocast:
            loss = trainer.compute_loss(model, inputs)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()

    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        seconds = time_passes(one_pass)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if cfg.gradient_checkpointing:
        seconds *= CHECKPOINTING_COST
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        slowest = torch.tensor([seconds], dtype=torch.float64, device=trainer.args.device)
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)  # one plan on every rank
        seconds = float(slowest.item())
    return tokens / seconds if seconds > 0 else float("inf")


def time_budget_callback(seconds: float) -> Any:
    """A TrainerCallback that stops training once `seconds` of the training loop have passed (every rank
    at the same step); `stopped_at` is that step, None when the planned steps finished in time."""
    import torch
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.stopped_at: int | None = None
            self.elapsed = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.elapsed = time.perf_counter() - self.t0
            over = self.elapsed >= seconds
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                flag = torch.tensor([float(over)], device=args.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                over = bool(flag.item())
            if over and state.global_step < state.max_steps:
                self.stopped_at = state.global_step
                control.should_training_stop = True

    return TimeBudget()


def budget_note(plan: Plan, stopped_at: int | None, elapsed_seconds: float, epochs_seen: float | None) -> str | None:
    """Why the time budget cut training, when it did: planned fewer steps than train.epochs asked for,
    and/or stopped before the planned steps because the machine was slower than measured."""
    parts = []
    if plan.capped:
        parts.append(plan.cap_reason() or "")
    if stopped_at is not None:
        seen = f" ({epochs_seen:.2f} epochs)" if epochs_seen is not None else ""
        parts.append(f"stopped for the time budget: {elapsed_seconds / 60:.1f} min of train.max_minutes="
                     f"{plan.budget_minutes:g} used at step {stopped_at} of {plan.steps}{seen}; this machine ran "
                     "slower than measured before training")
    return "; ".join(parts) or None
