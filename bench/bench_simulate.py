"""Wall time of whole-model simulations, mapper search included.

Prints the median of 5 runs after one warm-up, with the op-cost memo cleared before every run
(cold: every distinct op is mapped from scratch), and the warm time (memo kept) for reference.

    python bench/bench_simulate.py [--arch h100-sxm] [--wafer wse-3] [--pim hbm2-pim] [--rdu sn40l-node]
                                   [--fpga alveo-u280]

Target (issues 2, 9, 10, 11 and 12): under 0.2 s each, cold.
"""

from __future__ import annotations

import argparse
import statistics
import time

from xpusim.arch import load_arch
from xpusim.sim.engine import clear_cache, simulate, simulate_trace
from xpusim.workloads import Decode, Prefill, build_trace, load_model
from xpusim.workloads.trace import Trace


def _gpt3_layer_block() -> Trace:
    """One GPT-3 175B decoder layer (the repeated block) in prefill, batch 8 x 2048 tokens."""
    full = build_trace(load_model("gpt3-175b"), Prefill(8, 2048))
    layer = [b for b in full.blocks if b.name == "layer"][0]
    return Trace("gpt3-175b-layer", "prefill", [layer], full.tokens, full.meta)


def timed(fn, runs: int = 5) -> tuple[float, float]:
    clear_cache()
    fn()  # warm-up: imports, numpy first-call costs
    cold = []
    for _ in range(runs):
        clear_cache()
        t = time.perf_counter()
        fn()
        cold.append(time.perf_counter() - t)
    warm = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t)
    return statistics.median(cold), statistics.median(warm)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="h100-sxm")
    ap.add_argument("--wafer", default="wse-3", help="wafer-scale device for the wafer case ('' to skip)")
    ap.add_argument("--rdu", default="sn40l-node", help="dataflow system for the RDU case ('' to skip)")
    ap.add_argument("--pim", default="hbm2-pim", help="PIM device (8 stacks) for the host + PIM case ('' to skip)")
    ap.add_argument("--fpga", default="alveo-u280", help="FPGA device for the FPGA cases ('' to skip)")
    args = ap.parse_args()
    arch = load_arch(args.arch)
    llama = load_model("llama-3-8b")
    layer = _gpt3_layer_block()
    cases = {
        "llama-3-8b prefill b=1 s=2048": lambda: simulate(arch, llama, Prefill(1, 2048), check_memory=False),
        "llama-3-8b decode b=64 ctx=4096": lambda: simulate(arch, llama, Decode(64, 4096), check_memory=False),
        "gpt3-175b layer block prefill b=8 s=2048": lambda: simulate_trace(layer, arch),
    }
    if args.pim:  # a standalone PIM device running a whole decode step in its banks (issue 9)
        cases["llama-3-8b decode b=1 ctx=2048 on aim-gddr6"] = (
            lambda: simulate("aim-gddr6", llama, Decode(1, 2048), check_memory=False))
    if args.pim:  # a host with an 8-stack PIM memory, every op costed on both sides and placed (issue 9)
        from xpusim.sim.hetero import pim_stacks, simulate_hetero

        pim = pim_stacks(args.pim, 8)
        l70 = load_model("llama-3-70b").with_formats("fp16", "fp16", "fp16")
        cases[f"llama-3-70b decode b=8 ctx=4096, {arch.name} + {pim.name}"] = (
            lambda: simulate_hetero(arch, pim, l70, Decode(8, 4096), check_memory=False))  # the speed, not the fit
    if args.rdu:  # a Llama-3-70B decode step on an 8-socket dataflow node, TP8, fused pipelines (issue 11)
        from xpusim.sim.events import simulate_system
        from xpusim.sim.parallel import Plan

        l70b = load_model("llama-3-70b")
        cases[f"llama-3-70b decode b=1 ctx=4096 on {args.rdu} (tp8)"] = (
            lambda: simulate_system(args.rdu, l70b, Decode(1, 4096), Plan(tp=8)))
    if args.fpga:  # a FlightLLM-style engine in its INT8 formats: decode and prefill (issue 12)
        from xpusim.sim.engine import with_engine_formats

        fpga = load_arch(args.fpga)
        l7 = with_engine_formats(load_model("llama-2-7b"), fpga)
        cases[f"llama-2-7b decode b=1 ctx=640 on {fpga.name}"] = lambda: simulate(fpga, l7, Decode(1, 640))
        cases[f"llama-2-7b prefill b=1 s=512 on {fpga.name}"] = lambda: simulate(fpga, l7, Prefill(1, 512))
    if args.wafer:  # a whole-wafer decode step, region search and stage placement included (issue 10)
        wafer = load_arch(args.wafer)
        cases[f"llama-3-8b decode b=1 ctx=4096 on {wafer.name}"] = lambda: simulate(wafer, llama, Decode(1, 4096))
        cases[f"llama-3-8b decode b=1 ctx=2048 on {wafer.name}"] = lambda: simulate(wafer, llama, Decode(1, 2048))
    print(f"device {arch.name}; median of 5 after a warm-up; target < 0.200 s cold")
    print(f"{'case':<56}{'cold (s)':>10}{'warm (s)':>10}  {'target':>6}")
    for name, fn in cases.items():
        cold, warm = timed(fn)
        print(f"{name:<56}{cold:>10.3f}{warm:>10.4f}  {'met' if cold < 0.2 else 'MISSED':>6}")


if __name__ == "__main__":
    main()
