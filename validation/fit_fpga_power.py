"""Fit the FPGA board-power model from public U280-class power figures and write it into the
alveo-u280 preset.

    python -m xpusim.validation.fit_fpga_power            # fit, print, write arch/presets/alveo-u280.yaml
    python -m xpusim.validation.fit_fpga_power --dry-run  # fit and print only

Model (``fpga.power``, arch/fpga.py): while the engine runs the board draws ``board_idle`` plus
``clock x (dsp_energy x DSPs + lut_energy x LUTs)`` of the template's logic; HBM traffic is charged
per byte. Data: ``validation/fpga_power/u280_power.csv`` (README there):

* ``lut_energy`` = the kernel-power difference of two Vivado estimates of one design (same DSPs and
  clock) over their LUT difference and the clock (E3 - E4);
* ``dsp_energy`` = E3's kernel power less its LUTs' share, per DSP and cycle;
* ``board_idle`` = M1, a U280 board idle with an engine's bitstream loaded.

E1 (a DSP category at 70 MHz) is printed as a cross-check; FlightLLM's measured 45 W is not seen by
the fit (the flightllm-u280-board-power reproduction).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ..arch.loader import PRESETS_DIR
from .write_fitted import write_line

DATA = Path(__file__).parent / "fpga_power" / "u280_power.csv"
PRESET = "alveo-u280"


def fit() -> dict[str, float]:
    """``board_idle_w``, ``dsp_j`` (per DSP-cycle), ``lut_j`` (per LUT-cycle) and the E1 cross-check."""
    with DATA.open() as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}

    def num(row: str, col: str) -> float:
        return float(rows[row][col])

    if num("E3", "dsp") != num("E4", "dsp") or num("E3", "clock_mhz") != num("E4", "clock_mhz"):
        raise SystemExit("E3 and E4 must share DSPs and clock")
    f = num("E3", "clock_mhz") * 1e6
    lut_j = (num("E3", "kernel_w") - num("E4", "kernel_w")) / ((num("E3", "lut") - num("E4", "lut")) * f)
    dsp_j = (num("E3", "kernel_w") / f - lut_j * num("E3", "lut")) / num("E3", "dsp")
    e1_dsp_j = num("E1", "kernel_w") / (num("E1", "dsp") * num("E1", "clock_mhz") * 1e6)
    return {"board_idle_w": num("M1", "board_idle_w"), "dsp_j": dsp_j, "lut_j": lut_j, "e1_dsp_j": e1_dsp_j}


def power_line(p: dict[str, float]) -> str:
    return (f"  power: {{board_idle: {p['board_idle_w']:.2f} W, dsp_energy: {p['dsp_j'] * 1e12:.3f} pJ, "
            f"lut_energy: {p['lut_j'] * 1e15:.2f} fJ}}   # fitted by validation/fit_fpga_power.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="fit and print, do not write the preset")
    args = ap.parse_args()
    p = fit()
    print(f"lut_energy {p['lut_j'] * 1e15:.2f} fJ per LUT-cycle (E3 - E4), dsp_energy {p['dsp_j'] * 1e12:.3f} pJ per "
          f"DSP-cycle (E3; E1's DSP category gives {p['e1_dsp_j'] * 1e12:.2f}), board idle {p['board_idle_w']:.2f} W (M1)")
    if args.dry_run:
        return
    write_line(PRESETS_DIR / f"{PRESET}.yaml", r"  power: .*", power_line(p), "fpga power")


if __name__ == "__main__":
    main()
