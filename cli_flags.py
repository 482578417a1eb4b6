"""Which ``xpusim simulate`` flags each phase and each path (one device, a host with PIM, a system)
takes: the tables, and the check that refuses, in one line, a flag a run would not use."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .errors import SpecError

PIM_FLAGS = ("pim_stacks", "pim_memory", "placement", "pim_mode")  # a host with PIM's options
WAFER_FLAGS = ("wafers", "wafer_side", "wafer_algorithm", "weight_streaming")  # a wafer-scale device's


def given_flags(a: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """The flags among ``names`` the user set, as typed on the command line."""
    return [f"--{k.replace('_', '-')}" for k in names if getattr(a, k, None)]


#: the phase flags of ``simulate``: the phases that take each, and what it gives
PHASE_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "seq": (("prefill", "decode", "generate"),
            "gives a prompt's tokens (prefill, generate) or an encoder-decoder model's source length (decode)"),
    "context": (("decode", "verify", "speculative"), "gives the cached tokens a decode, verify or speculative step attends"),
    "chunk": (("prefill",), "splits a prefill's prompt into chunks"),
    "gen": (("generate",), "gives the tokens a generation produces per sequence"),
    "shared_prefix": (("decode",), "applies to decode: the leading context tokens every sequence shares"),
    "draft_tokens": (("verify", "speculative"), "gives the drafted tokens a verify or speculative step scores"),
    "tree_width": (("verify", "speculative"), "gives a token tree's candidates per level (verify, speculative)"),
    "acceptance": (("speculative",), "is speculative decoding's acceptance rate"),
    "draft_model": (("speculative",), "is speculative decoding's drafter"),
    "medusa_heads": (("speculative",), "is speculative decoding's drafter"),
}
_FOR_ONE_DEVICE = "runs on one device: give --arch without --pim"
#: how a step runs (one device, a host with PIM, a system): its phases and the flags it cannot honour
PATHS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "--arch": (("prefill", "decode", "verify", "speculative"), {}),
    "--pim": (("prefill", "decode"), {
        "chunk": f"chunked prefill {_FOR_ONE_DEVICE}",
        "shared_prefix": f"a shared-prefix decode {_FOR_ONE_DEVICE}",
        "mla_form": "a host + PIM step takes the default form; drop it",
        "rdu_mode": "for a dataflow device run alone; drop it with --pim",
        "wafers": "for a wafer-scale device run alone; drop it with --pim",
        "weight_streaming": "for a wafer-scale device run alone; drop it with --pim",
        "wafer_side": "for a wafer-scale device run alone; drop it with --pim",
        "wafer_algorithm": "for a wafer-scale device run alone; drop it with --pim",
    }),
    "--system": (("prefill", "decode", "generate"), {
        "chunk": f"chunked prefill {_FOR_ONE_DEVICE}",
        "shared_prefix": f"a shared-prefix decode {_FOR_ONE_DEVICE}",
    }),
}
#: phases that print a summary, not a step's result, so write no files
SUMMARY_PHASES = {"speculative": "speculative decoding", "generate": "a generation"}
OUTPUT_FLAGS = ("save", "report", "trace", "csv")
MAX_TREE_NODES = 100_000  # a token tree's nodes (each is a query row of the verify step)


def _flag(dest: str) -> str:
    return f"--{dest.replace('_', '-')}"


def check_flags(a: argparse.Namespace, path: str, model=None) -> None:
    """Refuse, in one line, a ``simulate`` flag the phase or ``path`` (``--arch``, ``--pim``,
    ``--system``) would not use; nothing is silently ignored."""
    phases, refused = PATHS[path]
    if a.phase not in phases:
        hint = "; generate runs on a system: give --system (e.g. 4x-a100-nvlink) with --tp/--pp or --plan auto" \
            if a.phase == "generate" else ""
        raise SpecError(f"{path} runs the {', '.join(phases[:-1])} or {phases[-1]} phase, not {a.phase}{hint}")
    for dest, (takes, gives) in PHASE_FLAGS.items():
        if getattr(a, dest) is not None and a.phase not in takes:
            raise SpecError(f"{_flag(dest)} {gives}; --phase {a.phase} does not take it (drop {_flag(dest)})")
    for dest, why in refused.items():
        if getattr(a, dest):
            raise SpecError(f"{_flag(dest)} with {path}: {why}")
    if path == "--pim" and a.objective != "latency":
        raise SpecError(f"--objective {a.objective}: a host + PIM step is costed for latency only; drop it")
    if a.objective == "throughput" and not a.plan:
        raise SpecError("--objective throughput ranks --plan auto's plans by tokens/s; give --system with --plan auto, "
                        "or use --objective latency, energy or edp")
    if a.plan:
        fixed = [f"--{k} {getattr(a, k)}" for k in ("tp", "pp", "dp", "ep") if getattr(a, k) != 1]
        fixed += ["--sp"] * bool(a.sp) + [f"--microbatches {a.microbatches}"] * bool(a.microbatches)
        if fixed:
            raise SpecError(f"--plan auto searches every plan; drop {' '.join(fixed)}, or drop --plan auto to run that plan")
    if a.phase in SUMMARY_PHASES and given_flags(a, OUTPUT_FLAGS):
        raise SpecError(f"{given_flags(a, OUTPUT_FLAGS)[0]}: {SUMMARY_PHASES[a.phase]} prints a summary only, not a step's "
                        "result; use --json")
    if a.tree_width and a.draft_tokens:
        nodes = sum(a.tree_width**level for level in range(1, min(a.draft_tokens, 64) + 1))
        if nodes > MAX_TREE_NODES:
            raise SpecError(f"a token tree of {a.draft_tokens} levels of {a.tree_width} candidates has more than "
                            f"{MAX_TREE_NODES:,} nodes; use a smaller --tree-width or --draft-tokens")
    if model is not None and a.phase == "decode" and a.seq is not None and not model.encoder_layers:
        raise SpecError(f"--seq in a decode is an encoder-decoder model's source length; {model.name} is decoder-only "
                        "(drop --seq)")
