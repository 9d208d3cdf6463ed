"""Benchmarks. Each one is a script-like module with a `cli(...)` the `memsvc bench` group
registers; each writes JSON, a Markdown table and a PNG plot to a folder it is given."""
