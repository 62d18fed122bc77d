"""CLSA itself: the step (step.py), model (builder.py) and losses (losses.py); the loop, processes, faults and
checkpoints that run it; the evaluation kit (evaluation.py, knn.py, linear.py, pretrained.py)."""
