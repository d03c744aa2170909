"""Benchmarks of the registrator agent against real Docker and Consul; see bench/main.py."""
