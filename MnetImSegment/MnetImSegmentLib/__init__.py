"""MnetImSegment engine: CTV segmentation for cervical-cancer brachytherapy CT with Mnet_Im.

Layers (see DESIGN.md): ``io`` (files), ``roi`` (where to look), ``windows`` (2.5D input),
``models`` (Mnet_Im family and baselines), ``inference``, ``weights`` (safetensors + model card),
``training``, ``metrics``, ``phantom``, ``cli``. Nothing here imports Qt or MRML; ``logic.py`` is the
only bridge to Slicer.
"""

__version__ = "0.1.0"
