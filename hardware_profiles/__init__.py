"""Shipped hardware profiles (``*.toml``), loaded with ``bench.measure.load_profile``."""
