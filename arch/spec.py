"""Device description shared by every device class: compute units and a memory hierarchy.

The hierarchy is a list of :class:`MemoryLevel` from the outermost (backing store, e.g. HBM) to the
innermost (the level that feeds the MAC lanes). Each level has ``instances`` copies in the device;
the ratio of instance counts of adjacent levels is the spatial fan-out between them. Capacities,
bandwidths and energies are per instance.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import DtypeError, SpecError

DEVICE_CLASSES = ("gpu", "systolic", "fpga", "pim", "dataflow", "wafer", "generic")
DATAFLOWS = ("ws", "os", "is")


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the memory hierarchy (values per instance).

    ``capacity_bytes``: storage per instance; ``bandwidth_Bps``: bytes/s per instance, reads and
    writes together; ``latency_s``: first-byte latency; energies in pJ per byte; ``multicast``: one
    read can feed several children (and partial sums can be reduced on the way up);
    ``double_buffer``: tiles are double-buffered (capacity holds two of each tile);
    ``partitions``: optional fixed split of capacity by operand (``ifmap``/``filter``/``ofmap``);
    ``serves``: the operands this level stores (``None`` = all); the others pass it by, read from and
    written to the nearest level above that stores them (the outermost level stores every operand).
    """

    name: str
    capacity_bytes: float
    bandwidth_Bps: float
    instances: int = 1
    latency_s: float = 0.0
    read_energy_pj_per_byte: float = 0.0
    write_energy_pj_per_byte: float = 0.0
    multicast: bool = False
    double_buffer: bool = True
    partitions: dict[str, float] | None = None
    serves: tuple[str, ...] | None = None


OPERANDS = ("ifmap", "filter", "ofmap")

#: wider compute classes a narrow one is dequantised to, in order of preference
UPCAST: dict[str, tuple[str, ...]] = {
    "fp4": ("fp8", "fp16", "bf16", "fp32"), "fp8": ("fp16", "bf16", "fp32"), "int4": ("int8", "fp16", "bf16", "fp32"),
    "int8": ("fp16", "bf16", "fp32"), "fp16": ("fp32",), "bf16": ("fp32",), "tf32": ("fp32",),
}


@dataclass(frozen=True)
class ComputeUnit:
    """MAC lanes (``kind='matrix'``) or vector lanes (``kind='vector'``), per instance.

    ``rate_per_cycle``: MACs/cycle (matrix) or FLOPs/cycle (vector) per instance, keyed by compute
    class (``bf16``, ``fp8``, ``int8``...); ``energy_pj``: pJ per MAC (matrix) or per FLOP (vector)
    keyed likewise; ``array``: (rows, cols) of a systolic array; ``clock_hz`` overrides the device
    clock for this unit; ``accumulator_bits``: width of the partial sums the unit keeps and spills
    (``None``: the dtype's accumulation type, e.g. 32 bits for int8 and fp32 for bf16);
    ``preload``: a systolic array double-buffers its stationary operand, so only the first fold pays
    the ``R`` cycles of loading it; ``runs_as``: classes the unit computes on another class's lanes
    (a TPU's fp32 operands as one bf16 pass), costed at that class's rate and energy, no silicon of
    their own.
    """

    kind: str
    instances: int
    rate_per_cycle: dict[str, float]
    energy_pj: dict[str, float] = field(default_factory=dict)
    array: tuple[int, int] | None = None
    dataflow: str | None = None
    clock_hz: float | None = None
    accumulator_bits: int | None = None
    preload: bool = False  # systolic: the next fold's stationary operand loads while the current fold streams
    runs_as: dict[str, str] = field(default_factory=dict)

    def resolve(self, compute: str) -> str:
        """The compute class that runs work of class ``compute``: itself when the unit has it, the
        class it ``runs_as``, else the first wider class it has (:data:`UPCAST`: operands are
        dequantised to it, as weight-only and fp8 kernels do on devices without the narrow format);
        raises if none."""
        for c in (compute, *UPCAST.get(compute, ())):
            if c in self.rate_per_cycle:
                return c
            if c in self.runs_as:  # e.g. fp16 widened to fp32, which the unit runs as bf16
                return self.runs_as[c]
        raise DtypeError(
            f"{self.kind} unit has no {compute} throughput nor a wider class to compute it in; it supports "
            f"{', '.join(self.rate_per_cycle)} (choose another dtype or add it to the device's rate table)"
        )

    def fp32_rate(self) -> float:
        """Operations per cycle per instance of fp32 elementwise work (widening conversions, partial-sum
        adds): the fp32 rate, else — a unit without fp32 lanes, e.g. a PIM's fp16 PUs, which add in
        their own format — its fastest class's."""
        return self.rate_per_cycle.get("fp32", max(self.rate_per_cycle.values()))

    def rate(self, compute: str) -> float:
        """Work per cycle per instance for a compute class (run in :meth:`resolve`'s class)."""
        return self.rate_per_cycle[self.resolve(compute)]

    def energy(self, compute: str) -> float:
        """pJ per MAC (matrix) or FLOP (vector) of a compute class, in the class it runs in."""
        return self.energy_pj.get(self.resolve(compute), 0.0) if self.rate_per_cycle else 0.0


