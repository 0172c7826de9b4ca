"""Compiled hot path, built by setup.py from the Cython sources in ext/."""
