"""The one error every part of the assembly raises to stop a start."""

__all__ = ["StartError"]


class StartError(Exception):
    """Anything that must stop the start with one clear line; the base of this layer's errors."""

    code = "start"
