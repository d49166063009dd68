"""DICOM in and out: CT series (index, read, write), RT structure sets (read, select, rasterise, write), DICOM SEG.

Imports only ``core`` (see docs/architecture.md): the engine reads DICOM through ``ct_series``, and
``export.write_segmentation_dicom`` is the one entry point for writing a result next to its CT.
"""
