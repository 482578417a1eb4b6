"""HBM pseudo-channel assignment of an FPGA LLM-engine template (``arch/fpga.py``).

An HBM FPGA (Alveo U280/U55C) exposes its stacks as ``hbm_channels`` pseudo-channels, each an equal
slice of the capacity and bandwidth; an engine core's AXI ports reach a group of them directly and
the others only through the HBM switch, at ``hbm_remote_efficiency`` of the rate (FlightLLM's
profiler: 0.35 across channels against 0.7 within, a ratio of 0.5). The template's ``hbm_layout``
says where the stored matrices (weights, and the KV cache of the attention products) go:

* ``per_core``: the channels are dealt out to the cores in contiguous groups (as even as the counts
  allow: 32 over 3 cores is 11/11/10) and each core's share of every matrix's output columns lives
  on its own group, in proportion to the group's size, so that every core streams at the same rate
  and no access crosses the switch; the cores' compute shares follow the columns;
* ``striped``: every matrix is interleaved over all channels and the columns are split evenly
  between the cores, so each core reads ``1 - 1/cores`` of its bytes through the switch.

Memory time is the busiest channel's: the bytes it serves for each core over its sustained rate
(times ``1 / hbm_remote_efficiency`` for another core's requests). Everything is arithmetic on
``cores x channels`` numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HbmPlan:
    """Where a template's stored matrices live: ``local[c]`` channels of core ``c``, the share of every
    matrix's columns core ``c`` holds and computes, and the channel time per byte of the device."""

    layout: str
    channels: int
    local: tuple[int, ...]
    share: tuple[float, ...]
    remote_efficiency: float

    def split(self, columns: int) -> np.ndarray:
        """``columns`` output columns dealt out to the cores in proportion to ``share`` (whole columns,
        largest remainders first; a tie goes to the lower core)."""
        share = np.asarray(self.share)
        exact = share * columns
        n = np.floor(exact).astype(np.int64)
        left = columns - int(n.sum())
        if left:
            n[np.argsort(-(exact - n), kind="stable")[:left]] += 1
        return n

    def seconds(self, core_bytes: np.ndarray, channel_Bps: float) -> float:
        """Time to stream ``core_bytes[c]`` to each core at ``channel_Bps`` per channel: the busiest
        channel's bytes, a remote core's weighted by ``1 / remote_efficiency``."""
        owner = np.repeat(np.arange(len(self.local)), self.local)  # the core each channel is local to
        cores = np.arange(len(self.local))[:, None]
        if self.layout == "per_core":
            per_channel = (core_bytes / np.asarray(self.local))[owner]
            return float(per_channel.max() / channel_Bps)
        cost = np.where(cores == owner[None, :], 1.0, 1.0 / self.remote_efficiency)  # cores x channels
        per_channel = (core_bytes[:, None] / self.channels * cost).sum(axis=0)
        return float(per_channel.max() / channel_Bps)


def core_channels(channels: int, cores: int) -> tuple[int, ...]:
    """Contiguous channel groups per core, as even as possible (the first ``channels % cores`` get one
    more); a core with no channel of its own gets none (only ``striped`` then reaches memory)."""
    q, r = divmod(channels, cores)
    return tuple([q + 1] * r + [q] * (cores - r))


def hbm_plan(channels: int, cores: int, layout: str, remote_efficiency: float) -> HbmPlan:
    """The plan of ``layout`` for ``cores`` engine cores on ``channels`` pseudo-channels."""
    local = core_channels(channels, cores)
    share = tuple(n / channels for n in local) if layout == "per_core" else tuple([1.0 / cores] * cores)
    return HbmPlan(layout=layout, channels=channels, local=local, share=share, remote_efficiency=remote_efficiency)


def channel_fill(plan: HbmPlan, stored_bytes: float, channel_capacity: float) -> dict[str, float | str | list[int]]:
    """How full the channels are when ``stored_bytes`` (weights and KV cache) are laid out by ``plan``.
    Both layouts fill every channel alike (``per_core`` gives each core's group a share in proportion
    to its channels), so the fullest channel holds ``stored_bytes / channels``."""
    fullest = stored_bytes / plan.channels
    return {"layout": plan.layout, "channels": plan.channels, "channels_per_core": list(plan.local),
            "channel_capacity_bytes": channel_capacity, "fullest_channel_bytes": fullest,
            "fullest_channel_fill": fullest / channel_capacity}
