"""Images to views: datasets, the weak/strong/multi-crop transforms (torchvision and the bit-exact uint8 path) and
the seeded, resumable sampler."""
