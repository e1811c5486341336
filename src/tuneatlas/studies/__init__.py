"""Per-study table and figure builders, one module per study, keyed by artifact ID."""
