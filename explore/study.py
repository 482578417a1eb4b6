"""Optuna studies over a design space: samplers, storage, workers, resumption, export.

* **Storage**: an SQLite file by default (``sqlite:///xpusim-<study>.db``), or any Optuna storage
  URL: ``postgresql://...`` (many machines on one study), ``journal:<file>`` (a journal file).
* **Trials**: ``trials`` is the number of finished trials (complete or infeasible) the study must
  reach; a resumed study runs only what is missing. Work is divided among ``workers`` processes
  that share the storage, each creating exactly its share of trials, so none is lost or run twice.
* **Infeasible designs** are recorded, never crash the run: a design that cannot be built or run
  ends *pruned* with ``user_attrs["infeasible"]`` = the reason; a design that runs but violates a
  constraint completes with its violations as Optuna constraints (``Trial.set_constraint``, so
  the samplers rank it after feasible ones) and in ``user_attrs["constraints"]``.
* **Interrupted runs**: a trial left *running* by a killed process is marked failed on the next
  start (its process is gone, or its heartbeat stopped), and is re-run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from ..errors import SpecError
from ..sim.result import strict_json
from .evaluate import Evaluation, evaluate
from .space import Space, check_sampler

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SEEDS = 2**32  # the samplers take seeds 0 .. 2**32 - 1
HEARTBEAT_S = 5  # RDB heartbeat of running trials; stale after 3 missed beats


def storage_url(study: str, storage: str | None) -> str:
    return storage or f"sqlite:///xpusim-{study}.db"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (SQLite/PostgreSQL/MySQL URL, or ``journal:<file>``)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=3 * HEARTBEAT_S)
    except Exception as e:  # noqa: BLE001 - any driver or connection error, reported in one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(f"cannot open study storage {url!r}: {first}") from None


def make_sampler(space: Space, name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    check_sampler(space, name)
    if name == "auto":
        name = "nsga2" if len(space.objectives) > 1 else "tpe"
    if name == "tpe":  # constraints reach the samplers through Trial.set_constraint
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler({k.name: k.grid() for k in space.knobs}, seed=seed)


def _suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in space.knobs:
        if k.choices:
            out[k.name] = trial.suggest_categorical(k.name, list(k.choices))
        elif k.type == "int":
            out[k.name] = trial.suggest_int(k.name, int(k.low), int(k.high), step=int(k.step or 1), log=k.log)
        else:
            out[k.name] = trial.suggest_float(k.name, k.low, k.high, step=k.step, log=k.log)
    return out


def objective_fn(space: Space):
    """The Optuna objective: evaluate the suggested design, record metrics and violations."""
    def run(trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = _suggest(trial, space)
        try:
            ev = evaluate(space, params)
        except Exception as e:  # noqa: BLE001 - a fault in the simulator prunes this design, not the study
            first = str(e).splitlines()[0] if str(e) else ""
            ev = Evaluation(reason=f"internal error in the simulator, not a property of the design: {type(e).__name__}: {first}")
        if ev.reason:
            trial.set_user_attr("infeasible", ev.reason)
            raise optuna.TrialPruned(ev.reason)
        trial.set_user_attr("metrics", ev.metrics)
        trial.set_user_attr("constraints", ev.violations)
        for k, v in ev.violations.items():
            trial.set_constraint(k, v)
        if not ev.feasible:
            trial.set_user_attr("infeasible", "violates " + ", ".join(k for k, v in ev.violations.items() if v > 0))
        vals = [ev.metrics[o] for o in space.objectives]
        return vals[0] if len(vals) == 1 else vals
    return run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def register_worker(study: optuna.Study) -> None:
    """Record this process as a worker of the study (before it creates any trial), so a trial it
    leaves running without its own mark can still be traced to it."""
    study.set_user_attr(f"worker:{socket.gethostname()}:{os.getpid()}", time.time())


def _fail_stale(study: optuna.Study) -> int:
    """Mark failed the running trials whose process is gone (a killed run): a trial marked with
    its worker is stale when that process on this host is dead; an unmarked one (killed between
    its creation and its mark) when no registered worker of the study is alive on this host and
    none is registered elsewhere. Other hosts' stale trials are failed by their heartbeat."""
    host = socket.gethostname()
    workers = [k.split(":", 2)[1:] for k in study.user_attrs if k.startswith("worker:")]
    local_alive = any(h == host and p.isdigit() and _pid_alive(int(p)) for h, p in workers)
    remote = any(h != host for h, _ in workers)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        h, _, pid = worker.rpartition(":")
        if worker:
            stale = h == host and pid.isdigit() and not _pid_alive(int(pid))
        else:
            stale = not local_alive and not remote
        if stale:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            n += 1
    if isinstance(study._storage, optuna.storages.RDBStorage):
        n += len(optuna.storages.fail_stale_trials(study) or []) if hasattr(optuna.storages, "fail_stale_trials") else 0
    return n


