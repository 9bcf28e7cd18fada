"""Recipes: what a ``chtorch train`` job trains (data, model, loss, evaluation) for each task."""
