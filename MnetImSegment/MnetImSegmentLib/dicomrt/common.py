"""What every DICOM reader and writer here shares: SOP class UIDs, new UIDs, dates, lenient reading, labels."""

from __future__ import annotations

import datetime as _dt

import numpy as np

from .. import __version__

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def new_uid() -> str:
    """A fresh globally unique DICOM UID (2.25 root, from a random UUID)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=None))


def decimal_strings(values) -> list:
    """Decimal strings that fit DICOM's 16 characters, at the best precision that does."""
    from pydicom.valuerep import DSfloat

    return [DSfloat(float(v), auto_format=True) for v in np.ravel(values)]


def dicom_now() -> tuple[str, str]:
    """Today's DICOM date and time (DA, TM) in local time."""
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def dcmread_lenient(path, **kwargs):
    """pydicom.dcmread that also accepts DICOM datasets written without the Part 10 header.

    Some planning systems still export bare datasets (no 128-byte preamble, no 'DICM'); they are
    accepted when forced reading finds a standard SOP Class UID and a modality, so random bytes are
    still refused.

    Raises:
        pydicom.errors.InvalidDicomError: Not DICOM.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), **kwargs)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(str(path), force=True, **kwargs)
            ok = str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.") and bool(ds.get("Modality"))
        except Exception:
            ok = False
        if not ok:
            raise InvalidDicomError(f"'{path}' is not a DICOM file") from None
        return ds


def split_model_label(model_label: str) -> tuple[str, str]:
    """'Mnet_Im 0.1.0' -> ('Mnet_Im', '0.1.0'); a label without a version gets the package's version."""
    label = (model_label or "").strip() or "Mnet_Im"
    name, _, version = label.rpartition(" ")
    if name and version and any(ch.isdigit() for ch in version):
        return name, version
    return label, __version__

