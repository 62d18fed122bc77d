"""VOC07 classification transfer (run VOC_CLF/main.py)."""
