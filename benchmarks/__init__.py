"""Benchmark suite (`service-registry bench`, `make bench`)."""
