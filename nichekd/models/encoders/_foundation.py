"""Pathology foundation models through timm and the Hugging Face hub (optional extra ``foundation``).

Each entry records the preprocessing and embedding its model card prescribes. Weights of most of these models
are gated: the user accepts the licence on the model page and logs in (``huggingface-cli login``), or passes a
local ``checkpoint_path=``. timm imports torchvision at import time; where torchvision is absent (the PyPI wheel
does not load beside every torch build) a minimal stand-in is used while timm is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

from ._base import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, TorchEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


class BackboneUnavailableError(RuntimeError):
    """The weights of a backbone cannot be obtained (gated, offline, or a package is missing)."""


def _swiglu_silu() -> dict[str, Any]:
    import torch

    timm = import_timm()
    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}


# name -> (spec, source, timm architecture for local checkpoints, timm kwargs factory, pooling)
FOUNDATION: dict[str, dict[str, Any]] = {
    "uni2_h": {
        "spec": BackboneSpec("uni2_h", "foundation", 224, 0.5, 1536, IMAGENET_MEAN, IMAGENET_STD,
                             "MahmoodLab/UNI2-h", "timm, huggingface_hub, gated weights", "CLS token"),
        "hub": "hf-hub:MahmoodLab/UNI2-h",
        "arch": "vit_giant_patch14_224",
        "kwargs": lambda: {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                           "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
                           "reg_tokens": 8, "dynamic_img_size": True, **_swiglu_silu()},
        "pool": "cls",
    },
    "uni": {
        "spec": BackboneSpec("uni", "foundation", 224, 0.5, 1024, IMAGENET_MEAN, IMAGENET_STD,
                             "MahmoodLab/UNI", "timm, huggingface_hub, gated weights", "CLS token"),
        "hub": "hf-hub:MahmoodLab/uni",
        "arch": "vit_large_patch16_224",
        "kwargs": lambda: {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                           "dynamic_img_size": True},
        "pool": "cls",
    },
    "h_optimus_0": {
        "spec": BackboneSpec("h_optimus_0", "foundation", 224, 0.5, 1536, HOPTIMUS_MEAN, HOPTIMUS_STD,
                             "bioptimus/H-optimus-0", "timm, huggingface_hub, gated weights", "CLS token"),
        "hub": "hf-hub:bioptimus/H-optimus-0",
        "arch": "vit_giant_patch14_reg4_dinov2",
        "kwargs": lambda: {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": False},
        "pool": "cls",
    },
    "virchow2": {
        "spec": BackboneSpec("virchow2", "foundation", 224, 0.5, 2560, IMAGENET_MEAN, IMAGENET_STD,
                             "paige-ai/Virchow2", "timm, huggingface_hub, gated weights",
                             "CLS token concatenated with the mean of the patch tokens (registers excluded)"),
        "hub": "hf-hub:paige-ai/Virchow2",
        "arch": "vit_huge_patch14_224",
        "kwargs": lambda: {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375,
                           "reg_tokens": 4, "no_embed_class": True, "global_pool": "",
                           "dynamic_img_size": True, **_swiglu_silu()},
        "pool": "cls_mean",
    },
    "phikon_v2": {
        "spec": BackboneSpec("phikon_v2", "foundation", 224, 0.5, 1024, IMAGENET_MEAN, IMAGENET_STD,
                             "owkin/phikon-v2", "transformers, huggingface_hub", "CLS token"),
        "hub": "owkin/phikon-v2",
        "loader": "transformers",
    },
    "conch": {
        "spec": BackboneSpec("conch", "foundation", 448, 0.5, 512, CLIP_MEAN, CLIP_STD,
                             "MahmoodLab/CONCH", "conch (github.com/mahmoodlab/CONCH), huggingface_hub, gated",
                             "image embedding before the contrastive projection"),
        "hub": "hf_hub:MahmoodLab/conch",
        "loader": "conch",
    },
}  # fmt: skip


# ---------------------------------------------------------------- timm without torchvision


def _frozen_batchnorm():
    import torch

    class FrozenBatchNorm2d(torch.nn.Module):
        """BatchNorm2d with fixed statistics (torchvision.ops.misc.FrozenBatchNorm2d)."""

        def __init__(self, num_features: int, eps: float = 1e-5) -> None:
            super().__init__()
            self.eps = eps
            self.register_buffer("weight", torch.ones(num_features))
            self.register_buffer("bias", torch.zeros(num_features))
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale[None, :, None, None] + shift[None, :, None, None]

    return FrozenBatchNorm2d


class _Missing(type):
    """Placeholder for a torchvision name: usable in annotations and defaults, fails if actually used."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(name, (), {})

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise ImportError(f"torchvision is not installed; {cls.__name__} needs it (nichekd does not).")


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import torchvision...`` with placeholders, only while timm is being imported."""

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        frozen = _frozen_batchnorm()

        class StandIn(types.ModuleType):
            def __getattr__(self, attr: str) -> Any:
                if attr.startswith("__"):
                    raise AttributeError(attr)
                return frozen if attr == "FrozenBatchNorm2d" else _Missing(attr, (), {})

        module = StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        return None


def import_timm():
    """``import timm``; if torchvision is missing, import it with a stand-in that is removed afterwards."""
    try:
        import timm

        return timm
    except ImportError as err:
        if "torchvision" not in str(err):
            raise BackboneUnavailableError(
                "Foundation backbones need timm: pip install 'nichekd[foundation]' (timm, huggingface_hub)."
            ) from err
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        del sys.modules[name]  # drop the half-imported package
    finder = _TorchvisionStandIn()
    sys.meta_path.insert(0, finder)
    try:
        import timm
        import timm.data  # noqa: F401
        import timm.layers  # noqa: F401
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    return timm


# ---------------------------------------------------------------- loading


def _access_error(name: str, repo: str, err: Exception) -> BackboneUnavailableError:
    page = repo.split(":", 1)[-1]
    return BackboneUnavailableError(
        f"Could not load the weights of backbone {name!r} from the Hugging Face hub ({page}): "
        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
        f"These weights are gated or need the network. Either (1) accept the licence on "
        f"https://huggingface.co/{page}, run `huggingface-cli login` (or set HF_TOKEN) with network access and "
        "unset HF_HUB_OFFLINE, or (2) download the checkpoint where you have access and pass "
        "checkpoint_path='/path/to/pytorch_model.bin' (or .safetensors)."
    )


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Weights from a ``.safetensors``/``.bin``/``.pth`` file, unwrapping ``state_dict``/``model`` wrappers."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path {str(path)!r} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_timm_module(arch: str, kwargs: dict[str, Any], checkpoint_path: str | Path, name: str):
    """Build ``arch`` with ``kwargs`` (random init) and load ``checkpoint_path`` strictly."""
    timm = import_timm()
    model = timm.create_model(arch, pretrained=False, **kwargs)
    state = load_state_dict(checkpoint_path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(
            f"checkpoint_path {str(checkpoint_path)!r} does not match backbone {name!r} ({arch}): "
            f"{str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}. "
            "Check that the file holds this model's weights."
        ) from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint_path {str(checkpoint_path)!r} does not match backbone {name!r} ({arch}): "
            f"missing {list(result.missing_keys)[:5]}, unexpected {list(result.unexpected_keys)[:5]}. "
            "Check that the file holds this model's weights."
        )
    return model


class _TokenPool:
    """Pool ViT token outputs: CLS, or CLS concatenated with the mean of the patch tokens."""

    def __init__(self, mode: str, num_prefix_tokens: int) -> None:
        self.mode = mode
        self.num_prefix_tokens = num_prefix_tokens

    def __call__(self, out: Any) -> Any:
        import torch

        if out.ndim == 2:
            return out
        if self.mode == "cls_mean":
            return torch.cat([out[:, 0], out[:, self.num_prefix_tokens :].mean(1)], dim=-1)
        return out[:, 0]


class _ForwardFeatures:
    """Call ``forward_features`` (all tokens after the final norm) so that pooling is ours, not the head's."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x: Any) -> Any:
        return self.model.forward_features(x)


