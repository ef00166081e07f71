"""Gin entry points, configs and benchmarks."""
