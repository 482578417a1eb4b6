"""Fit the one calibrated constant of the area model on the H100 alone, and check the others.

    python -m xpusim.validation.fit_area            # fit, print the check table, write arch/area.py
    python -m xpusim.validation.fit_area --dry-run  # fit and print only

``CORE_OVERHEAD_MM2_45`` (``arch/area.py``) is the per-core logic the sourced components omit
(schedulers, dispatch, load/store, special-function and FP64 units, operand collectors, clocking):
45 nm-equivalent mm^2 per SM / CU / matrix unit, scaled to the node like every logic coefficient.
It is solved so that the modelled GH100 (the physical die of ``h100-sxm``) has its published 814 mm^2;
every other die area below is a prediction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..arch import area
from ..arch.loader import load_arch
from .write_fitted import write_line

FIT_ON = ("h100-sxm", 814.0)  # NVIDIA H100 whitepaper: GH100, 814 mm^2, TSMC 4N
#: published die areas of the dies behind other presets (whitepapers; see docs/area-power-cost.md)
CHECKS = (("a100-80gb", 826.0), ("v100s", 815.0), ("l40s", 608.5), ("rtx-4090", 608.5))
#: Aldebaran (mi210): sum of LLMCompass's die-photo breakdown (ISCA 2024, ae/figure6/real_hardware/die_area.csv),
#: not an official figure; its on-chip interconnect is also the source of NOC_MM2_PER_CORE_6NM
ALDEBARAN_PHOTO = ("mi210", 446.22 + 33 + 25.2 + 83.26 + 40.83 + 45.52 + 42 + 4)
#: LLMCompass's die-photo breakdown of the GA100, mm^2 (same file): for a per-component comparison only
GA100_PHOTO = {"cores": 476.25, "on-chip interconnect": 76.44, "L2": 119.31, "memory PHY": 58.0, "memory controller": 31.77,
               "off-chip I/O": 20.95, "other": 40.0}


def fit() -> float:
    """The per-core overhead (45 nm-equivalent mm^2) that gives the GH100 its published area."""
    name, published = FIT_ON
    arch = load_arch(name)
    rest = sum(v for k, v in area.area_breakdown(arch).items() if k != "other")
    return (published - rest) / (area.physical(arch)["cores"] * area.area_factor(arch.meta["technology_nm"]))


def check_table() -> list[tuple[str, float, float]]:
    """(preset, modelled mm^2, published mm^2) for the fit chip and every check."""
    return [(n, area.die_area_mm2(load_arch(n)), pub) for n, pub in (FIT_ON, *CHECKS, ALDEBARAN_PHOTO)]


def write(value: float, path: Path = Path(area.__file__)) -> None:
    write_line(path, r"CORE_OVERHEAD_MM2_45 = [0-9.]+", f"CORE_OVERHEAD_MM2_45 = {value:.2f}", "CORE_OVERHEAD_MM2_45")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print only; do not write arch/area.py")
    args = ap.parse_args(argv)
    k = fit()
    print(f"CORE_OVERHEAD_MM2_45 = {k:.2f}  (fitted on {FIT_ON[0]}, {FIT_ON[1]:.0f} mm^2; "
          f"in arch/area.py: {area.CORE_OVERHEAD_MM2_45})")
    if not args.dry_run and f"{k:.2f}" != f"{area.CORE_OVERHEAD_MM2_45:.2f}":
        write(k)
        area.CORE_OVERHEAD_MM2_45 = round(k, 2)
        print("written to arch/area.py")
    print(f"{'preset':<12} {'modelled':>9} {'published':>9} {'error':>7}")
    for name, model, pub in check_table():
        print(f"{name:<12} {model:9.1f} {pub:9.1f} {100 * (model / pub - 1):+6.1f}%")
    b = area.area_breakdown(load_arch("a100-80gb"))
    print("GA100 modelled:", {k: round(v, 1) for k, v in b.items()})
    print("GA100 die photo (LLMCompass):", GA100_PHOTO)


if __name__ == "__main__":
    main()
