"""The CIFAR-10 example: data helper (data.py), model (model.py) and the main job (run.py)."""
