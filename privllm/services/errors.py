"""The one error every part of the assembly raises to stop a start."""


class StartError(Exception):
    """Anything that must stop the start with one clear line."""
