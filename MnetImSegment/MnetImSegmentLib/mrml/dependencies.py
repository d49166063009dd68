"""What Slicer's Python needs for the network, and how to install it without breaking Slicer.

Pure decision logic (no Qt, no dialogs, no pip run): the module's widget asks the user once with
:meth:`DependencyPlan.confirmationText`, installs torch through SlicerPyTorch's ``PyTorchUtils``
when that extension is present (it picks a CUDA build matching the driver) and the rest with the
pip arguments of :meth:`DependencyPlan.pipArguments`, whose constraints file pins the versions of
the packages Slicer itself ships (SimpleITK, numpy, vtk) so pip can never replace them.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..core.errors import MnetImError

#: Oldest 3D Slicer the module supports: ``slicer.i18n`` and parameter-node GUI connections (5.4).
MIN_SLICER_VERSION = (5, 4)


@dataclass(frozen=True)
class Requirement:
    """One Python package the network needs: its import name, pip name and minimum version."""

    module: str
    pip: str
    minimum: str

    @property
    def specifier(self) -> str:
        """The pip requirement, e.g. ``torch>=2.1``."""
        return f"{self.pip}>={self.minimum}"


#: What inference needs (the minima are pyproject.toml's).
REQUIREMENTS = (
    Requirement("torch", "torch", "2.1"),
    Requirement("safetensors", "safetensors", "0.4"),
    Requirement("SimpleITK", "SimpleITK", "2.3"),
)
#: Packages Slicer ships in its own Python; an installation must never upgrade or replace them.
SLICER_OWNED = ("SimpleITK", "numpy", "vtk")
TORCH = REQUIREMENTS[0]


def parseVersion(text: str) -> tuple:
    """The numeric release of a version string: ``'2.3.1+cu121'`` -> ``(2, 3, 1)``, ``'2.5.0rc1'`` -> ``(2, 5, 0)``.

    Raises:
        ValueError: The string does not start with a number.
    """
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    if not match:
        raise ValueError(f"'{text}' is not a version number.")
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:  # 2.1 == 2.1.0
        parts.pop()
    return tuple(parts)


def versionAtLeast(installed: str, minimum: str) -> bool:
    """Whether ``installed`` is ``minimum`` or newer (pre-releases count as their release)."""
    return parseVersion(installed) >= parseVersion(minimum)


@dataclass
class DependencyPlan:
    """What to install, decided from the installed versions (see :func:`planInstallation`).

    Attributes:
        missing: Requirements that are not installed.
        outdated: ``(requirement, installed version)`` of those installed but too old.
        torchThroughPyTorchUtils: torch goes through SlicerPyTorch (``PyTorchUtilsLogic.installTorch``).
        constraints: ``{pip name: installed version}`` of Slicer's own packages, pinned for pip.
        blocked: Slicer-owned requirements that are missing or too old: pip must not fix those.
    """

    missing: list = field(default_factory=list)
    outdated: list = field(default_factory=list)
    torchThroughPyTorchUtils: bool = False
    constraints: dict = field(default_factory=dict)
    blocked: list = field(default_factory=list)

    @property
    def toInstall(self) -> list:
        """Requirements to install or upgrade (Slicer-owned ones never are)."""
        return [r for r in self.missing + [r for r, _ in self.outdated] if r.pip not in SLICER_OWNED]

    @property
    def needed(self) -> bool:
        return bool(self.toInstall)

    @property
    def torchNeeded(self) -> bool:
        return TORCH in self.toInstall

    @property
    def pipRequirements(self) -> list:
        """What pip installs: everything, except torch when PyTorchUtils installs it."""
        return [r for r in self.toInstall if not (r is TORCH and self.torchThroughPyTorchUtils)]

    def constraintsText(self) -> str:
        """A pip constraints file pinning Slicer's own packages at their installed versions."""
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.constraints.items()))

    def pipArguments(self, constraintsPath: Optional[str] = None) -> list:
        """Arguments after ``pip``: ``install --upgrade torch>=2.1 ... -c constraints.txt`` (empty if nothing to do).

        ``--upgrade`` is needed for outdated packages; the constraints keep it from reaching Slicer's own.
        """
        if not self.pipRequirements:
            return []
        args = ["install", "--upgrade"] + [r.specifier for r in self.pipRequirements]
        if constraintsPath and self.constraints:
            args += ["-c", str(constraintsPath)]
        return args

    def confirmationText(self) -> str:
        """One question listing everything that will be installed, and how."""
        lines = ["MnetImSegment needs these Python packages in Slicer's Python:"]
        installedOf = {r: v for r, v in self.outdated}
        for r in self.toInstall:
            how = ("through the PyTorch extension (a build matching your GPU driver)"
                   if r is TORCH and self.torchThroughPyTorchUtils else "with pip")
            state = f"installed {installedOf[r]}, too old" if r in installedOf else "not installed"
            lines.append(f"  - {r.specifier} ({state}), {how}")
        if self.torchNeeded:
            lines.append("PyTorch is a large download (about 1-3 GB, a few minutes).")
        if self.constraints:
            pinned = ", ".join(f"{k} {v}" for k, v in sorted(self.constraints.items()))
            lines.append(f"Slicer's own packages stay as they are ({pinned}).")
        lines.append("Install now?")
        return "\n".join(lines)

    def blockedMessage(self) -> Optional[str]:
        """One sentence if a package Slicer ships is missing or too old (only a Slicer update fixes that)."""
        if not self.blocked:
            return None
        names = ", ".join(r.specifier for r in self.blocked)
        return (f"Slicer's Python lacks {names}, which Slicer itself ships; install 3D Slicer "
                f"{MIN_SLICER_VERSION[0]}.{MIN_SLICER_VERSION[1]} or newer rather than replacing it with pip.")


