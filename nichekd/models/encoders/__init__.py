"""Patch encoders for :func:`nichekd.pp.histology_features`, and the registry that lists them.

>>> import nichekd as nk
>>> nk.pp.list_backbones()[["name", "kind", "input_size", "mpp", "output_dim"]]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from . import _efficientnet, _foundation, _stain
from ._base import (
    PRECISIONS,
    BackboneSpec,
    Encoder,
    TorchEncoder,
    available_threads,
    cpu_bf16_supported,
    resolve_precision,
)
from ._foundation import BackboneUnavailableError

PRECOMPUTED = BackboneSpec(
    name="precomputed", kind="precomputed", input_size=0, mpp=float("nan"), output_dim=None,
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), weights="features already in obsm[features_key]",
    needs="features_key=", embedding="as given",
)  # fmt: skip

_BUILTIN: dict[str, BackboneSpec] = {
    _efficientnet.SPEC.name: _efficientnet.SPEC,
    _stain.SPEC.name: _stain.SPEC,
    **{name: entry["spec"] for name, entry in _foundation.FOUNDATION.items()},
    PRECOMPUTED.name: PRECOMPUTED,
}


def known_backbones() -> list[str]:
    """Names accepted as ``backbone=`` (besides ``"timm:<arch>"``, ``"hf-hub:<repo>"`` and modules)."""
    return list(_BUILTIN)


def list_backbones() -> pd.DataFrame:
    """The registered patch encoders.

    Returns
    -------
    One row per backbone: ``name``, ``kind``, ``input_size`` (pixels), ``mpp`` (microns per pixel of the
    working resolution), ``output_dim``, ``weights``, ``embedding`` and ``needs`` (extra packages, network or
    licence access; empty when it works offline out of the box). Besides these names, ``backbone=`` accepts
    ``"timm:<architecture>"`` with ``checkpoint_path=``, ``"hf-hub:<org/name>"``, a ``torch.nn.Module`` or a
    callable.

    Examples
    --------
    >>> import nichekd as nk
    >>> df = nk.pp.list_backbones()
    >>> df.loc[df["needs"] == "", "name"].tolist()
    ['efficientnet_lite0', 'stain']
    """
    rows = [
        {"name": s.name, "kind": s.kind, "input_size": s.input_size or None, "mpp": s.mpp,
         "output_dim": s.output_dim, "weights": s.weights, "embedding": s.embedding, "needs": s.needs}
        for s in _BUILTIN.values()
    ]  # fmt: skip
    df = pd.DataFrame(rows)
    return df.astype({"input_size": "Int64", "output_dim": "Int64"})


def resolve_spec(
    backbone: Any,
    *,
    input_size: int | None = None,
    mpp: float | None = None,
    mean: Any = None,
    std: Any = None,
    checkpoint_path: str | None = None,
) -> BackboneSpec:
    """The spec of ``backbone`` (a registered name, ``timm:``/``hf-hub:`` string, module or callable)."""
    from . import _custom

    if isinstance(backbone, str):
        if backbone.startswith(("timm:", "hf-hub:")):
            return _foundation.generic_timm_spec(
                backbone, input_size=input_size, mpp=mpp, mean=mean, std=std, checkpoint_path=checkpoint_path
            )
        if backbone.startswith("custom:"):
            raise ValueError(
                f"backbone={backbone!r} names a user module that cannot be rebuilt from its name; pass the module "
                "itself as backbone= (with the same input_size, mpp, mean and std)."
            )
        if backbone not in _BUILTIN:
            raise KeyError(
                f"Unknown backbone {backbone!r}. Known backbones: {known_backbones()} (see nichekd.pp.list_backbones()); "
                "also 'timm:<architecture>' with checkpoint_path=, 'hf-hub:<org/name>', or a torch.nn.Module."
            )
        spec = _BUILTIN[backbone]
        if any(v is not None for v in (input_size, mpp, mean, std)):
            raise ValueError(
                f"input_size, mpp, mean and std are fixed for the registered backbone {backbone!r} "
                f"({spec.input_size} px, {spec.mpp} um/px); they are options of custom backbones only."
            )
        return spec
    return _custom.custom_spec(backbone, input_size=input_size, mpp=mpp, mean=mean, std=std)


def build_encoder(
    backbone: Any,
    spec: BackboneSpec,
    *,
    device: str = "cpu",
    checkpoint_path: str | None = None,
    precision: str = "auto",
    n_threads: int | None = None,
) -> Encoder:
    """Instantiate the encoder described by ``spec`` on ``device``, running in ``precision`` (see
    :func:`resolve_precision`) on ``n_threads`` CPU threads (``None``: torch's current setting)."""
    from . import _custom

    if precision not in PRECISIONS:  # before any weights are loaded
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if not isinstance(backbone, str):
        enc = _custom.build(backbone, spec, device=device)
    elif backbone.startswith(("timm:", "hf-hub:")):
        enc = _foundation.build_generic_timm(spec, device, checkpoint_path)
    elif backbone == _efficientnet.SPEC.name:
        enc = _efficientnet.build(device=device, checkpoint_path=checkpoint_path)
    elif backbone == _stain.SPEC.name:
        enc = _stain.build()
    elif backbone in _foundation.FOUNDATION:
        enc = _foundation.build(backbone, device=device, checkpoint_path=checkpoint_path)
    else:
        raise KeyError(f"Backbone {backbone!r} cannot be built (precomputed features are not encoded).")
    return enc.configure(precision=precision, n_threads=n_threads)


__all__ = [
    "PRECISIONS",
    "BackboneSpec",
    "BackboneUnavailableError",
    "Encoder",
    "TorchEncoder",
    "available_threads",
    "build_encoder",
    "cpu_bf16_supported",
    "known_backbones",
    "list_backbones",
    "resolve_precision",
    "resolve_spec",
]
