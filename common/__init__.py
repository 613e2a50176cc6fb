"""Code shared by the producer, the workers and the writer.

Invariant: nothing in ``common`` imports ``producer``, ``workers``, ``writer`` or ``narrator``.
"""