def installedVersion(distribution: str) -> Optional[str]:
    """The installed version of a pip distribution (``None`` if pip does not know it)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def currentVersions(versionOf: Callable[[str], Optional[str]] = installedVersion,
                    importable: Callable[[str], bool] = lambda m: importlib.util.find_spec(m) is not None) -> dict:
    """``{pip name: version or None}`` for the requirements and Slicer's own packages.

    A package that imports but whose version pip does not know (Slicer bundles some without
    metadata) is reported as ``'unknown'``: present, not to be touched.
    """
    out = {}
    for r in REQUIREMENTS:
        version = versionOf(r.pip)
        out[r.pip] = version if version is not None else ("unknown" if importable(r.module) else None)
    for name in SLICER_OWNED:
        if name not in out:
            out[name] = versionOf(name)
    return out


def planInstallation(versions: dict, hasPyTorchUtils: bool) -> DependencyPlan:
    """Decide what to install from ``{pip name: installed version or None}``.

    Args:
        versions: From :func:`currentVersions` (``'unknown'`` = present, version not readable).
        hasPyTorchUtils: The SlicerPyTorch extension's ``PyTorchUtils`` module can be imported.
    """
    plan = DependencyPlan(torchThroughPyTorchUtils=bool(hasPyTorchUtils))
    for r in REQUIREMENTS:
        version = versions.get(r.pip)
        if version is None:
            plan.missing.append(r)
        elif version != "unknown" and not versionAtLeast(version, r.minimum):
            plan.outdated.append((r, version))
    plan.blocked = [r for r in plan.missing + [r for r, _ in plan.outdated] if r.pip in SLICER_OWNED]
    plan.constraints = {name: versions[name] for name in SLICER_OWNED
                        if versions.get(name) not in (None, "unknown")}
    return plan


def torchVersionRequirement() -> str:
    """The ``torchVersionRequirement`` argument for ``PyTorchUtilsLogic.installTorch``."""
    return f">={TORCH.minimum}"


# --------------------------------------------------------------------------- Slicer itself
def slicerVersionProblem(major: int, minor: int) -> Optional[str]:
    """One sentence if this Slicer is older than the module needs, else ``None``."""
    if (int(major), int(minor)) >= MIN_SLICER_VERSION:
        return None
    need = f"{MIN_SLICER_VERSION[0]}.{MIN_SLICER_VERSION[1]}"
    return (f"MnetImSegment needs 3D Slicer {need} or newer (this is {major}.{minor}); install a current "
            f"Slicer from download.slicer.org.")


def slicerRTProblem(available: bool) -> Optional[str]:
    """One sentence if SlicerRT (DICOM RTSTRUCT export of the result) is missing, else ``None``."""
    if available:
        return None
    return ("DICOM RTSTRUCT export of the CTV needs the SlicerRT extension: install 'SlicerRT' from the "
            "Extensions Manager and restart Slicer (segmenting works without it).")


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
