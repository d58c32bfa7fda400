"""Estimator classes by name, so that :mod:`gpumlp.io` can rebuild a saved model without
importing the modules that define the estimators (which themselves use :mod:`gpumlp.io`).

Each saveable estimator class registers itself with the :func:`register_model` decorator;
a model file names its class, and :func:`model_class` turns that name back into the class.
Only registered names can be loaded, so a file cannot make ``load`` instantiate anything else.
The built-in estimators are registered when :mod:`gpumlp` is imported (its ``__init__``
imports their modules), which importing any submodule such as :mod:`gpumlp.io` does first.

Examples
--------
>>> import gpumlp
>>> from gpumlp.model_registry import model_class
>>> model_class("MLPClassifier") is gpumlp.MLPClassifier
True
"""

from __future__ import annotations

from typing import TypeVar

_REGISTRY: dict[str, type] = {}

ModelType = TypeVar("ModelType", bound=type)


def register_model(cls: ModelType) -> ModelType:
    """Class decorator: make ``cls`` loadable under its ``__name__``.

    Parameters
    ----------
    cls : type
        The estimator class.

    Returns
    -------
    type
        ``cls`` itself, unchanged.

    Raises
    ------
    ValueError
        If another class is already registered under the same name (a file names its class
        by ``__name__`` only, so two would be ambiguous).
    """
    existing = _REGISTRY.get(cls.__name__)
    if existing is not None and existing is not cls and (
            existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"model name {cls.__name__!r} is already registered by "
                         f"{existing.__module__}.{existing.__qualname__}")
    # Same module and name again (a module reloaded): the new class replaces the old one.
    _REGISTRY[cls.__name__] = cls
    return cls


def model_class(name: str) -> type:
    """The estimator class registered as ``name``.

    Parameters
    ----------
    name : str
        A class name as stored in a model file, e.g. ``"MLPClassifier"``.

    Returns
    -------
    type

    Raises
    ------
    ValueError
        If no class is registered under ``name``; the message lists the registered names.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"estimator={name!r} is not a gpumlp model class; allowed: "
                         f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered_models() -> dict[str, type]:
    """A copy of the registry: name -> class."""
    return dict(_REGISTRY)

