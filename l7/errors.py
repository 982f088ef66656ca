"""The root of every exception l7gate's core raises."""


class L7GateError(Exception):
    """An l7gate error."""