def load_or_create(space: Space, study: str, storage: str | None, sampler: str, seed: int | None) -> optuna.Study:
    """Create the study, or load it to continue (the space must have the same objectives)."""
    st = open_storage(storage_url(study, storage))
    directions = [optuna.study.StudyDirection.MINIMIZE if d == "minimize" else optuna.study.StudyDirection.MAXIMIZE
                  for d in space.directions]
    s = optuna.create_study(study_name=study, storage=st, sampler=make_sampler(space, sampler, seed),
                            directions=directions, load_if_exists=True)
    if [d.name.lower() for d in s.directions] != space.directions:
        raise SpecError(f"study {study!r} exists with directions {[d.name.lower() for d in s.directions]}; "
                        f"this space has {space.directions}: use another --study name")
    stored = s.user_attrs.get("objectives")
    if stored is not None and list(stored) != list(space.objectives):
        raise SpecError(f"study {study!r} exists with objectives {list(stored)}; this space has {list(space.objectives)}: "
                        "use another --study name")
    done = len(s.trials)
    if done and seed is not None:  # a continued study draws new designs: the same seed would replay the first ones
        s.sampler = make_sampler(space, sampler, (seed + done) % SEEDS)
    s.set_user_attr("space", space.source)
    s.set_user_attr("objectives", space.objectives)
    return s


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _worker(space: Space, study: str, storage: str | None, sampler: str, seed: int | None, n: int,
            timeout: float | None) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = load_or_create(space, study, storage, sampler, seed)
    register_worker(s)
    s.optimize(objective_fn(space), n_trials=n, timeout=timeout, catch=(), gc_after_trial=False)


def check_seed(seed: int | None) -> None:
    """Refuse a seed the samplers cannot take (before a study runs)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEEDS):
        raise SpecError(f"--seed {seed}: give a whole number from 0 to {SEEDS - 1}")


def check_export(out: str | Path) -> None:
    """Refuse an export directory that is, or lies under, an existing file (before a study runs)."""
    for p in (Path(out), *Path(out).parents):
        if p.exists():
            if not p.is_dir():
                raise SpecError(f"--export {out}: {p} is a file; give a directory (new or existing) for the CSV/JSON files")
            return


def run_study(space: Space, trials: int, study: str = "xpusim", storage: str | None = None, sampler: str = "auto",
              seed: int | None = 0, workers: int = 1, timeout: float | None = None, progress: bool = True) -> optuna.Study:
    """Run (or continue) ``study`` until it has ``trials`` finished trials."""
    if trials <= 0 or workers <= 0:
        raise SpecError("--trials and --workers must be positive")
    check_seed(seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = load_or_create(space, study, storage, sampler, seed)
    _fail_stale(s)
    register_worker(s)
    todo = trials - finished(s)
    if todo <= 0:
        return s
    shares = [todo // workers + (1 if i < todo % workers else 0) for i in range(workers)]
    shares = [n for n in shares if n]
    bar = _bar(todo, progress)
    if len(shares) == 1:
        cb = [lambda st, tr: bar.update(1)] if bar else []
        s.optimize(objective_fn(space), n_trials=shares[0], timeout=timeout, catch=(), callbacks=cb,
                   gc_after_trial=False)
    else:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(space, study, storage, sampler, None if seed is None else (seed + i) % SEEDS,
                                                   n, timeout)) for i, n in enumerate(shares)]
        start = finished(s)
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            if bar:
                bar.n = finished(s) - start
                bar.refresh()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise SpecError(f"{len(bad)} worker process(es) failed (exit codes {bad}); the study keeps its finished "
                            "trials: run the same command again to continue")
    if bar:
        bar.n = finished(s) - (trials - todo)
        bar.close()
    return s


def _bar(total: int, on: bool):
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True, disable=None)  # off if not a tty


# ---------------------------------------------------------------------------------------- results
def trials_frame(study: optuna.Study, space: Space) -> pd.DataFrame:
    """One row per finished trial: number, state, knob values, metrics, feasibility and reason."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name.lower()}
        row.update({k.name: t.params.get(k.name) for k in space.knobs})
        row.update(t.user_attrs.get("metrics", {}))
        viol = t.user_attrs.get("constraints", {})
        row["feasible"] = t.state == optuna.trial.TrialState.COMPLETE and all(v <= 0 for v in viol.values())
        row["reason"] = t.user_attrs.get("infeasible", "")
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_frame(study: optuna.Study, space: Space) -> pd.DataFrame:
    """The feasible trials no other feasible trial dominates on every objective."""
    df = trials_frame(study, space)
    if df.empty:
        return df
    feas = df[df["feasible"]].copy()
    if feas.empty:
        return feas
    signs = [1.0 if d == "minimize" else -1.0 for d in space.directions]
    vals = feas[space.objectives].to_numpy(dtype=float) * signs
    keep = [not any((o <= v).all() and (o < v).any() for o in vals) for v in vals]
    front = feas[keep].drop_duplicates(subset=[k.name for k in space.knobs])  # a design sampled twice counts once
    return front.sort_values(space.objectives[0], ascending=space.directions[0] == "minimize")


def export(study: optuna.Study, space: Space, out: str | Path) -> list[Path]:
    """Write all trials and the Pareto set as CSV and JSON (and Parquet when pyarrow is installed)."""
    check_export(out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in (("trials", trials_frame(study, space)), ("pareto", pareto_frame(study, space))):
        df.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.json").write_text(strict_json(df.to_dict(orient="records"), 1, default=str))
        written += [out / f"{name}.csv", out / f"{name}.json"]
        try:
            df.to_parquet(out / f"{name}.parquet", index=False)
            written.append(out / f"{name}.parquet")
        except ImportError:
            pass
    return written
