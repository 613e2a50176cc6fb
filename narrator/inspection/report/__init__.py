"""The consumer-side tools over an annotated dataset: reading its language rows and building
the self-contained HTML report (``narrator report``)."""
