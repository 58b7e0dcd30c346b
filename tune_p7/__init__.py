"""tune_p7: hyperparameter sweeps for the P7 directional ranker.

Layers (imports flow downward only): data -> model -> losses -> metrics -> train ->
trainable -> space -> sweep -> results. Everything up to ``train`` runs without Ray.
"""

__version__ = "0.1.0"
