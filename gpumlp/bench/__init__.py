"""The benchmark runner behind ``gpumlp bench`` (see DESIGN.md §8 for the protocol)."""
