"""The paper's metrics at the path DESIGN.md promises (``MnetImSegmentLib.metrics``).

A re-export only: the definitions live in :mod:`MnetImSegmentLib.research.metrics`.
"""

from .research.metrics import (ALL_KEYS, BOTH_EMPTY, DEFAULT_TOLERANCE_MM, METRIC_DEFINITIONS, METRICS, ONE_EMPTY,
                               SurfaceDistances, segmentation_metrics, surface_distances, volumetric_dice)

__all__ = ["ALL_KEYS", "BOTH_EMPTY", "DEFAULT_TOLERANCE_MM", "METRIC_DEFINITIONS", "METRICS", "ONE_EMPTY",
           "SurfaceDistances", "segmentation_metrics", "surface_distances", "volumetric_dice"]
