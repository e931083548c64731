"""Field docstrings of config dataclasses: each field is documented once, under its declaration,
and that text is the CLI help (litgpt-style). Shared by every entry point's config."""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import fields
from functools import cache


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in `cls`'s body, whitespace-normalised.

    Raises TypeError naming the fields that have none, so an undocumented option cannot ship.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(tree, ast.ClassDef), cls
    docs = {}
    for node, after in zip(tree.body, tree.body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    missing = {f.name for f in fields(cls)} - set(docs)
    if missing:
        raise TypeError(f"{cls.__name__} fields without a docstring: {sorted(missing)}")
    return docs
