"""The gradient graph: per-op VJP rules (``rules``), the builder that chains them, and the
passes that fold what the rules emit."""
