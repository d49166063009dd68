"""Research on top of the engine: metrics, losses, phantoms, manifests, dataset import, evaluation,
training, experiments and the demo. The engine and the Slicer bridge never import it.
"""
