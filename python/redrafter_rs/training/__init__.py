"""Training drafters by knowledge distillation: teacher caches, self-distillation data, the loss
and loop, the `redrafter train` command (docs/design.md §9). Not imported by `import
redrafter_rs`.
"""
