"""Scoring predicted CTV masks against the truth (the paper's metrics, tables and figures).

``cases`` finds and reads masks, ``scoring`` computes the metrics and statistics, ``report`` writes
the tables, ``figures`` draws the plots and overlays (also the demo's).
"""
