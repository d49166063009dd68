"""DICOM Segmentation (SEG) objects for a CTV mask, written with highdicom.

highdicom builds the multi-frame SEG (binary, bit-packed, empty frames omitted) and the references
to the source CT images; this module only puts the mask on the CT's own pixel layout and describes
the segment: label, SNOMED CT property "Clinical target volume", algorithm AUTOMATIC with the
model's name and version. highdicom is imported only here, so the rest of the engine (and Slicer)
never needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import OutputError
from ..core.files import transaction
from ..core.style import CTV_NAME
from ..core.volume import Volume
from .common import dicom_text, new_uid, save_dataset, split_model_label
from .ct_series import mask_on_ct_grid


def write_dicom_seg(mask: Volume, series, path, model_label: str = "", segment_label: str = CTV_NAME,
                    overwrite: bool = False, series_description: str = "MnetImSegment CTV", tx=None) -> Path:
    """Write a mask as a binary DICOM SEG that references the CT series it lies on.

    Args:
        mask: Non-zero = segment; on the CT's grid (axes may be flipped).
        series: The CT series (``ct_series.CtSeries``).
        path: Output file; written atomically.
        model_label: Model name and version, e.g. "Mnet_Im 0.1.0" (algorithm identification).
        segment_label: SegmentLabel.
        overwrite: Replace an existing file.
        series_description: SeriesDescription of the new SEG series.
        tx: An output transaction to commit with (default: this file commits alone, read back
            byte for byte first).

    Returns:
        ``path``.

    Raises:
        OutputError: highdicom missing, empty mask, mask not on the CT grid, file cannot be written.
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
        from pydicom.sr.coding import Code
    except ImportError:
        raise OutputError("Writing DICOM SEG needs the 'highdicom' package (pip install highdicom).") from None

    on_ct = mask_on_ct_grid(mask, series) > 0
    if not on_ct.any():
        raise OutputError(f"The segmentation is empty: there is no {segment_label} to write.")
    model, version = split_model_label(model_label)
    sources = series.read_datasets(stop_before_pixels=True)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=dicom_text(segment_label),
        segmented_property_category=Code("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=Code("228793007", "SCT", "Clinical target volume"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model, version=version, family=codes.cid7162.ArtificialIntelligence),
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=on_ct.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=new_uid(),
            series_number=9002,
            sop_instance_uid=new_uid(),
            instance_number=1,
            manufacturer="MnetImSegment",
            manufacturer_model_name=model[:64],
            software_versions=f"MnetImSegment {__version__}",
            device_serial_number="none",
            content_label=dicom_text(segment_label, 16).upper().replace(" ", "_")[:16] or "CTV",
            content_description=f"{model} {version}, not reviewed"[:64],
            series_description=dicom_text(series_description),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"highdicom could not build the DICOM SEG ({str(exc)[:160]}).") from None
    path = Path(path)
    with transaction(tx, overwrite) as t:
        t.verify(path, save_dataset(seg, path, t.path_for(path)))
    return path
