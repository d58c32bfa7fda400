"""Data: IDX files, the MNIST-family dataset registry, and MNIST-shaped synthetic data."""

from gpumlp.data.datasets import (
    DATASETS,
    Dataset,
    DatasetNotFoundError,
    find_datasets,
    load_dataset,
    locate_dataset,
)
from gpumlp.data.idx import read_idx, write_idx
from gpumlp.data.synthetic import synthetic_mnist

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetNotFoundError",
    "find_datasets",
    "load_dataset",
    "locate_dataset",
    "read_idx",
    "synthetic_mnist",
    "write_idx",
]
