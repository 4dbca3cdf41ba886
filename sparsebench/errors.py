"""Exceptions shared across sparsebench."""


class SparsebenchError(Exception):
    """Base class: a problem the user can fix; the CLI prints it as one line, exit code 2."""


class PatternError(SparsebenchError, ValueError):
    """A pattern name or parameter is invalid."""


class Unsupported(SparsebenchError):
    """An implementation cannot run this (pattern, device, dtype, mode) combination."""


class NotComparable(SparsebenchError):
    """Two result sets cannot be compared (other device, other result schema, no common case): gate exit 3."""


class WriteFailed(SparsebenchError):
    """An output file could not be written (disk full, I/O error); complete rows are kept."""


def is_oom_message(text: str) -> bool:
    """Whether an error message says that memory ran out: CUDA's, Python's MemoryError, and the CPU allocator's
    "DefaultCPUAllocator: can't allocate memory" (what `ulimit -v` or a container's memory limit gives)."""
    lower = text.lower()
    return any(s in lower for s in ("out of memory", "memoryerror", "can't allocate memory", "defaultcpuallocator"))
