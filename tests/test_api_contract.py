"""One API contract for every public function (issue 12): data first, keyword-only after, the same names for the
same things, shared parameter docs filled in, no ``**kwargs`` that swallow typos."""

from __future__ import annotations

import inspect

import pytest

import nichekd as nk
from nichekd import _docs

MODULES = {"pp": nk.pp, "tl": nk.tl, "pl": nk.pl, "datasets": nk.datasets, "io": nk.io}
# names that must mean one thing everywhere: the alternatives they replace must not appear
SYNONYMS = {"seed": "random_state", "truth": "teacher_key", "key_a": "teacher_key", "n_jobs": "n_threads"}
# first positional parameters that are data (everything else is keyword-only)
DATA_FIRST = {"sdata", "data", "adata", "result", "path", "scores", "model", "data_dir"}


def _public_functions():
    for mod_name, mod in MODULES.items():
        for name in getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) and obj.__module__.startswith("nichekd"):
                yield f"{mod_name}.{name}", obj


FUNCTIONS = dict(_public_functions())


def test_there_are_public_functions():
    assert {"tl.teacher_niches", "tl.distill", "pp.histology_features", "pl.niche_map"} <= set(FUNCTIONS)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_shared_docs_are_filled_in(name):
    doc = FUNCTIONS[name].__doc__ or ""
    assert "%(" not in doc, f"{name}: a shared parameter doc was not injected (missing @inject_docs)"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_same_names_for_same_things(name):
    params = inspect.signature(FUNCTIONS[name]).parameters
    for old, new in SYNONYMS.items():
        assert old not in params, f"{name}: parameter {old!r} should be called {new!r}"


def test_inject_docs_refuses_unknown_names():
    def f(x):
        """Doc.

        Parameters
        ----------
        x
            %(no_such_parameter)s
        """

    with pytest.raises(KeyError, match="no_such_parameter"):
        _docs.inject_docs(f)
