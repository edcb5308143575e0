"""Benchmarks of Nucleus's own paths: each module runs as `python bench/<name>.py` and imports as `bench.<name>`."""
