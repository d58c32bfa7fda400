"""The benchmark runner behind ``gpumlp bench`` (the protocol: :mod:`gpumlp.bench.protocol`)."""
