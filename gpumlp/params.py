"""scikit-learn's parameter protocol without depending on scikit-learn.

``get_params``/``set_params`` read the constructor's signature, so ``sklearn.base.clone``,
``Pipeline`` and ``GridSearchCV`` work with the estimators when scikit-learn is installed.
"""

from __future__ import annotations

import inspect
from typing import Any


class ParamsMixin:
    """Constructor arguments as parameters; ``__init__`` must store each one unchanged."""

    #: ``"classifier"`` or ``"regressor"``; read by scikit-learn's tag machinery.
    _estimator_type: str = ""
    #: Input and target capabilities, reported to scikit-learn by :meth:`__sklearn_tags__`.
    _accepts_sparse: bool = True
    _multi_label: bool = False

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(name for name, p in signature.parameters.items()
                      if name != "self" and p.kind is not p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters and their current values."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "ParamsMixin":
        """Set constructor parameters; unknown names raise a ``ValueError``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{name!r} is not a parameter of {type(self).__name__}; "
                                 f"valid parameters: {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {name: p.default for name, p in
                    inspect.signature(type(self).__init__).parameters.items()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items()
                   if not _same(v, defaults.get(k))]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:
        """Tags for scikit-learn >= 1.6 (only called when scikit-learn is installed).

        They declare what the estimator takes (sparse ``X``; multilabel targets for the
        MLP classifier), so scikit-learn's conformance checks exercise exactly that.
        """
        from sklearn.utils import (ClassifierTags, InputTags, RegressorTags, Tags,
                                   TargetTags)

        tags = Tags(estimator_type=self._estimator_type or None,
                    target_tags=TargetTags(required=True),
                    input_tags=InputTags(sparse=self._accepts_sparse))
        if self._estimator_type == "classifier":
            tags.classifier_tags = ClassifierTags(multi_label=self._multi_label)
        elif self._estimator_type == "regressor":
            tags.regressor_tags = RegressorTags()
        return tags


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return a is b
