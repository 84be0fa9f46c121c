"""`llmft finetune --dry-run`: the run as far as it goes without a model, a store or a pipeline.

The config is loaded and validated, the run resolved (task, registry name), the data goes through the
same ingest, data gate and split functions the pipeline's steps call (`llmft.data.stages`, tokenized
with the base model's tokenizer), and the training plan is computed by the trainer's own
`plan_training` over the same training rows. The speed is measured only when training starts, so the
plan has no time estimate and, with `train.max_steps: auto`, the steps before the time budget's cut.
Nothing is trained, tracked or registered, and no ZenML stack is touched.
"""

from __future__ import annotations

import argparse

from llmft.base_model import load_tokenizer, resolve_base_model
from llmft.cli.common import fail, load_run_config, overrides_of, setup_console
from llmft.config import ConfigError
from llmft.data import gate
from llmft.data.gate import DataGateError
from llmft.data.ingest import DataError
from llmft.resolve import ResolvedRun, resolve_run
from llmft.tasks import get_task
from llmft.train.budget import example_tokens, plan_training
from llmft.train.methods import get_method


def dry_run(args: argparse.Namespace) -> int:
    setup_console(args.quiet, args.verbose)
    try:
        cfg = load_run_config(args.config, overrides_of(args))
        resolved = resolve_run(cfg)
        print(resolved.spec.announce(), flush=True)
        print(f"registry model: {resolved.cfg.registry.model_name}; base model: {resolved.cfg.model.base}")
        lines = plan_lines(resolved)
    except (ConfigError, DataError) as exc:
        return fail(str(exc))
    except DataGateError as exc:
        return fail(str(exc), 1)
    print("\n".join(lines))
    print("dry run: nothing trained, tracked or registered (the speed, and the steps that fit train.max_minutes, "
          "are measured when training starts)")
    return 0


def plan_lines(resolved: ResolvedRun) -> list[str]:
    """The data gate's verdict, the split and the training plan, as the pipeline would compute them."""
    from llmft.data import stages  # start-up: pandas
    from llmft.train.stage import training_examples  # start-up: pandas

    cfg, spec = resolved.cfg, resolved.spec
    examples, rejections = stages.ingest_frames(cfg.data, cfg.validation, cfg.eval.slice_by)
    clean, _, report = stages.gate_and_tokenize(examples, rejections, spec, cfg.model, cfg.data, cfg.validation,
                                                cfg.train.max_seq_length)
    gate.enforce(report, cfg.data.source)
    train, validation, test, info = stages.split_dataset(clean, spec, cfg.data)
    lines = [report.verdict, *[f"warning: {w}" for w in report.warnings],
             f"split: train {len(train)} / validation {len(validation)} / test {len(test)} "
             f"(+{info.unused} unused, data.max_train_rows)"
             + (f"; labels {', '.join(info.labels)}" if info.labels else "")]
    # data.mix and replay (data.replay) join the training rows as in the run
    train, extras = stages.mix_training(train, validation, test, info, spec, cfg.model, cfg.data, cfg.validation,
                                        cfg.train.max_seq_length)
    lines += [extra.line() for extra in extras]
    if cfg.augment.enabled:
        lines.append("augment: paraphrased rows are generated during the run and are not in this plan")
    labels = info.labels if get_task(spec.name).classifier else None
    pairs = None
    if get_method(cfg.train.method).needs_pairs:
        pairs = (load_tokenizer(resolve_base_model(cfg.model)), cfg.train.max_seq_length)
    rows = training_examples(train, labels, pairs)
    plan = plan_training(cfg.train, [example_tokens(r) for r in rows], len(validation), None,
                         cfg.train.num_processes)
    return [*lines, *plan.lines()]
