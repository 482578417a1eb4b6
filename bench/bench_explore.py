"""Explorer throughput: a 500-trial NSGA-II study over the NPU example space (Llama-3-8B decode),
two worker processes sharing an SQLite study (the 2 cores of the reference machine).

    python bench/bench_explore.py [--trials 500] [--workers 2] [--space npu]

Prints trials per minute (target >= 300), the feasible fraction, and the best designs found.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from xpusim.explore.space import load_space
from xpusim.explore.study import pareto_frame, run_study, trials_frame


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--space", default="npu")
    p.add_argument("--sampler", default="nsga2")
    a = p.parse_args()
    space = load_space(a.space)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        t0 = time.perf_counter()
        study = run_study(space, a.trials, "bench", url, a.sampler, seed=0, workers=a.workers, progress=False)
        wall = time.perf_counter() - t0
        df = trials_frame(study, space)
        front = pareto_frame(study, space)
    rate = len(df) / wall * 60
    met = rate >= 300
    print(f"{a.space}: {len(df)} trials ({int(df['feasible'].sum())} feasible) with {a.sampler}, {a.workers} workers "
          f"in {wall:.1f} s: {rate:.0f} trials/min (target >= 300: {'met' if met else 'MISSED'})")
    cols = [k.name for k in space.knobs] + space.objectives
    print(f"Pareto set ({len(front)} designs), best {space.objectives[0]} first:")
    print(front[cols].head(10).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if not met:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
