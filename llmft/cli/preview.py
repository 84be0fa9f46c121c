"""`llmft preview [CONFIG]`: training rows exactly as the model will see them, without training.

The data goes through the pipeline's own ingest (personal data handled as configured), the data gate's
row rules and duplicate removal, and the task's encoding with the base model's tokenizer and chat
template (`llmft.data.stages`, `llmft.data.gate.run_gate`, `Task.encode`). Each shown row is the
decoded token sequence with the masked tokens (label -100: system and user turns, no loss) dimmed at a
terminal or wrapped in [[ ]] otherwise; the rest is what the loss trains on. Token counts are given
per row and in total over every kept row.
"""

from __future__ import annotations

import argparse
import os
import sys
from itertools import groupby
from typing import Any

from llmft.chat_format import IGNORE_INDEX
from llmft.cli.common import add_config_args, fail, load_run_config, setup_console
from llmft.config import ConfigError
from llmft.errors import UserFacingError

OPEN, CLOSE = "[[", "]]"
DIM, UNDIM = "\x1b[2m", "\x1b[22m"


def register(verbs: Any) -> None:
    preview = verbs.add_parser("preview", allow_abbrev=False,
                               help="training rows after the chat template, with the label mask and token counts",
                               description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    add_config_args(preview)
    preview.add_argument("--rows", type=int, default=3, metavar="N", help="rows shown (default: %(default)s)")
    preview.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                         help="dim the masked tokens (auto: at a terminal, unless NO_COLOR is set); without color "
                              f"they are wrapped in {OPEN} {CLOSE}")
    preview.set_defaults(handler=run_preview)


def run_preview(args: argparse.Namespace) -> int:
    setup_console()
    from llmft.resolve import resolve_run  # start-up: llmft.resolve

    try:
        cfg = load_run_config(args.config, list(args.overrides))
        resolved = resolve_run(cfg)
        print(resolved.spec.announce(), flush=True)
        tokenizer, result, shape_rejected = encode_rows(resolved)
    except (ConfigError, UserFacingError) as exc:
        return fail(str(exc))
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    legend = "dimmed" if color else f"in {OPEN} {CLOSE}"
    print(f"masked tokens (label -100, no loss) {legend}; everything else is trained on\n")
    for i, row in enumerate(result.kept[:max(args.rows, 0)], 1):
        print(row_text(i, row, tokenizer, color), end="\n\n")
    print(totals_line(result, shape_rejected, resolved.cfg.train.max_seq_length))
    return 0


def encode_rows(resolved: Any) -> tuple[Any, Any, int]:
    """(tokenizer, the gate's row-rule result with every kept row encoded, rows of no known shape)."""
    from llmft.base_model import load_tokenizer, resolve_base_model  # start-up: llmft.base_model
    from llmft.data import stages  # start-up: pandas
    from llmft.data.gate import run_gate  # start-up: llmft.data.gate
    from llmft.data.shapes import Example  # start-up: llmft.data.shapes
    from llmft.tasks import get_task  # start-up: llmft.tasks

    cfg, spec = resolved.cfg, resolved.spec
    task = get_task(spec.name)
    tokenizer = load_tokenizer(resolve_base_model(cfg.model))
    examples, rejections = stages.ingest_frames(cfg.data, cfg.validation)
    result = run_gate([Example.from_row(r) for r in examples.to_dict("records")], [], cfg.data, cfg.validation,
                      lambda ex: task.encode(tokenizer, ex, spec.instruction, cfg.train.max_seq_length),
                      cfg.train.max_seq_length, pii_found=stages.pii_found(examples), suite=False)
    return tokenizer, result, len(rejections)


def _counts(row: Any) -> tuple[int, int]:
    """(masked, trained) tokens of an encoded row; a classifier's row trains its label, not its tokens."""
    if not row.labels:
        return len(row.input_ids), 0
    masked = sum(1 for label in row.labels if label == IGNORE_INDEX)
    return masked, len(row.labels) - masked


def row_text(number: int, row: Any, tokenizer: Any, color: bool) -> str:
    """A header with the row's token counts, then its tokens decoded, masked spans marked."""
    masked, trained = _counts(row)
    cut = ", input truncated to fit" if row.truncated else ""
    if not row.labels:  # a classifier: the text is the head's input, its label is the target
        return (f"--- row {number} ({row.example.where}): {len(row.input_ids)} tokens{cut}, label "
                f"{row.example.label!r}\n{tokenizer.decode(row.input_ids)}")
    head = f"--- row {number} ({row.example.where}): {len(row.input_ids)} tokens, {masked} masked, {trained} trained"
    parts = []
    for is_masked, run in groupby(zip(row.input_ids, row.labels, strict=True), key=lambda p: p[1] == IGNORE_INDEX):
        text = tokenizer.decode([token for token, _ in run])
        parts.append((f"{DIM}{text}{UNDIM}" if color else f"{OPEN}{text}{CLOSE}") if is_masked else text)
    return f"{head}{cut}\n{''.join(parts)}"


def totals_line(result: Any, shape_rejected: int, max_seq_length: int) -> str:
    report, kept = result.report, result.kept
    masked = trained = 0
    for row in kept:
        m, t = _counts(row)
        masked, trained = masked + m, trained + t
    total = masked + trained
    longest = max((len(r.input_ids) for r in kept), default=0)
    split = (f"{masked:,} masked, {trained:,} trained ({trained / total:.0%})" if trained
             else "the classification head's input (it trains on each row's label)")
    return (f"totals: {len(kept):,} rows kept of {report.rows_in + shape_rejected:,} ({report.duplicates_removed} "
            f"duplicates removed, {report.rejected + shape_rejected} rejected); {total:,} tokens: {split}; "
            f"{report.truncated} truncated to train.max_seq_length={max_seq_length}; longest {longest}, mean "
            f"{total / len(kept) if kept else 0:.0f} tokens per row")
