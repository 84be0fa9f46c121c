"""What the console shows: one progress display per stage, no raw dicts, no noise users cannot act on.

Three levels, chosen by `run.py --quiet / --verbose`:
- quiet: the task line, errors, and the closing table;
- normal (default): ZenML's step start/finish lines, one progress bar per stage (training with
  loss, learning rate and ETA; evaluation with rows/s), the project's own warnings (duplicates,
  truncation, promotion reasons);
- verbose: everything every library says.
Library warnings nobody running the pipeline can act on (deprecations inside transformers, MLflow's
hub model-card lookup for a local model, ZenML's dashboard adverts) are dropped at normal level.
Must run before zenml, transformers or mlflow are imported.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from llmft.credentials import mask_logging
from llmft.locations import model_cache

QUIET, NORMAL, VERBOSE = 0, 1, 2

# (logger, message fragment) pairs that only say something about the libraries, not the run
_NOISE = (
    ("zenml", "ZenML Pro"), ("zenml", "zenml login"), ("zenml", "Dashboard"), ("zenml", "autologging"),
    ("zenml", "Using user:"), ("zenml", "Using stack:"), ("zenml", "orchestrator:"), ("zenml", "artifact_store:"),
    ("zenml", "experiment_tracker:"), ("zenml", "model_registry:"), ("zenml", "log_store:"),
    ("zenml", "Using default tokenizer"), ("mlflow", "model card could not be retrieved"),
    ("mlflow", "Unable to find license"), ("mlflow", "Creating initial MLflow database"),
    ("mlflow", "Updating database tables"),
    # ZenML's first-use set-up and per-run preamble: the project's own lines say what matters
    ("zenml", "Initializing the ZenML global configuration"), ("zenml", "Creating database tables"),
    ("zenml", "Creating default project"), ("zenml", "Creating default stack"),
    ("zenml", "Setting the global active"), ("zenml", "Registered new pipeline"),
    ("zenml", "Initiating a new run for the pipeline"),
    ("bitsandbytes", "Failed to load CPU gemm_4bit_forward"),  # (its cpu backend, through ZenML's handler)
    ("great_expectations", "for ephemeral docs site"),  # a temp folder the gate removes again
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(record.name.startswith(name) and fragment in message for name, fragment in _NOISE)


def configure(level: int, terminal: bool | None = None) -> None:
    """Set the libraries' verbosity for `level`; `terminal` (default: whether stdout is one) decides
    colours and how often progress bars redraw (a log file gets a line a minute, no ANSI codes)."""
    terminal = sys.stdout.isatty() if terminal is None else terminal
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torch's compiled-kernel cache lives with the project's other caches, not as a folder in the temp dir
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(model_cache() / "torchinductor"))
    if not terminal:
        os.environ.setdefault("ZENML_LOGGING_COLORS_DISABLED", "true")
        os.environ.setdefault("TQDM_MININTERVAL", "60")
    if level < VERBOSE:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its INFO lines (database set-up) say nothing
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error" if level < VERBOSE else "info")
    if level == QUIET:
        os.environ["ZENML_LOGGING_VERBOSITY"] = "ERROR"
        os.environ["TQDM_DISABLE"] = "1"
    elif level == VERBOSE:
        os.environ["ZENML_LOGGING_VERBOSITY"] = "DEBUG"
    if level < VERBOSE:
        for category, module in ((FutureWarning, None), (DeprecationWarning, None), (UserWarning, "mlflow"),
                                 (UserWarning, "pydantic"), (UserWarning, "torch")):
            warnings.filterwarnings("ignore", category=category, module=module or "")
        noise = _DropNoise()
        for name in {name for name, _ in _NOISE}:
            logging.getLogger(name).addFilter(noise)
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    logging.getLogger("llmft").setLevel(logging.WARNING if level == QUIET else logging.INFO)
    mask_logging()


def attach_noise_filter() -> None:
    """ZenML installs its console handlers on import: filter them too (their records skip loggers'
    own filters when they come from child loggers)."""
    import zenml  # noqa: F401  (installs its handlers on the root logger)

    noise = _DropNoise()
    for handler in logging.getLogger().handlers:
        handler.addFilter(noise)
    mask_logging()  # ZenML's handlers now exist: mask credentials in whatever they print
