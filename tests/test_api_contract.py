"""One API contract for every public function (issue 12): data first, keyword-only after, the same names for the
same things, shared parameter docs filled in, no ``**kwargs`` that swallow typos."""

from __future__ import annotations

import inspect

import pytest

import nichekd as nk
from nichekd._core import docs as _docs

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


# helpers on plain values rather than a data object
UTILITIES = {"pl.niche_palette", "pp.list_backbones", "tl.match_niches"}
# **kwargs that are forwarded to a function that refuses unknown names (tested below)
FORWARDING = {"pp.histology_features": "provenance", "pp.histology_features_dask": "kwargs",
              "tl.niche_k_sweep": "teacher_kwargs",
              "tl.distill": "settings", "tl.teacher_niches": "settings"}  # deprecated model settings  # fmt: skip
# a second data object may stand positionally after the first (the model a prediction uses)
SECOND_POSITIONAL = {"tl.predict_niches": "model", "tl.predict_niches_dask": "model"}


@pytest.mark.parametrize(
    "name", sorted(n for n in FUNCTIONS if n.split(".")[0] in ("pp", "tl", "pl") and n not in UTILITIES)
)
def test_data_first_keyword_only_after(name):
    params = list(inspect.signature(FUNCTIONS[name]).parameters.values())
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert positional[:1] and positional[0] in DATA_FIRST, f"{name}: first parameter {positional[:1]}"
    allowed = [positional[0]] + ([SECOND_POSITIONAL[name]] if name in SECOND_POSITIONAL else [])
    assert positional == allowed, f"{name}: {positional[1:]} should be keyword-only"
    kwargs = [p.name for p in params if p.kind == p.VAR_KEYWORD]
    assert not kwargs or FORWARDING.get(name) == kwargs[0], f"{name}: **{kwargs[0]} would swallow typos"


def test_forwarded_keywords_refuse_typos():
    sdata = nk.datasets.synthetic_tissue(n_cells=300, image=False, random_state=0, progress=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        nk.pp.histology_features(sdata, backbone="stain", patch_size_mu=10)
    with pytest.raises(TypeError, match="unexpected keyword"):
        nk.pp.histology_features_dask(sdata, backbone="stain", patch_size_mu=10)
    with pytest.raises(TypeError, match="unexpected keyword"):
        nk.tl.niche_k_sweep(sdata, k_values=[2, 3], n_comps_typo=5, progress=False)


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


@pytest.mark.parametrize("name", ["tl.distill", "tl.teacher_niches"])
def test_model_functions_take_the_model_not_its_settings(name):
    """The functions that train a model take the model (or its settings) plus the data-facing arguments: at
    most ~12 parameters besides the data (scanpy's lint rule), the rest lives once in the model object."""
    params = [p for p in inspect.signature(FUNCTIONS[name]).parameters.values() if p.kind != p.VAR_KEYWORD]
    assert "model" in [p.name for p in params]
    assert len(params) - 1 <= 12, f"{name} has {len(params)} parameters"
