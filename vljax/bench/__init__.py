"""Benchmarks that print a table and name the machine they ran on."""
