"""How the CTV looks and is labelled everywhere: name, colour, terminology and tag keys.

One definition for the ``.seg.nrrd`` writer, the RTSTRUCT/SEG writers and the Slicer bridge, so a
CTV written by any of them looks and reads the same.
"""

from __future__ import annotations

from typing import Optional

CTV_NAME = "CTV"
# Slicer's colour for a clinical target volume, as 0-1 floats and as DICOM's 0-255 integers.
CTV_COLOR = (0.902, 0.376, 0.118)
CTV_COLOR_255 = (230, 96, 30)
# Slicer's terminology entry (SCT 228793007 "Clinical target volume"), in the module's own terminology
# context (MnetImSegment/Resources/Terminology/MnetImSegment.term.json, loaded when the module starts):
# Slicer's built-in lists have no CTV.
CTV_TERMINOLOGY_CONTEXT = "MnetImSegment - brachytherapy target volumes"
CTV_TERMINOLOGY = (CTV_TERMINOLOGY_CONTEXT + "~SCT^91723000^Anatomical Structure~SCT^228793007^Clinical target volume"
                   "~^^~Anatomic codes - DICOM master list~^^~^^")

TAG_PREFIX = "MnetImSegment."
MODEL_TAG = TAG_PREFIX + "Model"
THRESHOLD_TAG = TAG_PREFIX + "Threshold"
LARGEST_COMPONENT_TAG = TAG_PREFIX + "LargestComponent"


def segmentation_tags(model: str = "", threshold: Optional[float] = None, extra: Optional[dict] = None) -> dict:
    """The segment tags naming the model and threshold a CTV came from (plus ``extra``)."""
    tags = {MODEL_TAG: model}
    if threshold is not None:
        tags[THRESHOLD_TAG] = f"{threshold:.4g}"
    tags.update(extra or {})
    return tags