@dataclass(frozen=True)
class Arch:
    """A device: clock, compute units, memory hierarchy (outermost first), fixed overheads."""

    name: str
    device_class: str
    clock_hz: float
    memory: tuple[MemoryLevel, ...]
    matrix: ComputeUnit
    vector: ComputeUnit
    launch_overhead_s: float = 0.0
    static_power_w: float = 0.0
    tdp_w: float = 0.0
    description: str = ""
    features: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    rules: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def level(self, name: str) -> MemoryLevel:
        for lv in self.memory:
            if lv.name == name:
                return lv
        raise SpecError(f"device {self.name!r} has no memory level {name!r}; levels: {[lv.name for lv in self.memory]}")

    @property
    def backing(self) -> MemoryLevel:
        """The outermost level (device memory)."""
        return self.memory[0]

    @property
    def matrix_clock_hz(self) -> float:
        return self.matrix.clock_hz if self.matrix.clock_hz is not None else self.clock_hz

    @property
    def vector_clock_hz(self) -> float:
        return self.vector.clock_hz if self.vector.clock_hz is not None else self.clock_hz

    def peak_flops(self, compute: str) -> float:
        """Peak matrix FLOP/s for a compute class (2 FLOPs per MAC)."""
        return 2.0 * self.matrix.rate(compute) * self.matrix.instances * self.matrix_clock_hz

    def fanouts(self) -> list[int]:
        """Spatial fan-out below each level: ``fanouts()[l]`` children per instance of level ``l``
        (the last entry is MAC-unit instances per innermost-level instance)."""
        counts = [lv.instances for lv in self.memory] + [self.matrix.instances]
        return [counts[i + 1] // counts[i] for i in range(len(self.memory))]

    def fingerprint(self) -> str:
        """A stable hash of everything that affects cost (for memoisation), worked out once per
        device object: the dataclass is frozen and the loader fills ``rules`` before returning it.
        Treat ``rules``, ``features`` and ``meta`` as read-only afterwards (derive a changed device
        with ``dataclasses.replace``): an edit in place would keep the cached hash and its costs."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            blob = json.dumps(asdict(self) | {"meta": None}, sort_keys=True, default=str)  # rules included
            cached = hashlib.sha1(blob.encode()).hexdigest()[:16]
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    def validate(self) -> None:
        if self.device_class not in DEVICE_CLASSES:
            raise SpecError(f"device {self.name!r}: class {self.device_class!r} is not one of {', '.join(DEVICE_CLASSES)}")
        if not (self.clock_hz > 0 and math.isfinite(self.clock_hz)):
            raise SpecError(f"device {self.name!r}: clock must be a positive frequency, e.g. '1.4 GHz'")
        for key, value, example in (("launch_overhead", self.launch_overhead_s, "'5 us'"),
                                    ("static_power", self.static_power_w, "'50 W'"), ("tdp", self.tdp_w, "'300 W'")):
            if not (value >= 0 and math.isfinite(value)):
                raise SpecError(f"device {self.name!r}: {key} must be a finite quantity >= 0, e.g. {example}; got {value!r}")
        for unit in (self.matrix, self.vector):
            if unit.clock_hz is not None and not (unit.clock_hz > 0 and math.isfinite(unit.clock_hz)):
                raise SpecError(f"device {self.name!r}: {unit.kind}.clock must be a positive frequency, e.g. '1.4 GHz' "
                                "(or drop it to use the device clock)")
        if not self.memory:
            raise SpecError(f"device {self.name!r}: needs at least one memory level")
        names = [lv.name for lv in self.memory]
        if len(set(names)) != len(names):
            raise SpecError(f"device {self.name!r}: memory level names repeat: {names}")
        prev = None
        for lv in self.memory:
            where = f"device {self.name!r} level {lv.name!r}"
            if lv.instances <= 0:
                raise SpecError(f"{where}: instances must be a positive integer")
            if not lv.capacity_bytes > 0:
                raise SpecError(f"{where}: capacity must be positive, e.g. '40 MiB'")
            if not lv.bandwidth_Bps > 0:
                raise SpecError(f"{where}: bandwidth must be positive, e.g. '2 TB/s'")
            if lv.latency_s < 0 or lv.read_energy_pj_per_byte < 0 or lv.write_energy_pj_per_byte < 0:
                raise SpecError(f"{where}: latency and energies must be >= 0")
            if prev is not None and lv.instances % prev.instances:
                raise SpecError(
                    f"{where}: instances ({lv.instances}) must be a multiple of the level above's ({prev.instances})"
                )
            if lv.partitions is not None:
                bad = sorted(set(lv.partitions) - {"ifmap", "filter", "ofmap"})
                if bad:
                    raise SpecError(f"{where}: partitions keys must be ifmap, filter, ofmap; got {bad}")
            if lv.serves is not None:
                bad = sorted(set(lv.serves) - set(OPERANDS))
                if bad or not lv.serves:
                    raise SpecError(f"{where}: serves must list some of ifmap, filter, ofmap; got {list(lv.serves)}")
                if prev is None and set(lv.serves) != set(OPERANDS):
                    raise SpecError(f"{where}: the outermost level must serve every operand (drop 'serves' there)")
                if lv.partitions is not None and set(lv.partitions) - set(lv.serves):
                    raise SpecError(f"{where}: partitions name operands the level does not serve")
            prev = lv
        for unit in (self.matrix, self.vector):
            where = f"device {self.name!r} {unit.kind} unit"
            if unit.instances <= 0:
                raise SpecError(f"{where}: instances must be a positive integer")
            if not unit.rate_per_cycle or any(not (v > 0) for v in unit.rate_per_cycle.values()):
                raise SpecError(f"{where}: needs positive per-dtype rates, e.g. {{bf16: 1024}}")
        if self.matrix.instances % self.memory[-1].instances:
            raise SpecError(
                f"device {self.name!r}: matrix instances ({self.matrix.instances}) must be a multiple of the "
                f"innermost level's ({self.memory[-1].instances})"
            )
        bits = self.matrix.accumulator_bits
        if bits is not None and (bits < 8 or bits % 8):
            raise SpecError(f"device {self.name!r}: matrix.accumulator_bits must be a whole number of bytes (8, 16, 32, "
                            f"...), got {bits}")
        if self.matrix.array is not None:
            r, c = self.matrix.array
            if r <= 0 or c <= 0:
                raise SpecError(f"device {self.name!r}: array rows and cols must be positive")
            if self.matrix.dataflow not in DATAFLOWS:
                raise SpecError(f"device {self.name!r}: a systolic array needs dataflow ws, os or is")
            for dt, rate in self.matrix.rate_per_cycle.items():  # k MACs per PE per cycle, k a whole number
                if rate % (r * c):
                    raise SpecError(f"device {self.name!r}: matrix macs_per_cycle {dt}: {rate:g} is not a whole multiple "
                                    f"of the {r} x {c} array ({r * c} PEs); give k x {r * c} for k MACs per PE per cycle")


def with_array(arch: Arch, rows: int | None, cols: int | None, dataflow: str | None) -> Arch:
    """A systolic device with another array shape and/or dataflow (its MAC rates scaled by rows x
    cols); ``None`` keeps the device's."""
    from dataclasses import replace

    from ..errors import SpecError

    if arch.matrix.array is None:
        raise SpecError(f"--rows/--cols/--dataflow need a systolic device; {arch.name!r} is a {arch.device_class}")
    r, c = rows or arch.matrix.array[0], cols or arch.matrix.array[1]
    old = arch.matrix.array[0] * arch.matrix.array[1]
    rates = {k: v * r * c / old for k, v in arch.matrix.rate_per_cycle.items()}
    mat = replace(arch.matrix, array=(r, c), dataflow=dataflow or arch.matrix.dataflow, rate_per_cycle=rates)
    return replace(arch, name=f"{arch.name}[{r}x{c},{mat.dataflow}]", matrix=mat)
