"""Text output of simulation results (the ``simulate`` tables and summary lines) and the files a run
writes (``--report``, ``--save``, ``--trace``)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from .. import __version__
from ..dtypes import get_dtype
from ..files import write_text
from .result import energy_basis, formats_label, strict_json, throughput_unit


def fmt_s(x: float) -> str:
    """Seconds with a unit from s down to ps, three significant digits (``1.00 ms``, ``123 us``);
    infinite: ``-`` (a side that cannot run an op)."""
    if not math.isfinite(x):
        return "-"
    x = float(f"{x:.3g}")  # rounded first, so 0.9997 ms reads 1.00 ms, not 1e+03 us
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9), ("ps", 1e-12)):
        if abs(x) >= f:
            return f"{x / f:#.3g}".rstrip(".") + f" {unit}"
    return f"{x:#.3g} s"


def fmt_b(x: float) -> str:
    """Bytes with a binary unit (KiB .. TiB), three significant digits."""
    for unit, f in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if x >= f:
            return f"{x / f:.3g} {unit}"
    return f"{x:.0f} B"


def _format_error_line(err: float, weights: str, acts: str, kv: str) -> str:
    return (f"format error {err:.3g} (relative L2 error of a width-reduced layer in weights {weights} / activations "
            f"{acts} / KV {kv} vs float64)")


def print_formats(model, format_error: bool = False, note: str = "") -> None:
    """The formats line of a run (``note``: where they came from) and, with ``format_error``, the
    --format-error line measured in those formats."""
    emb = f", embeddings {model.embedding_dtype}" if model.embedding_dtype != model.weight_dtype else ""
    print(f"formats: weights {model.weight_dtype}, activations {model.act_dtype}, KV {model.kv_dtype}{emb}{note}")
    if format_error:
        from ..workloads.functional.numerics import layer_error

        print(_format_error_line(layer_error(model), model.weight_dtype, model.act_dtype, model.kv_dtype))


def stamp_roofs(a: argparse.Namespace, results: list) -> None:
    """Keep in each result the roof of the device it ran on (:func:`~xpusim.sim.result.roof`; each
    ``--arch``, or the ``--system``'s device), so its report, --save and --json draw that device's
    roofline without loading a device by name (a YAML device, one named like a preset)."""
    from ..arch.loader import load_arch
    from .result import roof, step_compute_class

    if getattr(a, "system", None):
        from ..arch.system import load_system

        devices = [load_system(a.system).device] * len(results)
    else:
        devices = [load_arch(spec) for spec in getattr(a, "arch", None) or []]
    if len(devices) != len(results):
        return
    for arch, res in zip(devices, results, strict=True):
        if "roof" not in res.inputs and arch.name == res.inputs.get("arch"):  # not a host + PIM pair
            res.inputs["roof"] = roof(arch, step_compute_class(res.inputs, arch))


def write_outputs(a: argparse.Namespace, results: list) -> None:
    """Each result's roof (:func:`stamp_roofs`), then --report, --save and --trace of a simulation."""
    stamp_roofs(a, results)
    if a.trace:
        from ..reports.sim_figures import chrome_trace

        write_text(a.trace, strict_json(chrome_trace(results)))  # one process per device
    if a.save:
        from ..reports.build import save

        save(a.save, "simulate", {"results": [r.to_dict() for r in results]})
    if a.report:
        from ..reports.build import simulate_report
        from ..reports.html import write

        write(a.report, simulate_report(results))


def print_energy_scope(static_w: float | None, energy_j: float | None = None, latency_s: float = 0.0, tdp_w: float = 0.0,
                       devices: int = 1) -> None:
    """Say that the printed energy is dynamic only when the device states no static power; that none
    is counted when the device states no energies at all; and when the step's average power over its
    ``devices`` exceeds their ``tdp_w`` (W each)."""
    if energy_j == 0.0 and latency_s > 0:
        print("energy: none counted - the device states no energies and no technology_nm to take them from the "
              "technology table (add technology_nm or energy_pj_per_mac/energy_pj_per_flop/energy_pj_per_byte)")
        return
    over = over_tdp(energy_j, latency_s, tdp_w, devices)
    if over:
        what = "of dynamic power alone (MACs and data movement)" if static_w == 0.0 else "(dynamic and static)"
        print(f"power: the step averages {over:.3g} W per device {what}, above the device's tdp of {tdp_w:.3g} W: "
              "either the modelled energies are too high for this device or, held to its tdp, it would run slower "
              "(xpusim does not throttle)")
    elif static_w == 0.0:
        print("energy: dynamic only (MACs and data movement); the device's static and idle power are not modelled (its "
              "preset states no static_power), so it is a lower bound, not comparable with a board's measured power")


def over_tdp(energy_j: float | None, latency_s: float, tdp_w: float, devices: int = 1) -> float:
    """The average power per device (W) of a step of ``energy_j`` over ``latency_s`` on ``devices``
    devices when it exceeds ``tdp_w`` (W, 0: not stated), else 0."""
    if not energy_j or not latency_s > 0 or not tdp_w > 0:
        return 0.0
    avg = energy_j / latency_s / devices
    return avg if avg > tdp_w else 0.0


#: the mark of a footprint over the device's memory (a step run with --ignore-memory)
EXCEEDS = " - EXCEEDS the device's memory (simulated because of --ignore-memory)"


def op_table(df: Any, extra: tuple[str, ...] = ()) -> str:
    """The per-op table every path prints: block, name, kind, repeat, the ``extra`` columns, latency,
    x repeat, bound, utilization, FLOP/B and share of the step's time; times through :func:`fmt_s`."""
    view = df[["block", "name", "kind", "repeat", *extra, "latency_s", "total_latency_s", "bound", "utilization",
               "intensity"]].copy()
    share = df["total_latency_s"] / df["total_latency_s"].sum()
    view["share"] = (share * 100).map(lambda v: f"{v:5.1f}%")
    for c in ("latency_s", "total_latency_s", *(c for c in extra if c.endswith("_s"))):
        view[c] = view[c].map(fmt_s)
    view["utilization"] = view["utilization"].map(lambda v: f"{v:.2f}")
    view["intensity"] = view["intensity"].map(lambda v: f"{v:.1f}")
    names = {"latency_s": "latency", "total_latency_s": "x repeat", "intensity": "FLOP/B"}
    return view.rename(columns={**names, **{c: c[:-2] for c in extra if c.endswith("_s")}}).to_string(index=False)


def print_result(res: Any, model: Any, phase: Any) -> None:
    """The op table and summary lines of one simulated step."""
    print(f"xpusim {__version__}: {model.name} {phase.name} {vars(phase)} on {res.inputs['arch']}")
    f = res.inputs.get("formats")
    if f:
        src = res.inputs.get("formats_from")
        names = {"weights": "weights", "activations": "activations", "kv": "KV"}
        note = f" ({', '.join(names[k] for k in src['fields'])} from {src['device']}'s engine formats)" if src else ""
        emb = f", embeddings {f['embeddings']}" if f.get("embeddings", f["weights"]) != f["weights"] else ""
        print(f"formats: weights {f['weights']}, activations {f['activations']}, KV {f['kv']}{emb}{note}")
        ran = (res.inputs.get("roof") or {}).get("compute")
        widest = max((f["weights"], f["activations"]), key=lambda x: get_dtype(x).bits)
        wanted = get_dtype(widest).compute if ran else None
        if ran and wanted and ran != wanted:
            print(f"  note: {res.inputs['arch']}'s matrix unit has no {wanted} rate; the contractions compute in {ran}")
    context = getattr(phase, "kv_len", 0) or getattr(phase, "seq", 0)
    if context > model.max_seq_len:
        table = " (its learned position table is extended for the cost; the numeric reference refuses it)" \
            if model.position == "learned" else ""
        print(f"  note: {context:,} tokens exceed {model.name}'s trained context of {model.max_seq_len:,}{table}")
    print(op_table(res.ops))
    s = res.summary()
    print(f"latency {fmt_s(s['latency_s'])}   throughput {s['tokens_per_s']:.1f} {throughput_unit(phase.name)}   "
          f"energy {s['energy_j']:.3g} J   achieved {s['achieved_flops_per_s'] / 1e12:.3g} TFLOP/s")
    state = f", SSM state {fmt_b(s['ssm_state_bytes'])}" if s["ssm_state_bytes"] else ""
    plan = res.inputs.get("wafer_plan")
    streaming = (plan or {}).get("mode") == "streaming"
    streamed = " - the weights stream in from external memory, not held on the wafer" if streaming else ""
    over = EXCEEDS if s["memory_bytes"] > s["capacity_bytes"] and not streaming else ""
    print(f"memory {fmt_b(s['memory_bytes'])} of {fmt_b(s['capacity_bytes'])} "
          f"(weights {fmt_b(s['weights_bytes'])}, KV cache {fmt_b(s['kv_cache_bytes'])}{state}, "
          f"activations {fmt_b(s['activation_bytes'])}){streamed}{over}")
    if "wafer_plan" in res.inputs and plan is None:
        print("wafer: not placed - no layout of the model on the wafers fits (memory ignored); every op ran on the "
              "whole mesh, so the time is a bound, not a placed step")
    fr = res.inputs.get("fpga_resources")
    if fr:
        print("FPGA resources: " + ", ".join(f"{r.upper()} {v['used']:,} of {v['available']:,} "
                                             f"({100 * v['used'] / v['available']:.0f} %)" if v["available"] else
                                             f"{r.upper()} {v['used']:,} of unpublished" for r, v in fr.items()))
        unknown = [r.upper() for r, v in fr.items() if not v["available"]]
        if unknown:
            print(f"FPGA fit: not checked for {', '.join(unknown)} - the part's counts are not published in the sources "
                  "xpusim cites; give them under fpga.part in a device YAML to check the fit")
    fp = res.inputs.get("fpga_power")
    if fp and res.latency_s > 0:
        print(f"board power: {fp['board_idle_w']:.1f} W idle + {fp['logic_w']:.1f} W engine logic while running "
              f"(fpga.power); {res.energy_j / res.latency_s:.1f} W on average over this step with its memory traffic")
    elif fr:
        print("board power: not modelled for this part (no fpga.power section); the energy counts the MACs and the "
              "memory traffic only, a lower bound")
    else:
        wafers = (res.inputs.get("wafer_plan") or {}).get("wafers", 1)  # a multi-wafer step's power is all its wafers'
        print_energy_scope(res.inputs.get("static_power_w"), res.energy_j, res.latency_s, res.inputs.get("tdp_w", 0.0),
                           wafers)
    ft = res.inputs.get("fpga_tiers")
    if ft and (ft["weights"] != "hbm" or ft["kv"] != "hbm"):
        w = res.weights_bytes
        print(f"off-chip tiers: weights {fmt_b(w * ft['weights_hbm'])} in HBM and {fmt_b(w * (1 - ft['weights_hbm']))} "
              f"in the card's DDR (streamed at once); KV cache {100 * ft.get('kv_hbm', 1.0):.0f} % in HBM")
    hc = res.inputs.get("hbm_channels")
    if hc:
        print(f"HBM channels: {hc['layout']} layout over {hc['channels']} pseudo-channels of "
              f"{fmt_b(hc['channel_capacity_bytes'])} ({'/'.join(map(str, hc['channels_per_core']))} per core); "
              f"the fullest holds {fmt_b(hc['fullest_channel_bytes'])} ({100 * hc['fullest_channel_fill']:.0f} %)")
    if plan:
        layout = f", {plan['layout']} layout" if plan.get("layout") else ""
        print(f"wafer placement: {plan['mode']}{layout}, {plan['stages']} stage(s) on {plan['side']} x {plan['side']}-core "
              f"regions ({plan['regions_per_wafer']} per wafer, {plan['wafers']} wafer(s)); fullest core holds "
              f"{plan['peak_core_bytes']:,.0f} of {plan['core_sram_bytes']:,} B")
        if plan["mode"] == "overflow":
            print("  the model fits no layout (memory ignored): this is the layout that overflows a core least, its ops "
                  "given the buffers the placement reserves")
    if "format_error" in res.inputs:
        from .engine import model_formats

        f = res.inputs.get("formats") or model_formats(model)
        print(_format_error_line(res.inputs["format_error"], f["weights"], f["activations"], f["kv"]))


def print_comparison(results: list) -> None:
    """One line comparing the devices' steps, saying where their energies or formats differ."""
    line = "comparison: " + "   ".join(f"{r.inputs['arch']} {fmt_s(r.latency_s)} {r.energy_j:.3g} J" for r in results)
    caveats = []
    for what, label in (("energy bases", energy_basis), ("formats", formats_label)):
        seen = [label(r.inputs) for r in results]
        if len(set(seen)) > 1:
            caveats.append(f"{what} differ: " + ", ".join(f"{r.inputs['arch']} {x}" for r, x in zip(results, seen,
                                                                                               strict=True)))
    print(line + (f"   (not like for like: {'; '.join(caveats)})" if caveats else ""))


def print_hetero(res: Any, model: Any, run: Any, format_error: bool) -> None:
    """The per-op table (each group's time on the host and on the PIM, the side chosen) and summary
    lines of a host + PIM step."""
    print(op_table(res.ops, ("device", "host_s", "pim_s")))
    print_formats(run, format_error)
    i = res.inputs
    print(f"{model.name} {i['phase']} on {i['arch']} ({i['placement']} placement, {i['mode']}): latency "
          f"{fmt_s(res.latency_s)}, PIM share of the work {i['pim_share'] * 100:.1f} %")
    over = EXCEEDS if res.memory_bytes > res.capacity_bytes else ""
    print(f"throughput {res.tokens_per_s:.1f} {throughput_unit(i['phase'])}   energy {res.energy_j:.3g} J   memory "
          f"{fmt_b(res.memory_bytes)} of {fmt_b(res.capacity_bytes)} ({i.get('pim_memory', 'shared')} "
          f"PIM memory; weights {fmt_b(res.weights_bytes)}, KV cache {fmt_b(res.kv_cache_bytes)}){over}")
    print_energy_scope(i['static_power_w'], res.energy_j, res.latency_s)
