"""research-rl: train language models to reason with search (ReSearch) as a reproducible pipeline."""

__version__ = "0.1.0"
