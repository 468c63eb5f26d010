"""Delivery: S3 releases with an atomic pointer flip, and the HTTP model server."""
