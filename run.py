"""Front door: `python run.py --pipeline finetune` (see README.md).

The same runs, one verb each, are the `llmft` command (`llmft finetune`, `llmft deploy`, ...); both
go through `llmft.cli.execute`, and this file only keeps the original flags (`llmft.cli.legacy`).
"""

from __future__ import annotations

import sys

from llmft.cli.legacy import PIPELINES, main, parse_args

__all__ = ["PIPELINES", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
