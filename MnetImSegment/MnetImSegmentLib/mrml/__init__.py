"""The MRML side of the Slicer bridge (``logic.py`` is its entry point): geometry, kept probability maps,
segment writing. The only package besides ``logic.py`` that imports vtk or slicer.
"""
