"""Scores -> masks: importances, at-init scorers, budgets, masks.

The package is also the public ``hwprune.prune(model, example_inputs, latency=...)`` call: that name is
this package's, so the package itself is callable (delegating to :func:`hwprune.api.prune`) while
``hwprune.prune.masks`` and the other modules keep their import paths.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from hwprune.api import prune

        return prune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
