"""The built-in recipes, in one explicit list. Importing this module registers them (their
``data``/``model`` config schemas and their :class:`~chtorch.recipes.base.Recipe` classes).

The trainer (:mod:`chtorch.train`) and the command line import it before they read a config; the
configuration package never does (it imports nothing above itself). A user's recipe registers the
same way, from its own module.
"""

from __future__ import annotations

from chtorch.recipes import image, lm, translation

__all__ = ["BUILTIN_RECIPES"]

#: The modules of the built-in recipes (image classification is the default recipe).
BUILTIN_RECIPES = (image, translation, lm)
