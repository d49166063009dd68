"""What every DICOM reader and writer here shares: SOP class UIDs, new UIDs, dates, lenient reading, labels."""

from __future__ import annotations

import datetime as _dt

import numpy as np

from .. import __version__
from ..core.commit import check_sha256
from ..core.validate import sanitize_header_text

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
    # The label comes from a model card: one printable line without backslashes (a DICOM value
    # separator) before it reaches an attribute, whatever the card held.
    label = sanitize_header_text(model_label or "", 128, dicom=True).strip() or "Mnet_Im"
    name, _, version = label.rpartition(" ")
    if name and version and any(ch.isdigit() for ch in version):
        return name[:64], version[:64]
    return label[:64], __version__


def dicom_text(text, max_len: int = 64) -> str:
    """A string made safe for a DICOM LO/SH/CS attribute: one printable line, no backslash, bounded."""
    return sanitize_header_text(text or "", max_len, dicom=True)


def dataset_readback_check(data: bytes, sop_instance_uid: str):
    """A commit check: the file holds exactly the bytes encoded, and parses as that SOP instance."""
    import hashlib


    by_hash = check_sha256(hashlib.sha256(data).hexdigest())

    def check(path):
        problem = by_hash(path)
        if problem:
            return problem
        import pydicom

        back = pydicom.dcmread(str(path), stop_before_pixels=True)
        if str(back.get("SOPInstanceUID", "")) != str(sop_instance_uid):
            return "its SOP Instance UID differs from the one written"
        return None
    return check


def encode_dataset(ds) -> bytes:
    """``ds`` as the bytes of a DICOM Part 10 file (hashed before it reaches the disk)."""
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def save_dataset(ds, path, tmp) -> "callable":
    """Encode ``ds`` (Part 10) into ``tmp`` and return its read-back check for ``path``."""
    data = encode_dataset(ds)
    with open(tmp, "wb") as f:
        f.write(data)
    return dataset_readback_check(data, ds.SOPInstanceUID)

