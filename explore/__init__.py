"""Design-space exploration: Optuna studies over hardware, mapping and workload knobs
(``explore/spaces/*.yaml`` are examples; ``docs/explore.md`` explains the format).

Submodules: ``space`` (the YAML format), ``evaluate`` (one design), ``study`` (runner, storage,
export), ``command`` (``xpusim explore``). Optuna is imported only when a study runs.
"""
