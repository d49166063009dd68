"""MnetImSegment engine: CTV segmentation for cervical-cancer brachytherapy CT with Mnet_Im.

Layers, lowest first (docs/architecture.md); each imports only itself and the layers below:
``core`` (errors, volume, atomic files, CTV style) -> ``models`` -> ``dicomrt`` (DICOM in and out)
-> ``engine`` (io, roi, windows, weights, device, inference, batch) -> ``research`` (metrics,
phantoms, import, evaluation, training) -> ``mrml`` + ``logic.py`` (the Slicer bridge) and ``cli``.
Nothing below ``mrml`` imports Qt, vtk or MRML; importing this package loads no torch.
"""

__version__ = "0.1.0"
