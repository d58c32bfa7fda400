"""The default training recipe of ``gpumlp train`` (and of the time-to-accuracy benchmark).

784-512-512-10, ReLU, Adam with a cosine-annealed step size (it settles the last epochs, where
a constant step keeps the test accuracy wandering), dropout 0.2, 30 epochs, He-uniform
initialisation with zero biases.
"""

RECIPE = {"hidden": "512,512", "activation": "relu", "solver": "adam", "epochs": 30,
          "batch_size": 128, "lr": 1e-3, "schedule": "cosine", "alpha": 1e-4, "dropout": 0.2,
          "init": "he"}
