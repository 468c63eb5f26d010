"""Image-classification MLOps pipeline, in layers: imports point down only (import-linter enforces it).

core → data, ml → registry → stages → delivery, monitoring → cli (and the Prefect flows in flows/).
"""
