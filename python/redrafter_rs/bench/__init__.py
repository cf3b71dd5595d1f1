"""Benchmarks: `redrafter bench` (methods, runner, reports), `redrafter bench-core`, the pure-torch
reference of the Rust core and the verification cost probe (docs/design.md §12). Not imported by
`import redrafter_rs`.
"""
