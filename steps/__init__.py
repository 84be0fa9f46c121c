"""ZenML steps: thin typed wrappers over the plain functions in `llmft`."""
