"""llmft: a ZenML-orchestrated, MLflow-tracked LLM fine-tuning pipeline."""

__version__ = "0.1.0"
