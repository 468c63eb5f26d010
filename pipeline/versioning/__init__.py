"""Runs as commits: git + DVC workspaces, run commits and pushes, and rebuilding a version from them."""
