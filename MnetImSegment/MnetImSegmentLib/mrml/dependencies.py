"""What to tell a Slicer user whose Python lacks a package the network needs."""

from __future__ import annotations

from ..core.errors import MnetImError


def raiseForMissingDependencies(missing: list[str]) -> None:
    """Raise :class:`MnetImError` saying how to install the missing packages (pip names); nothing if none."""
    if not missing:
        return
    if "torch" in missing:
        raise MnetImError(
            "PyTorch is not installed in Slicer's Python. Click 'Segment CTV' in the MnetImSegment module to "
            "install it (through the PyTorch extension when it is installed), or install it from the "
            "PyTorch Utils module; then try again."
        )
    raise MnetImError(
        f"The Python package(s) {', '.join(missing)} are missing. Click 'Segment CTV' in the MnetImSegment "
        f"module to install them, or run slicer.util.pip_install('{' '.join(missing)}') in the Python console."
    )
