"""``xpusim explore``: run or continue a study over a space and print its Pareto set."""

from __future__ import annotations

import argparse
import time
import warnings

from ..errors import SpecError
from ..sim.result import strict_json
from .space import METRICS, list_spaces, load_space
from .study import check_export, check_seed, export, finished, pareto_frame, run_study, trials_frame


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help=f"space YAML, or an example name ({', '.join(list_spaces())})")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should have (resumes add the rest)")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the study storage")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///xpusim-<study>.db; postgresql://...; "
                                     "journal:<file>)")
    p.add_argument("--study", help="study name (default: the space's name)")
    p.add_argument("--sampler", help="tpe, nsga2, cmaes, random, grid (default: the space's, else nsga2 for several "
                                     "objectives, tpe for one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds (> 0)")
    p.add_argument("--export", metavar="DIR", help="write trials and Pareto set as CSV/JSON (and Parquet with pyarrow)")
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="no progress bar (none either when stderr is not a terminal)")
    p.add_argument("--report", metavar="HTML", help="write an interactive HTML report of the study")
    p.add_argument("--save", metavar="JSON", help="save the study's trials for `xpusim report`")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run(a: argparse.Namespace) -> int:
    if a.timeout is not None and not a.timeout > 0:
        raise SpecError(f"--timeout {a.timeout:g}: give a positive number of seconds (or leave it out: no time limit)")
    if a.export:
        check_export(a.export)
    check_seed(a.seed)
    space = load_space(a.space)
    study_name = a.study or space.name
    sampler = a.sampler or space.sampler
    t0 = time.perf_counter()
    study = run_study(space, a.trials, study_name, a.storage, sampler, a.seed, a.workers, a.timeout,
                      progress=not (a.no_progress or a.json))
    wall = time.perf_counter() - t0
    trials = trials_frame(study, space)
    pareto = pareto_frame(study, space)
    files = [str(f) for f in export(study, space, a.export)] if a.export else []
    if a.report or a.save:
        _report(a, study, space, trials, pareto, study_name)
    n = finished(study)
    summary = {"study": study_name, "space": space.source, "objectives": space.objectives, "finished_trials": n,
               "feasible_trials": int(trials["feasible"].sum()) if len(trials) else 0, "wall_s": wall,
               "pareto": pareto.to_dict(orient="records"), "exported": files}
    if a.json:
        print(strict_json(summary, 2, default=str))
        return 0
    print(f"study {study_name!r}: {n} finished trials ({summary['feasible_trials']} feasible) in {wall:.1f} s; "
          f"objectives {', '.join(f'{o} ({METRICS[o][0][:3]}, {METRICS[o][1]})' for o in space.objectives)}")
    if pareto.empty:
        print("no feasible design yet: relax the constraints or widen the knobs")
    else:
        cols = ["number", *[k.name for k in space.knobs], *space.objectives]
        print(f"Pareto set ({len(pareto)} designs):")
        print(pareto[cols].head(20).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if files:
        print("exported: " + ", ".join(files))
    return 0


def _report(a: argparse.Namespace, study, space, trials, pareto, study_name: str) -> None:
    """--report and --save: the study's figures (parameter importance by Optuna's default
    evaluator, PED-ANOVA, when enough feasible trials exist)."""
    knobs = [k.name for k in space.knobs]
    importance = None
    feasible = trials[trials["feasible"]] if len(trials) else trials
    if len(feasible) >= 8:
        import optuna

        sign = 1.0 if space.directions[0] == "minimize" else -1.0  # the evaluator ranks low targets best
        try:
            with warnings.catch_warnings():  # it reminds that low targets rank best: the sign above sees to that
                warnings.simplefilter("ignore", UserWarning)
                imp = optuna.importance.get_param_importances(
                    study, target=lambda t: sign * t.user_attrs.get("metrics", {}).get(space.objectives[0], float("nan")))
            importance = {k: float(v) for k, v in imp.items()}
        except (RuntimeError, ValueError):
            importance = None  # too few distinct values to attribute variance
    payload = {"trials": trials.to_dict(orient="records"), "pareto": pareto.to_dict(orient="records"),
               "objectives": space.objectives, "directions": space.directions, "knobs": knobs, "study": study_name,
               "space": space.source, "importance": importance}
    if a.save:
        from ..reports.build import save

        save(a.save, "explore", payload)
    if a.report:
        from ..reports.build import explore_report
        from ..reports.html import write

        write(a.report, explore_report(trials, pareto, space.objectives, space.directions, knobs, study_name, space.source,
                                       importance))
