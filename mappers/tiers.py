"""Two off-chip tiers behind a device (a dataflow socket's HBM and DDR, an FPGA card's HBM and DDR):
where the weights and the KV cache live."""

from __future__ import annotations

from typing import Any

from ..arch.spec import Arch


def tiers(near_bytes: float, weights_bytes: float, kv_bytes: float) -> dict[str, Any]:
    """The KV cache in the near tier (HBM, ``near_bytes``) when it fits, else the far one (DDR); the
    weights filling the rest of the near tier and overflowing into the far one (``weights_hbm``: the
    fraction of the weights, and so of their traffic, the near tier holds; both tiers stream at once)."""
    kv = "hbm" if kv_bytes <= near_bytes else "ddr"
    room = near_bytes - (kv_bytes if kv == "hbm" else 0.0)
    frac = 1.0 if weights_bytes <= room else max(0.0, room) / weights_bytes
    return {"weights": "hbm" if frac >= 1.0 else "ddr" if frac <= 0.0 else "hbm+ddr", "weights_hbm": frac, "kv": kv}


def far_tier(arch: Arch) -> tuple[float, float] | None:
    """``(bytes, bytes/s)`` of the DDR tier behind a device's HBM: a dataflow socket's ``rdu.ddr``, an
    FPGA card's ``fpga.part.ddr``; ``None`` for a device without one."""
    if arch.device_class == "dataflow":
        from ..arch.rdu import rdu_spec

        r = rdu_spec(arch)
        return r.ddr_bytes, r.ddr_Bps
    if arch.device_class == "fpga":
        from ..arch.fpga import fpga_spec

        part = fpga_spec(arch).part
        return (part.ddr_bytes, part.ddr_Bps) if part.ddr_bytes else None
    return None
