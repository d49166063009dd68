"""The lowest layer: user-facing errors, the one volume representation, atomic file writes, shared constants.

Imports nothing else from the package (see docs/architecture.md).
"""
