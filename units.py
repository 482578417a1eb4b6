"""Parsing of quantities with units in spec files: ``"80 GiB"``, ``"2.039 TB/s"``, ``"1.41 GHz"``.

Plain numbers are taken as given in the base unit (bytes, bytes/s, Hz, s, J, W, mm^2).
"""

from __future__ import annotations

import math
import re

from .errors import SpecError

_PREFIX = {
    "": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
    "m": 1e-3, "u": 1e-6, "\u00b5": 1e-6, "\u03bc": 1e-6, "n": 1e-9, "p": 1e-12, "f": 1e-15,
}

# unit kind -> accepted base-unit spellings
_BASE = {
    "bytes": ("B", "byte", "bytes"),
    "bytes_per_s": ("B/s", "Bps"),
    "hz": ("Hz",),
    "seconds": ("s",),
    "joules": ("J",),
    "watts": ("W",),
    "bits_per_s": ("b/s", "bps"),
}

#: kinds counted in whole units, where a fractional prefix is a typo (``mB`` for ``MB``)
_NO_FRACTIONAL_PREFIX = ("bytes", "bytes_per_s", "bits_per_s")

_NUM = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z\u00b5\u03bc/]*)\s*$")


def parse_quantity(value: object, kind: str, field: str) -> float:
    """Return ``value`` in the base unit of ``kind`` (e.g. bytes for ``"bytes"``).

    ``field`` names the spec field in error messages.
    """
    if isinstance(value, bool):
        raise SpecError(f"{field}: expected a number or a quantity like '80 GiB', got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise SpecError(f"{field}: must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise SpecError(f"{field}: expected a number or a quantity like '80 GiB', got {value!r}")
    m = _NUM.match(value)
    if not m:
        raise SpecError(f"{field}: cannot read quantity {value!r}; write e.g. '80 GiB', '2 TB/s', '1.4 GHz'")
    number, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(number):
        raise SpecError(f"{field}: must be a finite number, got {value!r}")
    if unit == "":
        return number
    for base in sorted(_BASE[kind], key=len, reverse=True):
        if unit.endswith(base):
            prefix = unit[: -len(base)]
            if prefix in _PREFIX and _PREFIX[prefix] < 1 and kind in _NO_FRACTIONAL_PREFIX:
                hint = f"did you mean M{base}? " if prefix == "m" else ""
                raise SpecError(f"{field}: {value!r} reads as {_PREFIX[prefix]:g} of a {base} per unit; {hint}"
                                f"{kind.replace('_', ' ')} take the prefixes k, M, G, T, P, Ki, Mi, Gi, Ti")
            if prefix in _PREFIX:
                out = number * _PREFIX[prefix]
                if not math.isfinite(out):
                    raise SpecError(f"{field}: {value!r} is not a finite quantity")
                return out
    allowed = ", ".join(_BASE[kind])
    raise SpecError(f"{field}: unit {unit!r} is not a {kind.replace('_', ' ')} unit (use a prefix + {allowed})")
