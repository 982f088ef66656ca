"""The datapath's exceptions: one root, :class:`DatapathError`."""

from __future__ import annotations


class DatapathError(Exception):
    """The datapath could not do what was asked."""


class CompileError(DatapathError):
    """bcc could not compile or the kernel refused to load the tc programs."""


class IncompatibleMapError(DatapathError):
    """A pinned map exists but has another type or layout than this version expects."""


class NetlinkOpError(DatapathError):
    """A netlink operation (tc, rules, routes) failed."""


class MapWriteError(DatapathError):
    """The kernel refused a map write (typically: the map is full). Nothing was written: what the
    entry would have allowed stays denied."""
