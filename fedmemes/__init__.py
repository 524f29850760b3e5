"""fedmemes: federated text+image classifiers of hateful memes on Flower."""

__version__ = "0.1.0"
