"""Data: dataset readers (IDX, CIFAR-10, image folder), image helpers, and the Great Expectations suite
with its report.
"""
