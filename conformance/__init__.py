"""Conformance run of narrator against the real vLLM OpenAI server (``make conformance``).

Not part of the test suite: pytest collects only ``tests/``, and ``make test`` never runs it.
See :mod:`conformance.run` and docs/CONFORMANCE.md.
"""
