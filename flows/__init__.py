"""Prefect flows: thin orchestration over the pipeline's DVC stages and functions (no logic of their own)."""
