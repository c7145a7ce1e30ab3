"""The control plane's errors: every one is a ``pymesh.PymeshError``."""

from __future__ import annotations

from pymesh._native import PymeshError


class ControlPlaneError(PymeshError):
    """Base class of the control plane's errors."""


class ValidationError(ControlPlaneError):
    """An object (or a whole file) was rejected. Names the file, the object
    (``Kind namespace/name``, or its position in the file when it has no name)
    and the field, so the message alone says what to fix and where.
    ``whole_file``: the file could not be read or parsed at all, so the objects
    it held before keep serving until it is fixed; ``transient``: the reason may
    be gone on the next attempt (out of file descriptors), so it is retried."""

    def __init__(
        self,
        message: str,
        *,
        file: str = "",
        obj: str = "",
        field: str = "",
        whole_file: bool = False,
        transient: bool = False,
    ) -> None:
        self.file = file
        self.obj = obj
        self.field = field
        self.reason = message
        self.whole_file = whole_file
        self.transient = transient
        where = ": ".join(p for p in (file, obj, field) if p)
        super().__init__(f"{where}: {message}" if where else message)

    def located(self, *, file: str = "", obj: str = "") -> ValidationError:
        """The same error with the file / object filled in (callers deeper in
        the parser know only the field)."""
        return ValidationError(
            self.reason,
            file=file or self.file,
            obj=obj or self.obj,
            field=self.field,
            whole_file=self.whole_file,
            transient=self.transient,
        )


class RegistrationError(ControlPlaneError):
    """A connecting proxy cannot be registered. ``code`` is the gRPC status
    name the stream is failed with (Istio answers a missing WorkloadGroup with
    ``FAILED_PRECONDITION``)."""

    def __init__(self, message: str, *, code: str = "FAILED_PRECONDITION") -> None:
        self.code = code
        super().__init__(message)


class NodeError(ControlPlaneError):
    """The xDS node (ID or metadata) cannot be parsed."""


class StoreError(ControlPlaneError):
    """The local database cannot be opened, read or written."""
