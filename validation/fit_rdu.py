"""Fit the SN40L's kernel-launch cost from one published result and write it into the sn40l preset.

    python -m xpusim.validation.fit_rdu            # fit, print, write arch/presets/sn40l.yaml
    python -m xpusim.validation.fit_rdu --dry-run  # fit and print only

The datum (Koeplinger et al., "Kernel Looping: Eliminating Synchronization Boundaries for Peak
Inference Performance", arXiv 2410.23668): on an 8-socket SN40L node, looping the decoder's
per-layer kernels into one pipelined kernel speeds Llama 3.1 8B decode (BF16, batch 1, context 4096)
up by up to 2.2x. In xpusim a fused step pays one kernel launch ``L`` per block instance (embedding,
each layer, head: ``n`` launches) on top of its busy time ``B`` (the pipelines and the all-reduces);
looped (``rdu_mode: looped``), one per block (``k`` = 3: embedding, the looped layers, head). So
``B + n L = 2.2 (B + k L)``, i.e. ``L = 1.2 B / (n - 2.2 k)``, with ``B`` simulated by the same
model with ``L = 0``. Nothing else is fitted; the fusion, model-switching and
composition-of-experts reproductions are not seen by the fit.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..arch.loader import PRESETS_DIR, load_arch
from ..arch.system import load_system
from ..sim.engine import clear_cache
from ..sim.events import simulate_system
from ..sim.parallel import Plan
from ..workloads.model import load_model
from ..workloads.phases import Decode
from .write_fitted import write_line

PRESET = "sn40l"
NODE = "sn40l-node"
#: Kernel Looping, abstract and Table 1: Llama 3.1 8B, BF16, batch 1, context 4096, 8 sockets: up to 2.2x
SPEEDUP = 2.2
MODEL, BATCH, CONTEXT, SOCKETS = "llama-3-8b", 1, 4096, 8


def busy_and_launches() -> tuple[float, int, int]:
    """The decode step's busy time with free launches, and its launches per step fused (block
    instances) and looped (blocks)."""
    arch = load_arch(PRESET)
    spec = arch.rules["rdu"]
    free = dataclasses.replace(arch, rules={**arch.rules, "rdu": dataclasses.replace(spec, kernel_launch_s=1e-30)})
    node = dataclasses.replace(load_system(NODE), device=free)
    clear_cache()
    res = simulate_system(node, load_model(MODEL), Decode(BATCH, CONTEXT), Plan(tp=SOCKETS), check_memory=False)
    blocks = res.ops.drop_duplicates("block")["repeat"]
    return res.latency_s, sum(int(r) for r in blocks), len(blocks)


def fit() -> tuple[float, float, int, int]:
    """(kernel launch s, busy s, launches per step fused, launches per step looped)."""
    busy, n, k = busy_and_launches()
    return (SPEEDUP - 1.0) * busy / (n - SPEEDUP * k), busy, n, k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="fit and print, do not write the preset")
    args = ap.parse_args()
    launch, busy, n, k = fit()
    print(f"{MODEL} decode on {NODE} (TP{SOCKETS}): busy {busy * 1e6:.1f} us, {n} kernels per step fused, {k} looped; "
          f"kernel launch = {SPEEDUP - 1:.1f} x busy / ({n} - {SPEEDUP} x {k}) = {launch * 1e6:.2f} us")
    if args.dry_run:
        return
    line = f"  kernel_launch: {launch * 1e6:.2f} us     # fitted by validation/fit_rdu.py (Kernel Looping's 2.2x)"
    write_line(PRESETS_DIR / f"{PRESET}.yaml", r"  kernel_launch: .*", line, "rdu kernel_launch")


if __name__ == "__main__":
    main()
