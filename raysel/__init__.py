"""raysel: Ray-distributed sweeps and label-free model selection for unsupervised domain adaptation."""

__version__ = "0.1.0"
