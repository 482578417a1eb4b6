"""Every shipped model on one device: parameters, KV-cache bytes per token, SSM state per sequence,
and the simulated prefill and decode step latencies (or the memory-fit error with its remedy).

    python bench/model_table.py [--arch h100-sxm] [--seq 2048] [--context 4096] [--batch 1]
"""

from __future__ import annotations

import argparse
import time

from xpusim import XpusimError, list_models, load_model, simulate
from xpusim.workloads import Decode, Prefill


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="h100-sxm")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    print(f"{'model':<20} {'params':>9} {'KV B/token':>11} {'SSM state/seq':>14} {'prefill':>10} {'decode':>10}  note")
    t0 = time.perf_counter()
    for name in list_models():
        m = load_model(name)
        src = a.seq if m.encoder_layers else 0
        cells = []
        note = ""
        for phase in (Prefill(a.batch, a.seq), Decode(a.batch, min(a.context, 512) if src else a.context, src)):
            try:
                cells.append(f"{simulate(a.arch, m, phase).latency_s * 1e3:8.2f}ms")
            except XpusimError as e:
                cells.append(f"{'no fit':>10}")
                note = str(e).split("; try ")[-1]
        print(f"{name:<20} {m.params / 1e9:8.2f}B {m.kv_bytes_per_token:>11,.0f} {m.ssm_state_bytes(1):>14,.0f} "
              f"{cells[0]:>10} {cells[1]:>10}  {('try ' + note) if note else ''}")
    print(f"({a.arch}, batch {a.batch}, prefill {a.seq} tokens, decode at context {a.context} "
          f"(t5: 512 decoder tokens over a {a.seq}-token source); {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
