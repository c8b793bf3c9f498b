"""Factories that fail the way real ones do: a native crash while building the model."""


def segfault():
    """Crashes the process (reads address 0), as a broken native extension would."""
    import ctypes

    ctypes.string_at(0)
