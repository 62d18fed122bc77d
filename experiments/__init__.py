"""Small-scale experiments on Fashion-MNIST: the `make demo` pipeline and the reproduction study."""
