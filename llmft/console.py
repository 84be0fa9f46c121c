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
import warnings

from llmft.credentials import mask_logging

QUIET, NORMAL, VERBOSE = 0, 1, 2

# (logger, message fragment) pairs that only say something about the libraries, not the run
_NOISE = (
    ("zenml", "ZenML Pro"), ("zenml", "zenml login"), ("zenml", "Dashboard"), ("zenml", "autologging"),
    ("zenml", "Using user:"), ("zenml", "Using stack:"), ("zenml", "orchestrator:"), ("zenml", "artifact_store:"),
    ("zenml", "experiment_tracker:"), ("zenml", "model_registry:"), ("zenml", "log_store:"),
    ("zenml", "Using default tokenizer"), ("mlflow", "model card could not be retrieved"),
    ("mlflow", "Unable to find license"), ("mlflow", "Creating initial MLflow database"),
    ("mlflow", "Updating database tables"),
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(record.name.startswith(name) and fragment in message for name, fragment in _NOISE)


def configure(level: int) -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
