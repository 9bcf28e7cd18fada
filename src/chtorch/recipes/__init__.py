"""Recipes: what a ``chtorch train`` job trains (data, model, loss, evaluation) for each task.

:mod:`~chtorch.recipes.base` defines the :class:`~chtorch.recipes.base.Recipe` interface and its
registry; :mod:`~chtorch.recipes.image`, :mod:`~chtorch.recipes.translation` and
:mod:`~chtorch.recipes.lm` each own their task's data and model schemas, validation and behaviour;
:mod:`~chtorch.recipes.builtin` is the one list that registers them.
"""
