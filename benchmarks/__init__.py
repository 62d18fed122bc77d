"""Speed and memory measurements (not tests). Run each as `python3 benchmarks/<name>.py --help`."""
