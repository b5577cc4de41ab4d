"""Persistence of :class:`~nichekd.models.NicheTeacher`: a folder with ``teacher.json`` + safetensors, no pickle.

Part of :mod:`nichekd.models.teacher`; ``NicheTeacher.save`` / ``NicheTeacher.load`` call these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._teacher_heads import _gmm_from_arrays


def save_teacher(self: Any, path: str | Path) -> Path:
    """Write the fitted teacher ``self`` to folder ``path`` (``teacher.json`` + safetensors, no pickle).

    Parameters
    ----------
    self
        The fitted :class:`~nichekd.models.NicheTeacher`.
    path
        Folder to create (or overwrite the teacher files in).
    """
    from safetensors.numpy import save_file

    self._check_fitted()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "config": self._config(),
        "radius_um_": self.radius_um_,
        "niche_names_": self.niche_names_,
        "n_niches": self.n_niches,
        "temperature_": float(self.temperature_),
        "format": "nichekd.NicheTeacher/1",
    }
    enc = {}
    for k, v in self.encoder_.items():
        if k == "standardise":
            arrays.update(
                {f"std_{kk}": np.atleast_1d(np.asarray(vv, dtype=np.float32)) for kk, vv in v.items()}
            )
        elif isinstance(v, np.ndarray):
            arrays[f"enc_{k}"] = np.ascontiguousarray(v)
        else:
            enc[k] = v
    meta["encoder"] = enc
    if self.gmm_ is not None:
        arrays.update(
            {
                "gmm_weights": self.gmm_.weights_,
                "gmm_means": self.gmm_.means_,
                "gmm_covariances": self.gmm_.covariances_,
                "gmm_precisions_cholesky": self.gmm_.precisions_cholesky_,
            }
        )
    if self.transformer_ is not None:
        from safetensors.torch import save_file as save_torch

        meta["transformer_config"] = self.transformer_.config.to_dict()
        save_torch(
            {k: v.contiguous() for k, v in self.transformer_.state_dict().items()},
            str(path / "transformer.safetensors"),
        )
    if arrays:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / "teacher.safetensors"))
    (path / "teacher.json").write_text(json.dumps(meta, indent=1))
    return path


def load_teacher(cls: type, path: str | Path) -> Any:
    """Read a teacher of class ``cls`` written by :func:`save_teacher`.

    Parameters
    ----------
    cls
        :class:`~nichekd.models.NicheTeacher` (or a subclass) to build.
    path
        Folder holding ``teacher.json``.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    if not (path / "teacher.json").is_file():
        raise FileNotFoundError(f"No teacher.json in {path}; was the teacher saved with NicheTeacher.save?")
    meta = json.loads((path / "teacher.json").read_text())
    cfg = dict(meta["config"])
    cfg.pop("n_niches")
    self = cls(meta["n_niches"], **cfg)
    self.radius_um_ = meta["radius_um_"]
    self.niche_names_ = list(meta["niche_names_"])
    self.temperature_ = float(meta.get("temperature_", 1.0))  # absent in files from before calibration
    arrays = load_file(str(path / "teacher.safetensors")) if (path / "teacher.safetensors").exists() else {}
    self.encoder_ = dict(meta["encoder"])
    std = {k[4:]: v for k, v in arrays.items() if k.startswith("std_")}
    if std:
        std["scale"] = np.float32(std["scale"][0])
        self.encoder_["standardise"] = std
    self.encoder_.update({k[4:]: v for k, v in arrays.items() if k.startswith("enc_")})
    if "gmm_weights" in arrays:
        self.gmm_ = _gmm_from_arrays(arrays, self.covariance_type)
    if "transformer_config" in meta:
        from safetensors.torch import load_file as load_torch

        from ._niche_transformer import NicheTransformer, TransformerConfig

        model = NicheTransformer(TransformerConfig(**meta["transformer_config"]))
        model.load_state_dict(load_torch(str(path / "transformer.safetensors")))
        self.transformer_ = model.eval()
    return self
