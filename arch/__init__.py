"""Devices: the shared hierarchy model (:class:`Arch`), loaders and presets."""

from .loader import arch_from_dict, list_archs, load_arch
from .spec import Arch, ComputeUnit, MemoryLevel

__all__ = ["Arch", "ComputeUnit", "MemoryLevel", "arch_from_dict", "list_archs", "load_arch"]
