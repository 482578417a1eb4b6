"""The ``xpusim`` command line: ``simulate``, ``op``, ``list``.

Every :class:`~xpusim.errors.XpusimError` is printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .arch.spec import with_array as _override_array
from .cli_flags import PIM_FLAGS, WAFER_FLAGS, check_flags, given_flags
from .errors import SpecError, XpusimError
from .files import check_writable, write_text
from .sim.result import strict_json
from .sim.result_text import fmt_b, fmt_s, print_comparison, print_formats, print_hetero, print_result, write_outputs


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be a positive integer")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        command = " ".join(self.prog.split()[1:])  # the subcommand, if the error is one's
        self.exit(2, f"xpusim: error: {message} (see 'xpusim {command + ' ' if command else ''}--help')\n")


def write_files(a: argparse.Namespace, results: list) -> None:
    """--report, --save, --trace and --csv (the per-op tables, one ``arch`` column) of simulated steps."""
    write_outputs(a, results)
    if a.csv:
        import pandas as pd

        write_text(a.csv, pd.concat([r.ops.assign(arch=r.inputs["arch"]) for r in results]).to_csv(index=False))


def _cmd_simulate(a: argparse.Namespace) -> int:
    from .arch.loader import load_arch
    from .sim.engine import model_formats, simulate, with_engine_formats
    from .sim.steps import simulate_chunked_prefill, speculate
    from .workloads.model import load_model
    from .workloads.phases import Phase, Verify, make_phase

    model = load_model(a.model)
    if a.weight_dtype or a.act_dtype or a.kv_dtype:
        model = model.with_formats(a.weight_dtype, a.act_dtype, a.kv_dtype)
    if a.routing and not model.n_experts:
        raise SpecError(f"--routing sizes a mixture of experts' expert GEMMs; {model.name} has no experts (drop --routing)")
    if a.mla_form and not model.kv_lora_rank:
        raise SpecError(f"--mla-form chooses how multi-head latent attention runs; {model.name} has standard attention "
                        "(drop --mla-form)")
    if a.embed_dtype:
        from .dtypes import get_dtype

        get_dtype(a.embed_dtype)  # a one-line error for an unknown format
        model = dataclasses.replace(model, embed_dtype=a.embed_dtype)
    from .sim.format_flags import chosen_formats

    given = chosen_formats(a)
    kw = {"objective": a.objective, "routing": a.routing, "mla_form": a.mla_form, "check_memory": not a.ignore_memory}
    wafer = {k: v for k, v in (("wafers", a.wafers), ("weight_streaming", a.weight_streaming or None),
                               ("side", a.wafer_side), ("algorithm", a.wafer_algorithm)) if v is not None}
    if wafer:
        kw["wafer_options"] = wafer
    device_flags = given_flags(a, ("pim", *PIM_FLAGS, *WAFER_FLAGS))
    if a.system and device_flags:
        raise SpecError(f"{' '.join(device_flags)}: for one device (--arch) only, not --system {a.system}")
    if a.system:
        if a.arch:
            raise SpecError(f"--system {a.system} runs on its own devices; drop --arch {' '.join(a.arch)} (or give a system "
                            "YAML whose device: is that preset)")
        check_flags(a, "--system", model)
        from .sim.system_command import run as run_system

        results: list = []
        rc = run_system(a, model, results)
        if results:
            write_files(a, results)
        return rc
    if not a.arch:
        raise SpecError("simulate needs --arch DEVICE (or --system SYSTEM)")
    parallel = [f"--{k} {getattr(a, k)}" for k in ("tp", "pp", "dp", "ep") if getattr(a, k) != 1]
    parallel += [f"--{k}" for k in ("sp",) if getattr(a, k)] + (["--plan auto"] if a.plan else [])
    parallel += [f"--microbatches {a.microbatches}"] if a.microbatches else []
    if parallel:
        raise SpecError(f"{' '.join(parallel)} split a model over a system's devices: give --system (e.g. dgx-h100), "
                        f"not --arch")
    from .sim.hetero import load_hetero

    combos = [n for n in a.arch if load_hetero(n) is not None]
    if combos and len(a.arch) > 1:
        raise SpecError(f"{', '.join(combos)}: a host + PIM preset runs alone (--arch {combos[0]}); compare it with other "
                        "devices in separate runs")
    if a.pim and len(a.arch) > 1:
        raise SpecError(f"--pim runs one host: give one --arch (compare {', '.join(a.arch)} with the PIM in separate runs)")
    if combos and a.pim:
        raise SpecError(f"{combos[0]} is a host + PIM preset with its own PIM device; drop --pim (or give a host device "
                        "with --pim)")
    combo = load_hetero(a.arch[0]) if len(a.arch) == 1 else None
    if combo is not None:  # a shipped host + PIM preset (arch/hetero/): its host, PIM and policy unless overridden
        a.arch, a.pim = [combo["host"]], combo["pim"]
        a.pim_stacks = a.pim_stacks or combo["pim_stacks"]
        a.placement = a.placement or combo["placement"]
        a.pim_mode = a.pim_mode or combo["mode"]
        a.pim_memory = a.pim_memory or combo["memory"]
    pim_flags = given_flags(a, PIM_FLAGS)
    if pim_flags and not a.pim:
        raise SpecError(f"{' '.join(pim_flags)}: only for a host with PIM; give --pim PIM_DEVICE (or a host + PIM preset)")
    check_flags(a, "--pim" if a.pim else "--arch", model)
    if a.pim:
        from .sim.hetero import pim_stacks, simulate_hetero

        a.placement, a.pim_mode = a.placement or "auto", a.pim_mode or "blocked"
        host = load_arch(a.arch[0])
        run = with_engine_formats(model, host, given)
        res = simulate_hetero(host, pim_stacks(a.pim, a.pim_stacks or 1), run,
                              make_phase(a.phase, a.batch, a.seq, a.context), a.placement, a.pim_mode, a.routing,
                              memory=a.pim_memory or "shared", check_memory=not a.ignore_memory)
        if a.format_error:
            from .workloads.functional.numerics import layer_error

            res.inputs["format_error"] = layer_error(run)
        write_files(a, [res])
        if a.json:
            print(res.to_json())
            return 0
        print_hetero(res, model, run, a.format_error)
        return 0
    if a.phase == "speculative":
        if a.context is None or a.draft_tokens is None or a.acceptance is None:
            raise SpecError("speculative needs --context, --draft-tokens and --acceptance (and --draft-model or --medusa-heads)")
        target = load_arch(a.arch[0])
        if a.rdu_mode:
            from .arch.rdu import with_mode

            target = with_mode(target, a.rdu_mode)
        run = with_engine_formats(model, target, given)
        spec = speculate(target, run, a.batch, a.context, a.draft_tokens, a.acceptance, a.draft_model,
                         a.medusa_heads or 0, a.tree_width or 1, **kw)
        if a.json:
            out = spec.to_dict()
            if a.format_error:
                from .workloads.functional.numerics import layer_error

                out["format_error"] = layer_error(run)
            print(strict_json(out, 2))
            return 0
        print_formats(run, a.format_error)
        fmts = f" ({spec.drafter_formats}, its own formats)" if spec.drafter_formats else ""
        print(f"xpusim {__version__}: {model.name} speculative decoding on {a.arch[0]}, drafter {spec.drafter}{fmts}, "
              f"{spec.draft_tokens} drafted tokens ({spec.tree_nodes} tree nodes), acceptance {spec.acceptance:g}")
        print(f"expected tokens per step {spec.expected_tokens:.3f}   step {fmt_s(spec.step_s)} "
              f"(draft {fmt_s(spec.draft_s)}, verify {fmt_s(spec.verify_s)})   plain decode step {fmt_s(spec.decode_s)}   "
              f"speedup {spec.speedup:.2f}x")
        return 0
    if a.phase == "verify":
        if a.context is None or a.draft_tokens is None:
            raise SpecError("verify needs --context (cached tokens) and --draft-tokens")
        from .sim.steps import tree_parents

        width = a.tree_width or 1  # a full token tree: --draft-tokens levels of --tree-width candidates
        parents = tree_parents(a.draft_tokens, width) if width > 1 else ()
        phase: Phase = Verify(a.batch, a.context, len(parents) or a.draft_tokens, parents)
    else:
        phase = make_phase(a.phase, a.batch, a.seq, a.context)
        if a.shared_prefix:  # decode only (check_flags)
            phase = dataclasses.replace(phase, shared_prefix=a.shared_prefix)
    from tqdm import tqdm

    results = []
    archs: list = list(a.arch)
    if a.rdu_mode:
        from .arch.rdu import with_mode

        archs = [with_mode(load_arch(x), a.rdu_mode) for x in archs]
    for arch in tqdm(archs, desc="devices", unit="device", leave=False, disable=True if a.quiet or len(a.arch) < 2 else None):
        arch = load_arch(arch)
        run_model = with_engine_formats(model, arch, given)  # a preset's engine formats unless the user chose
        if a.chunk and a.phase == "prefill":
            res = simulate_chunked_prefill(arch, run_model, a.batch, a.seq, a.chunk, **kw)
        else:
            res = simulate(arch, run_model, phase, **kw)
        res.inputs["formats"] = model_formats(run_model)
        engine = [k for k in arch.meta.get("formats", {}) if k not in given]
        if engine:
            res.inputs["formats_from"] = {"device": arch.name, "fields": engine}
        if a.format_error:
            from .workloads.functional.numerics import layer_error

            res.inputs["format_error"] = layer_error(run_model)
        results.append(res)
    write_files(a, results)
    if a.json:
        print(results[0].to_json() if len(results) == 1 else strict_json({"results": [r.to_dict() for r in results]},
                                                                          indent=2, default=float))
        return 0
    for res in results:
        print_result(res, model, phase)
    if len(results) > 1:
        print_comparison(results)
    return 0


def _cmd_op(a: argparse.Namespace) -> int:
    from .arch.loader import load_arch
    from .sim.engine import op_cost
    from .workloads.einsum import gemm_op

    arch = load_arch(a.arch)
    if a.rows or a.cols or a.dataflow:
        arch = _override_array(arch, a.rows, a.cols, a.dataflow)
    if a.dtype is None:  # the device's engine format (an FPGA's INT8), else bf16
        a.dtype = arch.meta.get("formats", {}).get("weights", "bf16")
    op = gemm_op(a.m, a.n, a.k, a.dtype)
    from .sim.engine import _capacity

    held = _capacity(arch)  # the backing memory (and an RDU's or FPGA card's DDR tier); a wafer checks its cores
    if arch.device_class != "wafer" and op.bytes > held:
        from .errors import CapacityError

        raise CapacityError(f"the GEMM's operands need {op.bytes:,.0f} B but {arch.name}'s memory holds "
                            f"{held:,.0f} B; use smaller --m/--n/--k or a narrower --dtype")
    if a.mapper != "default":
        from .sim.engine import matmul_cost

        cost = matmul_cost(op, arch, a.objective, a.mapper)
    else:
        cost = op_cost(op, arch, a.objective, isolated=True)
    out = {"op": "gemm", "m": a.m, "n": a.n, "k": a.k, "dtype": a.dtype, "arch": arch.name,
           "flops": op.flops, **cost.to_dict()}
    from .dtypes import get_dtype
    from .sim.result import roof

    out["roof"] = roof(arch, get_dtype(a.dtype).compute)  # the report draws it without reloading the device
    from .sim.engine import launch_overhead

    out["launch_s"] = launch_overhead("matmul", arch, True)  # in the latency: the op is timed alone, from the host
    if a.save:
        from .reports.build import save

        save(a.save, "op", out)
    if a.report:
        from .reports.build import op_report
        from .reports.html import write

        write(a.report, op_report(out))
    if a.json:
        print(strict_json(out, 2))
        return 0
    print(f"gemm M={a.m} N={a.n} K={a.k} {a.dtype} on {arch.name}")
    print(f"  latency {fmt_s(cost.latency_s)} ({cost.cycles:.0f} cycles; compute {cost.compute_cycles:.0f}, "
          f"stall {cost.stall_cycles:.0f})")
    print(f"  utilization {cost.utilization:.3f}  bound {cost.bound}  energy {cost.energy_j:.3g} J  "
          f"{op.flops / cost.latency_s / 1e12:.1f} TFLOP/s")
    if out["launch_s"] > 0:
        host = " (a GPU's fitted host-side launch and sync, as its measured kernels were timed)" \
            if arch.device_class == "gpu" else ""
        step = ("a fused block pays one launch per pipeline" if arch.device_class == "dataflow"
                else "kernels pay the device's in-stream launch gap instead")
        print(f"  of which launch {fmt_s(out['launch_s'])}{host}: the GEMM timed alone; in a model step (`simulate`) {step}")
    for name, b in cost.bytes_by_level.items():
        print(f"  {name:>6}: {fmt_b(b)} moved")
    if cost.mapping and "levels" in cost.mapping:
        for lv in cost.mapping["levels"]:
            extra = f" spatial {lv['spatial']} order {lv['loop_order']}" if "loop_order" in lv else ""
            print(f"  {lv['level']:>6} tile {lv['tile']}{extra}")
    elif cost.mapping:
        print("  mapping: " + ", ".join(f"{k}={v}" for k, v in cost.mapping.items()))
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from .sim.serve_command import run

    return run(a)


def _cmd_coe(a: argparse.Namespace) -> int:
    from .sim.coe_command import run

    return run(a)


def _cmd_reproduce(a: argparse.Namespace) -> int:
    from .validation.reproduce import list_cases, load_case, run_case

    if a.name and (a.all or a.list):
        raise SpecError(f"give a case name ({a.name}) or --{'all' if a.all else 'list'}, not both")
    if a.list:
        names = list_cases()
        if a.json:
            print(strict_json([{"name": n, "paper": load_case(n)["paper"], "claim": load_case(n)["claim"]} for n in names], 2))
            return 0
        w = max((len(n) for n in names), default=0)
        for n in names:
            c = load_case(n)
            print(f"{n:<{w}}  {c['paper']}: {c['claim']}")
        return 0
    names = list_cases() if a.all else [a.name] if a.name else []
    if not names:
        raise SpecError("give a case name, --all or --list")
    out = [run_case(n) for n in names]
    width = max(len(r["name"]) for r in out)
    if a.json:
        print(strict_json(out, 2))
        return 0
    for r in out:
        lo, hi = r["claimed"] if isinstance(r["claimed"], list) else (None, None)
        claimed = (r["claimed"] if not isinstance(r["claimed"], list) else f">= {lo}" if hi is None
                   else f"<= {hi}" if lo is None else f"{lo}..{hi}")
        tol = f" +-{r['tolerance_pct']:g} %" if r["tolerance_pct"] else ""
        status = "PASS" if r["passed"] else "GAP " if r["known_gap"] else "FAIL"
        print(f"{status}  {r['name']:<{width}} claimed {claimed}{tol}  simulated {r['simulated']:.4g}  ({r['paper']})")
        if r["known_gap"] and not r["passed"]:
            print(f"      known gap: {r['known_gap']}")
    return 0 if all(r["passed"] or r["known_gap"] for r in out) else 1


def _cmd_report(a: argparse.Namespace) -> int:
    from .reports.build import report_from_file
    from .reports.html import write

    write(a.output, report_from_file(a.result))
    print(f"wrote {a.output}")
    return 0


def _cmd_explore(a: argparse.Namespace) -> int:
    from .explore.command import run

    return run(a)


def _cmd_list(a: argparse.Namespace) -> int:
    from .arch.loader import list_archs, load_arch
    from .arch.system import list_systems, load_system
    from .explore.space import list_spaces
    from .workloads.model import list_models, load_model

    if a.json:
        from .sim.hetero import list_hetero

        print(json.dumps({"archs": list_archs(), "hetero": list_hetero(), "models": list_models(),
                          "systems": list_systems(), "spaces": list_spaces()}))
        return 0
    from .sim.hetero import list_hetero, load_hetero

    archs, models, hetero, systems = list_archs(), list_models(), list_hetero(), list_systems()
    w = max(len(n) for n in [*archs, *models, *hetero, *systems])  # one name column for every section
    print("devices:")
    for n in archs:
        arch = load_arch(n)
        print(f"  {n:<{w}} {arch.device_class:<9} {arch.description}")
    print("models:")
    for n in models:
        m = load_model(n)
        print(f"  {n:<{w}} {m.params / 1e9:7.2f} B params, {m.n_layers} layers, d_model {m.d_model}")
    print("host + PIM devices (simulate --arch NAME):")
    for n in hetero:
        print(f"  {n:<{w}} {load_hetero(n)['description']}")  # type: ignore[index]
    print("systems:")
    for n in systems:
        sy = load_system(n)
        print(f"  {n:<{w}} {sy.n_devices} x {sy.device.name}, {sy.intra_topology}")
    print("design spaces (xpusim explore --space NAME): " + ", ".join(list_spaces()))
    return 0


def _cmd_validate(a: argparse.Namespace) -> int:
    from .errors import SpecError
    from .validation.compare import KINDS, compare, summarise, validate_shipped

    if a.csv or a.kind:
        if not (a.csv and a.kind and a.arch):
            raise SpecError("validating your own data needs --arch, --kind and --csv together")
        if a.kind not in KINDS:
            raise SpecError(f"unknown kind {a.kind!r}; use one of {', '.join(KINDS)}")
        df = compare(a.arch, a.kind, a.csv, progress=not a.quiet)
        summary = {a.arch: {a.kind: summarise(df)}}
        rows = df
    else:
        summary, rows = validate_shipped([a.arch] if a.arch else None, progress=not a.quiet)
        if not summary:
            raise SpecError(f"no measured data ships for {a.arch!r}; give your own with --kind and --csv")
    if a.save:
        from .reports.build import save

        save(a.save, "validate", {"rows": rows.to_dict(orient="records"), "summary": summary})
    if a.report:
        from .reports.build import validate_report
        from .reports.html import write

        write(a.report, validate_report(rows, summary))
    if a.json:
        print(strict_json({"summary": summary, "rows": rows.to_dict(orient="records")} if a.verbose else summary, 2))
        return 0
    if a.verbose:
        print(rows.to_string(index=False))
    table = [("device", "kind", "N", "MAPE %", "max |err| %")]
    table += [(dev, kind, str(v["n"]), f"{v['mape_pct']:.2f}", f"{v['max_abs_pct_err']:.2f}")
              for dev, kinds in summary.items() for kind, v in kinds.items()]
    widths = [max(len(row[c]) for row in table) for c in range(5)]  # each column as wide as its widest cell
    for row in table:
        print("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xpusim", description="Simulate transformer workloads on accelerators.")
    p.add_argument("--version", action="version", version=f"xpusim {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    s = sub.add_parser("simulate", help="simulate one prefill or decode step of a model on a device")
    s.add_argument("--arch", nargs="+", action="extend",
                   help="device preset name or YAML file; several give a side-by-side comparison")
    s.add_argument("--model", required=True, help="model preset name, xpusim YAML or Hugging Face config.json")
    s.add_argument("--phase", required=True, choices=["prefill", "decode", "verify", "speculative", "generate"],
                   help="the step: a prompt's prefill, a decode step, a verify of drafted tokens, speculative decoding, "
                        "or a whole generation (with --system)")
    s.add_argument("--system", help="multi-device system preset or YAML (see docs/systems.md)")
    s.add_argument("--tp", type=_positive_int, default=1, help="tensor-parallel degree (with --system)")
    s.add_argument("--pp", type=_positive_int, default=1, help="pipeline stages (with --system)")
    s.add_argument("--dp", type=_positive_int, default=1, help="data-parallel replicas (with --system)")
    s.add_argument("--ep", type=_positive_int, default=1, help="expert-parallel degree: 1, or tp x dp (with --system)")
    s.add_argument("--sp", action="store_true", help="sequence parallelism: reduce-scatter + all-gather")
    s.add_argument("--microbatches", type=_positive_int,
                   help="pipeline micro-batches, a divisor of each replica's batch (default: one per stage, or the largest "
                        "divisor below that)")
    s.add_argument("--plan", choices=["auto"], help="search the parallel plans of the system and take the best")
    s.add_argument("--gen", type=_positive_int, help="tokens generated per sequence (--phase generate)")
    s.add_argument("--pim", help="a PIM device (class pim) in the --arch host's memory: host + PIM execution")
    s.add_argument("--pim-stacks", type=_positive_int, help="copies of the --pim device (e.g. HBM stacks; default 1)")
    s.add_argument("--pim-memory", choices=["shared", "added"],
                   help="the PIM stacks are the host's own memory (shared, default) or extra memory beside it (added)")
    s.add_argument("--placement", choices=["auto", "attention", "host", "pim"],
                   help="host + PIM op placement: the faster side (Duplex), attention on PIM (AttAcc), or one side")
    s.add_argument("--pim-mode", choices=["blocked", "concurrent"],
                   help="host and PIM alternate, or two sub-batches interleave (NeuPIMs)")
    s.add_argument("--wafers", type=_positive_int, help="wafer-scale devices: wafers in a pipeline of layer stages")
    s.add_argument("--weight-streaming", action="store_true",
                   help="wafer-scale devices: keep the weights off-wafer and stream them in over the wafer's I/O")
    s.add_argument("--wafer-side", type=_positive_int, help="wafer-scale devices: fix the side of the square core regions")
    s.add_argument("--wafer-algorithm", choices=["meshgemm", "meshgemv", "naive"],
                   help="wafer-scale devices: force one contraction mapping (naive: the GPU-style baseline)")
    s.add_argument("--rdu-mode", choices=["fused", "looped", "unfused"],
                   help="dataflow devices: fused pipelines (default), kernel looping, or kernel by kernel")
    s.add_argument("--ignore-memory", action="store_true",
                   help="simulate even when the footprint exceeds device memory (reported, not refused)")
    s.add_argument("--batch", type=_positive_int, default=1, help="sequences in the step (default 1)")
    s.add_argument("--seq", type=_positive_int, help="prompt tokens per sequence (prefill)")
    s.add_argument("--context", type=_positive_int, help="tokens attended per sequence (decode)")
    s.add_argument("--weight-dtype", help="override the weight format (e.g. fp8, int4)")
    s.add_argument("--act-dtype", help="override the activation format")
    s.add_argument("--kv-dtype", help="override the KV-cache format")
    s.add_argument("--embed-dtype", help="override the embeddings' and LM head's format (default: the weights' dense format)")
    s.add_argument("--objective", default="latency", choices=["latency", "energy", "edp", "throughput"],
                   help="mapper objective (the loop-nest mappers of generic and systolic devices and the wafer mapper "
                        "use it; GPU kernels are picked for speed and FPGA, PIM and RDU engines run one schedule); "
                        "throughput ranks --plan auto by tokens/s")
    s.add_argument("--shared-prefix", type=_positive_int, help="decode: context tokens every sequence shares (Hydragen)")
    s.add_argument("--format-error", action="store_true",
                   help="also emulate the number formats and report the relative error of a reduced layer vs float64")
    s.add_argument("--chunk", type=_positive_int, help="prefill the prompt this many tokens at a time (chunked prefill)")
    s.add_argument("--draft-tokens", type=_positive_int, help="tokens drafted per step (verify, speculative)")
    s.add_argument("--acceptance", type=float, help="per-token acceptance rate of the drafts (speculative)")
    s.add_argument("--draft-model", help="draft model preset or file (speculative)")
    s.add_argument("--medusa-heads", type=_positive_int, help="Medusa heads as the drafter (speculative)")
    s.add_argument("--tree-width", type=_positive_int,
                   help="candidates per level of a token tree (speculative with Medusa heads, or verify; default 1: a chain)")
    s.add_argument("--mla-form", choices=["naive", "absorbed"], help="multi-head latent attention form (default: the faster)")
    s.add_argument("--routing", help="MoE tokens per expert: balanced (default), zipf:S, or a file of per-expert weights")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--csv", metavar="FILE", help="write the per-op table as CSV")
    s.add_argument("--report", metavar="HTML", help="write an interactive HTML report (offline, self-contained)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--save", metavar="JSON", help="save the result for `xpusim report`")
    s.add_argument("--trace", metavar="FILE", help="write the timeline as Chrome/Perfetto trace JSON")
    s.set_defaults(func=_cmd_simulate)

    o = sub.add_parser("op", help="cost one operator on a device, timed alone (a GPU adds its fitted host-side launch)")
    o.add_argument("kind", choices=["gemm"], help="the operator (gemm: C[m,n] = A[m,k] B[k,n])")
    o.add_argument("--m", type=_positive_int, required=True, help="rows of A and C")
    o.add_argument("--n", type=_positive_int, required=True, help="columns of B and C")
    o.add_argument("--k", type=_positive_int, required=True, help="the contracted dimension")
    o.add_argument("--dtype", default=None,
                   help="operand format (default: the device's engine weight format if its preset declares one, else bf16)")
    o.add_argument("--arch", required=True, help="device preset or YAML")
    o.add_argument("--rows", type=_positive_int, help="systolic array rows (overrides the preset)")
    o.add_argument("--cols", type=_positive_int, help="systolic array columns (overrides the preset)")
    o.add_argument("--dataflow", choices=["ws", "os", "is"], help="systolic dataflow (overrides the preset)")
    o.add_argument("--objective", default="latency", choices=["latency", "energy", "edp"],
                   help="what the mapper minimises (default latency; generic, systolic and wafer devices)")
    o.add_argument("--mapper", default="default", choices=["default", "exhaustive", "sampled"],
                   help="mapping search for generic/systolic devices (exhaustive: exact, small spaces)")
    o.add_argument("--json", action="store_true", help="print the cost as JSON (a report can be made from it)")
    o.add_argument("--report", metavar="HTML", help="write an interactive HTML report")
    o.add_argument("--save", metavar="JSON", help="save the result for `xpusim report`")
    o.set_defaults(func=_cmd_op)

    v = sub.add_parser("validate", help="compare predictions with measured kernel latencies")
    v.add_argument("--arch", help="device preset or YAML (default: every device with shipped data)")
    v.add_argument("--kind", help="kind of your CSV: gemm, softmax, layernorm or gelu")
    v.add_argument("--csv", metavar="FILE", help="your measurements, in a format of validation/README.md")
    v.add_argument("--json", action="store_true", help="print the comparison as JSON")
    v.add_argument("--report", metavar="HTML", help="write an interactive HTML report")
    v.add_argument("--save", metavar="JSON", help="save the comparison for `xpusim report`")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.add_argument("--verbose", "-v", action="store_true", help="print every row (with --json: {summary, rows})")
    v.set_defaults(func=_cmd_validate)

    e = sub.add_parser("explore", help="search co-designed hardware, mapping and workload knobs with Optuna")
    from .explore.command import add_arguments

    add_arguments(e)
    e.set_defaults(func=_cmd_explore)

    sv = sub.add_parser("serve", help="simulate request-level serving (continuous batching, chunked prefill, ...)")
    from .sim.serve_command import add_arguments as serve_arguments

    serve_arguments(sv)
    sv.set_defaults(func=_cmd_serve)

    ce = sub.add_parser("coe", help="serve a composition of experts with an expert cache in device memory")
    from .sim.coe_command import add_arguments as coe_arguments

    coe_arguments(ce)
    ce.set_defaults(func=_cmd_coe)

    rp = sub.add_parser("reproduce", help="run the shipped paper reproductions (claimed vs simulated)")
    rp.add_argument("name", nargs="?", help="a case (see --list)")
    rp.add_argument("--list", action="store_true", help="name every case")
    rp.add_argument("--all", action="store_true", help="run every case")
    rp.add_argument("--json", action="store_true", help="print the cases' results as JSON")
    rp.set_defaults(func=_cmd_reproduce)

    r = sub.add_parser("report", help="write the HTML report of a saved result (--save or --json output)")
    r.add_argument("result", help="a JSON file from --save (simulate, op, explore, serve, validate), or from simulate/op --json")
    r.add_argument("-o", "--output", required=True, metavar="HTML", help="the HTML file to write")
    r.set_defaults(func=_cmd_report)

    ls = sub.add_parser("list", help="list device and model presets")
    ls.add_argument("--json", action="store_true", help="print the presets as JSON")
    ls.set_defaults(func=_cmd_list)
    return p


#: each command's output-file flags (checked before any work: a directory or an unwritable place is refused)
OUTPUT_FLAGS = {"simulate": ("csv", "report", "save", "trace"), "op": ("report", "save"), "validate": ("report", "save"),
                "explore": ("report", "save"), "serve": ("report", "save"), "report": ("output",)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for dest in OUTPUT_FLAGS.get(args.cmd, ()):
            if getattr(args, dest, None):
                check_writable(getattr(args, dest), "-o" if dest == "output" else f"--{dest}")
        return int(args.func(args))
    except XpusimError as e:
        print(f"xpusim: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file the readers and writers above did not name (each names its own)
        print(f"xpusim: error: {e.filename or 'a file'}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
