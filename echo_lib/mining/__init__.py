"""Spark transforms that turn raw telemetry into refinements and training datasets."""
