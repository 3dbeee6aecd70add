"""Benchmarks, each printing JSON; run from the repository root as `python -m bench.<name>`
(a package, so that one benchmark can reuse another's setup)."""
