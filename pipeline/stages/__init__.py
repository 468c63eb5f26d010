"""The seven DVC stages, one module each: a pure `run` plus a thin typer command (`python -m
pipeline.stages.<name>`). Stages never import each other.
"""