def build_timm(
    name: str,
    spec: BackboneSpec,
    *,
    hub: str | None,
    arch: str | None,
    kwargs: dict[str, Any],
    pool: str,
    device: str,
    checkpoint_path: str | Path | None,
) -> TorchEncoder:
    """A timm ViT from the hub (``hub``) or from ``arch`` + ``checkpoint_path``, pooled as ``pool``."""
    timm = import_timm()
    if checkpoint_path is not None:
        if arch is None:
            raise ValueError(
                f"Backbone {name!r} has no local architecture; pass backbone='timm:<architecture>'."
            )
        model = load_timm_module(arch, kwargs, checkpoint_path, name)
    else:
        if hub is None:
            raise ValueError(f"Backbone {name!r} needs checkpoint_path= (no hub id).")
        try:
            model = timm.create_model(hub, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - hub, network and licence errors all mean the same to the user
            raise _access_error(name, hub, err) from err
    model.eval().to(device)
    tokens = _ForwardFeatures(model)
    pooler = _TokenPool(pool, int(getattr(model, "num_prefix_tokens", 1)))
    enc = TorchEncoder(model, spec, device=device, pool=pooler)
    enc.module = tokens  # forward_features instead of the head; the module itself stays on the device
    return enc


def build_transformers(name: str, spec: BackboneSpec, hub: str, device: str, checkpoint_path: str | None):
    """A Hugging Face ``transformers`` vision model (Phikon-v2); CLS token of ``last_hidden_state``."""
    try:
        from transformers import AutoModel
    except ImportError as err:
        raise BackboneUnavailableError(
            f"Backbone {name!r} needs transformers: pip install transformers."
        ) from err
    source = str(checkpoint_path) if checkpoint_path is not None else hub
    try:
        model = AutoModel.from_pretrained(source)
    except Exception as err:  # noqa: BLE001
        raise _access_error(name, hub, err) from err
    model.eval().to(device)
    return TorchEncoder(
        lambda x: model(pixel_values=x).last_hidden_state,
        spec,
        device=device,
        pool=lambda o: o[:, 0],
        model=model,
    )


def build_conch(name: str, spec: BackboneSpec, hub: str, device: str, checkpoint_path: str | None):
    """CONCH through its own package; image embedding before the contrastive projection."""
    try:
        from conch.open_clip_custom import create_model_from_pretrained
    except ImportError as err:
        raise BackboneUnavailableError(
            "Backbone 'conch' needs the CONCH package: pip install git+https://github.com/mahmoodlab/CONCH.git"
        ) from err
    try:
        model, _ = create_model_from_pretrained(
            "conch_ViT-B-16", str(checkpoint_path) if checkpoint_path else hub
        )
    except Exception as err:  # noqa: BLE001
        raise _access_error(name, hub, err) from err
    model.eval().to(device)
    return TorchEncoder(
        lambda x: model.encode_image(x, proj_contrast=False, normalize=False),
        spec,
        device=device,
        pool=lambda o: o,
        model=model,
    )


def build(name: str, device: str = "cpu", checkpoint_path: str | None = None, **_: Any):
    """Encoder for a registered foundation backbone ``name``."""
    entry = FOUNDATION[name]
    spec = entry["spec"]
    loader = entry.get("loader", "timm")
    if loader == "transformers":
        return build_transformers(name, spec, entry["hub"], device, checkpoint_path)
    if loader == "conch":
        return build_conch(name, spec, entry["hub"], device, checkpoint_path)
    return build_timm(
        name,
        spec,
        hub=entry["hub"],
        arch=entry["arch"],
        kwargs=entry["kwargs"](),
        pool=entry["pool"],
        device=device,
        checkpoint_path=checkpoint_path,
    )


def generic_timm_spec(
    backbone: str,
    *,
    input_size: int | None,
    mpp: float | None,
    mean: Any,
    std: Any,
    checkpoint_path: str | None,
) -> BackboneSpec:
    """Spec for ``"timm:<arch>"`` / ``"hf-hub:<repo>"``; preprocessing from timm's config unless given."""
    timm = import_timm()
    cfg: dict[str, Any] = {}
    if backbone.startswith("timm:"):
        try:
            cfg = dict(timm.models.get_pretrained_cfg(backbone.split(":", 1)[1]).to_dict())
        except Exception:  # noqa: BLE001 - unknown tags: fall back to ImageNet defaults
            cfg = {}
    size = int(input_size or (cfg.get("input_size") or (3, 224, 224))[-1])
    return BackboneSpec(
        name=backbone,
        kind="foundation",
        input_size=size,
        mpp=float(mpp or 0.5),
        output_dim=None,
        mean=tuple(float(v) for v in (mean or cfg.get("mean") or IMAGENET_MEAN)),
        std=tuple(float(v) for v in (std or cfg.get("std") or IMAGENET_STD)),
        weights=str(checkpoint_path) if checkpoint_path else backbone,
        needs="timm",
        embedding="CLS token",
    )


def build_generic_timm(spec: BackboneSpec, device: str, checkpoint_path: str | None, pool: str = "cls"):
    """Encoder for ``"timm:<arch>"`` (random init + ``checkpoint_path``) or ``"hf-hub:<repo>"``."""
    if spec.name.startswith("timm:"):
        arch = spec.name.split(":", 1)[1]
        if checkpoint_path is None:
            raise ValueError(
                f"backbone={spec.name!r} needs checkpoint_path= (nichekd never downloads timm weights implicitly); "
                "use 'hf-hub:<org/name>' for hub weights."
            )
        return build_timm(
            spec.name,
            spec,
            hub=None,
            arch=arch,
            kwargs={"num_classes": 0},
            pool=pool,
            device=device,
            checkpoint_path=checkpoint_path,
        )
    return build_timm(
        spec.name,
        spec,
        hub=spec.name,
        arch=None,
        kwargs={"num_classes": 0},
        pool=pool,
        device=device,
        checkpoint_path=None,
    )
