"""Foundations: typed params (config), errors, atomic file I/O, the clock. Imports nothing else of ours."""
