"""ZenML pipelines; each reads like its DAG."""
