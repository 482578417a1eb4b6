"""Error types. Every bad input raises a subclass of :class:`XpusimError` whose message says what is
wrong and how to fix it, in one line; the CLI prints it and exits 2."""

from __future__ import annotations


class XpusimError(Exception):
    """Base class of every error xpusim reports to a user. The message is kept on one line: line
    breaks that arrive with user-supplied names or values are shown escaped."""

    def __str__(self) -> str:
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


class SpecError(XpusimError):
    """A device, model, trace or mapping description is malformed or inconsistent."""


class PresetNotFound(XpusimError):
    """A preset name is unknown."""


class ShapeError(XpusimError):
    """A size is zero, negative or not an integer."""


class DtypeError(XpusimError):
    """A number format is unknown or unsupported by a device."""


class CapacityError(XpusimError):
    """A model, tensor or tile does not fit the memory it must live in."""


class MappingError(XpusimError):
    """A mapping is invalid for its operator or device (e.g. it breaks a capacity)."""
