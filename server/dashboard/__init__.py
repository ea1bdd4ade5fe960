"""Coordinator dashboard: the web page where the federation's operator follows training.

It reads the ServerApp's run folders (``run.json``, ``history.jsonl`` and
``round-NNN/metrics.json``) and the model registry; it never writes to either.
"""
