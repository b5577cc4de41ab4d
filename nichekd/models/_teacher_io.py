"""Persistence of :class:`~nichekd.models.NicheTeacher`: a folder with ``teacher.json`` + safetensors, no pickle.

Part of :mod:`nichekd.models.teacher`; ``NicheTeacher.save`` / ``NicheTeacher.load`` call these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._integrity import arrays_digest, definition_digest, json_safe
from ._teacher_heads import gmm_from_arrays


def save_teacher(self: Any, path: str | Path) -> Path:
    """Write the fitted teacher ``self`` to folder ``path`` (``teacher.json`` + safetensors, no pickle).

    ``teacher.json`` carries sha256 checksums of the defining fields and of every array, verified by
    :func:`load_teacher`; every file is written under a temporary name and renamed into place only when all are
    complete, so an interrupted save leaves the previous teacher readable.

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
        "fit_id_": self.fit_id_,
        "format": "nichekd.NicheTeacher/2",
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
    torch_state = {}
    if self.transformer_ is not None:
        from safetensors.torch import save_file as save_torch

        meta["transformer_config"] = self.transformer_.config.to_dict()
        torch_state = {k: v.contiguous() for k, v in self.transformer_.state_dict().items()}
        save_torch(torch_state, str(path / ".transformer.safetensors.tmp"))
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    if arrays:
        save_file(arrays, str(path / ".teacher.safetensors.tmp"))
    meta["checksum"] = {
        "definition": definition_digest(meta),
        "weights": arrays_digest({**arrays, **{f"transformer.{k}": v for k, v in torch_state.items()}}),
    }
    (path / ".teacher.json.tmp").write_text(json.dumps(json_safe(meta), indent=1))
    for name in ("transformer.safetensors", "teacher.safetensors", "teacher.json"):
        if (path / f".{name}.tmp").exists():
            (path / f".{name}.tmp").replace(path / name)
    return path


def load_teacher(cls: type, path: str | Path) -> Any:
    """Read a teacher of class ``cls`` written by :func:`save_teacher`, verifying its checksums.

    Parameters
    ----------
    cls
        :class:`~nichekd.models.NicheTeacher` (or a subclass) to build.
    path
        Folder holding ``teacher.json``.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    meta_file = path / "teacher.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"No teacher.json in {path}; was the teacher saved with NicheTeacher.save?")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_file} is not valid JSON ({err}); the teacher's config is damaged.") from err

    def read(name: str, loader) -> dict:
        file = path / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing; the teacher was saved with it ({meta_file}).")
        try:
            return loader(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(
                f"{file} cannot be read as safetensors ({err}); it is truncated or corrupt."
            ) from err

    arrays = read("teacher.safetensors", load_file) if (path / "teacher.safetensors").exists() else {}
    torch_state = None
    if isinstance(meta, dict) and "transformer_config" in meta:
        from safetensors.torch import load_file as load_torch

        torch_state = read("transformer.safetensors", load_torch)
    checksum = meta.get("checksum") if isinstance(meta, dict) else None
    if checksum is not None:  # teachers saved before checksums existed have none
        if checksum.get("definition") != definition_digest(meta):
            raise ValueError(
                f"{meta_file} does not match its checksum: a defining field (niche names, radius, method, "
                "settings) was changed after saving. Restore the saved file."
            )
        state = {f"transformer.{k}": v for k, v in (torch_state or {}).items()}
        if checksum.get("weights") != arrays_digest({**arrays, **state}):
            raise ValueError(
                f"The arrays in {path} (teacher.safetensors / transformer.safetensors) do not match the "
                f"checksum in {meta_file}: they are corrupted or belong to another teacher."
            )
    try:
        cfg = dict(meta["config"])
        cfg.pop("n_niches")
        cfg.pop("device", None)  # saved by versions before 0.2: where it ran, never replayed
        self = cls(meta["n_niches"], **cfg)
        self.radius_um_ = meta["radius_um_"]
        self.niche_names_ = list(meta["niche_names_"])
        self.temperature_ = float(meta.get("temperature_", 1.0))  # absent in files from before calibration
        self.fit_id_ = meta.get("fit_id_")
        self.encoder_ = dict(meta["encoder"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{meta_file} is not a valid teacher config ({type(err).__name__}: {err}).") from err
    std = {k[4:]: v for k, v in arrays.items() if k.startswith("std_")}
    if std:
        for k, v in std.items():
            if not np.isfinite(v).all() or (k in ("sd", "scale") and (v <= 0).any()):
                raise ValueError(
                    f"{path / 'teacher.safetensors'}: standardisation {k!r} is not finite or not positive; "
                    "the teacher is damaged."
                )
        std["scale"] = np.float32(std["scale"][0])
        self.encoder_["standardise"] = std
    self.encoder_.update({k[4:]: v for k, v in arrays.items() if k.startswith("enc_")})
    if "gmm_weights" in arrays:
        self.gmm_ = gmm_from_arrays(arrays, self.covariance_type)
    if torch_state is not None:
        from ._niche_transformer import NicheTransformer, TransformerConfig

        model = NicheTransformer(TransformerConfig(**meta["transformer_config"]))
        try:
            model.load_state_dict(torch_state)
        except RuntimeError as err:
            raise ValueError(
                f"{path / 'transformer.safetensors'} does not match {meta_file}: {str(err).splitlines()[0]}"
            ) from err
        self.transformer_ = model.eval()
    return self
