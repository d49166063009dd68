"""Research on top of the engine: metrics, losses, phantoms, manifests, dataset import, evaluation,
training, experiments and the demo. Never imported by the engine, the CLI's segment path or Slicer.
"""
