"""Two off-chip tiers behind a device (a dataflow socket's HBM and DDR, an FPGA card's HBM and DDR):
where the weights and the KV cache live."""

from __future__ import annotations

from typing import Any

from ..arch.sections import TIER_POLICIES
from ..arch.spec import Arch
from ..errors import SpecError


def _label(frac: float) -> str:
    return "hbm" if frac >= 1.0 else "ddr" if frac <= 0.0 else "hbm+ddr"


def tiers(near_bytes: float, weights_bytes: float, kv_bytes: float, near_share: float = 1.0) -> dict[str, Any]:
    """The KV cache in the near tier (HBM, ``near_bytes``) as far as it fits, the rest in the far one
    (DDR); the weights filling what is left of the near tier and overflowing into the far one; no more
    than ``near_share`` of either in the near tier. ``kv_hbm`` and ``weights_hbm``: the fractions, and
    so the shares of their traffic, the near tier holds (both tiers stream at once).

    ``near_share``: see :func:`balanced_share`."""
    kv_frac = min(1.0 if kv_bytes <= near_bytes else max(0.0, near_bytes) / kv_bytes, near_share)
    room = near_bytes - kv_bytes * kv_frac
    frac = min(1.0 if weights_bytes <= room else max(0.0, room) / weights_bytes, near_share)
    return {"weights": _label(frac), "weights_hbm": frac, "kv": _label(kv_frac), "kv_hbm": kv_frac}


def balanced_share(near_Bps: float, far_Bps: float, policy: str) -> float:
    """The most of a tensor's bytes a placement ``policy`` (:data:`TIER_POLICIES`) puts in the near
    tier: ``fill`` all it can (the near tier first, fewest joules: DDR costs more per bit); ``balance``
    the share at which both tiers stream it in the same time, ``near / (near + far)`` (bytes/s), past
    which more bytes in HBM would make the HBM the longer stream (activations, which cross only the
    HBM, are not weighed: a larger HBM can then be slower by their share, ~0.02 %)."""
    if policy not in TIER_POLICIES:
        raise SpecError(f"tier placement {policy!r}: use one of {', '.join(TIER_POLICIES)}")
    if policy == "fill" or far_Bps <= 0:
        return 1.0
    return near_Bps / (near_Bps + far_Bps)


def kv_near(place: dict[str, Any]) -> float:
    """The fraction of the KV cache a placement keeps in the near tier (HBM)."""
    return float(place.get("kv_hbm", 1.0 if place.get("kv", "hbm") == "hbm" else 0.0))


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
