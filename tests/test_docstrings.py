"""Numpydoc on the public functions of the Python API and of the pipeline modules done so far:
a ``Parameters`` section when a function takes any, ``Returns`` when it returns something.
Add a module to ``NUMPYDOC`` once its functions are written that way."""

from __future__ import annotations

import importlib
import inspect

import pytest

NUMPYDOC = [
    "defectwatch.service.api",
    "defectwatch.models",
    "defectwatch.digest",
    "defectwatch.pipeline.detect",
    "defectwatch.pipeline.contrast",
    "defectwatch.pipeline.labels",
    "defectwatch.pipeline.render",
    "defectwatch.pipeline.images",
    "defectwatch.pipeline.metrics",
    "defectwatch.pipeline.model",
]


def _public_callables(module):
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj) and module.__name__.endswith(".api"):
            for meth_name, meth in vars(obj).items():
                if inspect.isfunction(meth) and not meth_name.startswith("_"):
                    yield f"{name}.{meth_name}", meth


CASES = [
    (m, name, fn) for m in NUMPYDOC for name, fn in _public_callables(importlib.import_module(m))
]


@pytest.mark.parametrize("module, name, fn", CASES, ids=[f"{m}.{n}" for m, n, _ in CASES])
def test_public_functions_have_numpydoc_sections(module, name, fn):
    doc = inspect.getdoc(fn) or ""
    params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
    if params:
        assert "Parameters\n----------" in doc, f"{module}.{name}: no Parameters section"
        for p in params:
            assert p in doc, f"{module}.{name}: parameter {p!r} is not described"
    returns = inspect.signature(fn).return_annotation
    if returns not in ("None", None, inspect.Signature.empty):
        assert "Returns\n-------" in doc, f"{module}.{name}: no Returns section"


def test_the_list_covers_something():
    assert len(CASES) >= 30
