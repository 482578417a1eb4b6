"""The number-format flags of the commands that run a model on devices (``coe``, ``serve``):
``--weight-dtype``, ``--act-dtype`` and ``--kv-dtype``, defined and applied in one place; which
formats a user chose (``simulate`` and ``--system`` too, with ``--embed-dtype``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..workloads.model import ModelSpec


def add_format_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight-dtype",
                   help="override the weight format, e.g. fp8 or int4 (default: the device's engine format, else the model's)")
    p.add_argument("--act-dtype", help="override the activation format")
    p.add_argument("--kv-dtype", help="override the KV-cache format")


def chosen_formats(a: argparse.Namespace) -> set[str]:
    """The tensor classes whose format the user chose (``with_engine_formats`` keeps them): weights,
    activations, KV cache, and the embeddings where the command takes ``--embed-dtype``."""
    flags = (("weights", a.weight_dtype), ("activations", a.act_dtype), ("kv", a.kv_dtype),
             ("embed", getattr(a, "embed_dtype", None)))
    return {k for k, v in flags if v}


def apply_formats(model: ModelSpec, a: argparse.Namespace) -> ModelSpec:
    """``model`` in the formats the flags chose (an unknown format is a one-line ``DtypeError``)."""
    return model.with_formats(a.weight_dtype, a.act_dtype, a.kv_dtype) if chosen_formats(a) - {"embed"} else model
