"""The package's exceptions: every user-facing failure names the value and the fix."""


class WanCoreError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(WanCoreError, ValueError):
    """A user-supplied value (size, frame count, dtype, conditioning) is not usable."""


class CheckpointError(WanCoreError):
    """A checkpoint file is unreadable, of the wrong kind, or does not match the model."""


class OutputError(WanCoreError, OSError):
    """An output file or folder cannot be made or written (permission, a file in the way, a full disk)."""


class RenderInterrupted(WanCoreError):
    """A render was cancelled through the interrupt callback; nothing was written."""


class RenderError(WanCoreError):
    """A render went numerically wrong (NaN / Inf appeared) although its inputs were valid."""


for _error in (WanCoreError, InputError, CheckpointError, OutputError, RenderInterrupted, RenderError):
    # ComfyUI shows an exception's type as module.name: "wan_core.InputError" (how the package exports it) and
    # not "<custom_nodes folder>.wan_core.errors.InputError", which changes with the folder a user cloned into
    _error.__module__ = "wan_core"
