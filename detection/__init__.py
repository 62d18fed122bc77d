"""Detection transfer: checkpoint converter (convert.py), detectron2 entry (train_net.py) and configs."""
