"""The segmentation engine, free of Slicer: read a CT, find the ROI, run the network, write the result.

``io`` (CT in, masks out), ``roi`` (where to look), ``windows`` (2.5D input), ``weights``
(safetensors + model card), ``device`` (one device/precision choice), ``inference`` (the
Segmenter) and ``batch`` (a folder of CTs). Imports ``core``, ``models`` and ``dicomrt`` only.
"""
