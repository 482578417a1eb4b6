"""Shipped host + PIM presets (YAML): a host device, a PIM device, stacks, placement and mode."""
