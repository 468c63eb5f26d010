"""Machine learning building blocks: models, batching, pruning, TFLite conversion and runtime,
device/precision/distribution, plots, timing.
"""
