"""Drop-in encoders: a trained backbone as a plain torchvision / timm module, with the input transform it expects.

A run folder's ``encoder.safetensors`` holds the backbone's weights under torchvision's (or timm's) own parameter
names and, in its header, everything needed to rebuild the module without tc2ssl's config: ``backbone``, ``stem``
(``cifar`` = 3x3 stride-1 conv1 and no max-pool, ``imagenet`` = torchvision's 7x7 stride-2 conv1 + max-pool,
``timm``, or ``none`` for tc2ssl's own modules), ``in_channels`` (of the data), ``module_in_channels`` (of the
module: 3 when pretrained weights were adapted to grey data), ``resolution``, ``feat_dim`` and ``normalization``
(per-channel mean and std on [0, 1] pixels: 0.5 / 0.5 for tc2ssl's own x/127.5 - 1, ImageNet's for
``model.pretrained=true``).

    from tc2ssl.api import load_encoder
    encoder, transform = load_encoder("runs/default")          # a run folder or an encoder.safetensors file
    features = encoder(transform(uint8_images))                 # [N, feat_dim], eval mode

``export_encoder_file(RUN, fmt)`` (``tc2ssl export RUN --format torchvision|timm|state_dict``) writes a file that
plain torchvision / timm load strictly once the stem is patched as recorded (conv1 3x3 stride 1, maxpool
``nn.Identity()`` for ``stem=cifar``) and ``fc`` is ``nn.Identity()``; :func:`build_plain_module` does exactly that.
tc2ssl's own backbones (``small_cnn``, ``small_cnn_tiny``, ``vit_tiny``) export as a ``state_dict`` only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn

from tc2ssl.errors import CheckpointError, ConfigError

ENCODER_FILE = "encoder.safetensors"
FORMATS = ("torchvision", "timm", "state_dict")
TORCHVISION_RESNETS = ("resnet18", "resnet50")
#: the header keys whose values are JSON (the rest are plain strings)
_JSON_KEYS = ("in_channels", "module_in_channels", "resolution", "feat_dim", "normalization", "config")


def encoder_metadata(backbone: nn.Module, backbone_name: str, in_channels: int, resolution: int,
                     config: dict | None = None) -> dict:
    """The header of an exported encoder: what a user needs to rebuild and feed the module (see module doc)."""
    module_channels = getattr(backbone, "module_in_channels", None) or in_channels
    mean, std = getattr(backbone, "module_normalization", None) or ((0.5,) * module_channels,
                                                                   (0.5,) * module_channels)
    meta = {"backbone": backbone_name, "stem": getattr(backbone, "stem", "none"), "in_channels": int(in_channels),
            "module_in_channels": int(module_channels), "resolution": int(resolution),
            "feat_dim": int(backbone.feat_dim),
            "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "pixels": "[0, 1]"}}
    if config is not None:
        meta["config"] = config
    return meta


def parse_metadata(raw: dict[str, str]) -> dict:
    """An encoder header as Python values; files written before the stem/normalisation were recorded get them
    from their config (a ResNet's ``model.cifar_stem``; tc2ssl's own normalisation)."""
    meta: dict = {}
    for key, value in raw.items():
        meta[key] = json.loads(value) if key in _JSON_KEYS else value
    for key in ("backbone", "in_channels", "resolution"):
        if key not in meta:
            raise CheckpointError(f"encoder header lacks {key!r}: not a tc2ssl encoder file")
    model_cfg = (meta.get("config") or {}).get("model", {})
    if "stem" not in meta:
        name = meta["backbone"]
        meta["stem"] = ("timm" if name.startswith("timm:") else
                        ("cifar" if model_cfg.get("cifar_stem", True) else "imagenet")
                        if name in TORCHVISION_RESNETS else "none")
    meta.setdefault("module_in_channels", meta["in_channels"])
    meta.setdefault("normalization", {"mean": [0.5] * meta["module_in_channels"],
                                      "std": [0.5] * meta["module_in_channels"], "pixels": "[0, 1]"})
    return meta


def _raw_header(meta: dict) -> dict[str, str]:
    return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}


def exported_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights under their torchvision / timm names (``export_prefix`` removed), contiguous on CPU."""
    prefix = getattr(backbone, "export_prefix", "")
    return {(name[len(prefix):] if prefix and name.startswith(prefix) else name): tensor.detach().cpu().contiguous()
            for name, tensor in backbone.state_dict().items()}


def backbone_for_export(model_cfg, meta: dict) -> nn.Module:
    """tc2ssl's backbone shaped as an export records it, without fetching pretrained weights: built for
    ``module_in_channels`` inputs, with an input adapter in front when the export's normalisation is not tc2ssl's
    own (``model.pretrained=true`` runs)."""
    import dataclasses

    from tc2ssl.models.backbones import InputAdapter, build_backbone

    meta = parse_metadata({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()})
    channels, module_channels = int(meta["in_channels"]), int(meta["module_in_channels"])
    norm = meta["normalization"]
    backbone = build_backbone(dataclasses.replace(model_cfg, pretrained=False), module_channels)
    if module_channels != channels or any(m != 0.5 for m in norm["mean"]) or any(s != 0.5 for s in norm["std"]):
        backbone.input_adapter = InputAdapter(channels, module_channels, norm["mean"], norm["std"])
        backbone.module_in_channels = module_channels
        backbone.module_normalization = (tuple(norm["mean"]), tuple(norm["std"]))
    return backbone


def backbone_state(backbone: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Exported weights renamed for ``backbone.load_state_dict`` (files that kept the prefix load as they are)."""
    prefix = getattr(backbone, "export_prefix", "")
    if prefix and tensors and all(name.startswith(prefix) for name in tensors):
        return dict(tensors)          # timm encoders exported before the prefix was stripped
    return {prefix + name: tensor for name, tensor in tensors.items()}


# ---------------------------------------------------------------------------------------------------- modules
def _patch_resnet_stem(net: nn.Module, stem: str, in_channels: int) -> nn.Module:
    """A torchvision / timm ResNet with the stem tc2ssl trained and no classifier."""
    if stem == "cifar":
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif stem == "imagenet":
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    else:
        raise CheckpointError(f"a ResNet encoder needs stem cifar or imagenet, got {stem!r}")
    if hasattr(net, "fc"):
        net.fc = nn.Identity()
    return net


def _check_format(meta: dict, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not allowed; valid formats: {', '.join(FORMATS)}")
    name = meta["backbone"]
    if fmt == "torchvision" and name not in TORCHVISION_RESNETS:
        raise ConfigError(f"backbone {name!r} is not a torchvision model; export it with --format "
                          f"{'timm' if name.startswith('timm:') else 'state_dict'}")
    if fmt == "timm" and not (name.startswith("timm:") or name in TORCHVISION_RESNETS):
        raise ConfigError(f"backbone {name!r} is tc2ssl's own module, with no timm counterpart; export it with "
                          "--format state_dict (and load it into tc2ssl.models.build_backbone)")


def default_format(meta: dict) -> str:
    """torchvision for torchvision ResNets, timm for timm models, state_dict for tc2ssl's own modules."""
    name = meta["backbone"]
    return "torchvision" if name in TORCHVISION_RESNETS else "timm" if name.startswith("timm:") else "state_dict"


def build_plain_module(meta: dict, fmt: str | None = None) -> nn.Module:
    """A fresh, untrained module of ``fmt`` (default: :func:`default_format`) shaped as the header says: stem
    patched, classifier removed, ``module_in_channels`` inputs; it loads the exported weights strictly.
    ``state_dict`` gives the backbone's own library's module (tc2ssl's for its own backbones)."""
    fmt = fmt or default_format(meta)
    _check_format(meta, fmt)
    name, channels = meta["backbone"], int(meta["module_in_channels"])
    library = default_format(meta) if fmt == "state_dict" else fmt
    if library == "torchvision":
        import torchvision

        return _patch_resnet_stem(getattr(torchvision.models, name)(weights=None), meta["stem"], channels)
    if library == "timm":
        try:
            import timm
        except ImportError:
            raise ConfigError("a timm encoder needs timm: pip install 'tc2ssl[timm]'") from None
        if name in TORCHVISION_RESNETS:      # timm's ResNets share torchvision's parameter names
            return _patch_resnet_stem(timm.create_model(name, pretrained=False, num_classes=0), meta["stem"],
                                      channels)
        return timm.create_model(name.split(":", 1)[1], pretrained=False, num_classes=0, in_chans=channels)
    from tc2ssl.config import from_dict
    from tc2ssl.models.backbones import build_backbone

    if "config" not in meta:
        raise CheckpointError(f"the encoder header of backbone {name!r} has no config to rebuild it from")
    model_cfg = from_dict(meta["config"]).model
    model_cfg.pretrained = False      # the weights come from the file
    return build_backbone(model_cfg, int(meta["in_channels"]))


class EncoderTransform(nn.Module):
    """The input transform an exported encoder expects: images -> normalised float [N, module_in_channels, H, W].

    Takes uint8 images [N, C, H, W] (0..255) or float images in [0, 1]; resizes them to the encoder's resolution
    (uint8: as tc2ssl's data sources do), converts the channels (grey -> RGB by replication, RGB -> grey by luma),
    and applies the recorded per-channel ``(pixel - mean) / std``. For tc2ssl's own normalisation this equals
    x/127.5 - 1, what the backbone saw in training.
    """

    def __init__(self, in_channels: int, module_in_channels: int, resolution: int, mean: Sequence[float],
                 std: Sequence[float]):
        super().__init__()
        if len(mean) != module_in_channels or len(std) != module_in_channels:
            raise CheckpointError(f"normalisation mean {list(mean)} / std {list(std)} does not have "
                                  f"{module_in_channels} channels")
        self.in_channels, self.module_in_channels, self.resolution = in_channels, module_in_channels, resolution
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @classmethod
    def from_metadata(cls, meta: dict) -> "EncoderTransform":
        norm = meta["normalization"]
        return cls(int(meta["in_channels"]), int(meta["module_in_channels"]), int(meta["resolution"]),
                   norm["mean"], norm["std"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from tc2ssl.data.sources import convert_channels, resize_images

        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [N, C, H, W] with C in (1, 3), got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = convert_channels(resize_images(images, self.resolution), self.in_channels)
            pixels = images.float() / 255.0
        elif images.is_floating_point():
            pixels = images
            if pixels.shape[-2:] != (self.resolution, self.resolution):
                pixels = nn.functional.interpolate(pixels, size=(self.resolution, self.resolution),
                                                   mode="bilinear", antialias=True, align_corners=False)
            if pixels.shape[1] == 3 and self.in_channels == 1:
                pixels = (pixels * pixels.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
        pixels = pixels.expand(-1, self.module_in_channels, -1, -1)      # grey -> RGB (adapted pretrained stems)
        return (pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)


class LoadedEncoder(NamedTuple):
    """A ready encoder (eval mode, classifier removed) and the transform its inputs need; ``transform.metadata``
    holds the file's header."""

    module: nn.Module
    transform: EncoderTransform


def encoder_file(path: str | Path) -> Path:
    """``path`` itself if it is a file, else the run folder's ``encoder.safetensors``."""
    path = Path(path)
    file = path / ENCODER_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no encoder at {path} (expected a run folder holding {ENCODER_FILE}, or the file)")
    return file


def read_encoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(exported tensors, parsed header) of a run folder or encoder file."""
    from tc2ssl.train.checkpoint import load_encoder_weights

    tensors, raw = load_encoder_weights(encoder_file(path))
    return tensors, parse_metadata(raw)


def load_encoder(path: str | Path, fmt: str | None = None) -> LoadedEncoder:
    """A trained encoder as a plain torchvision / timm module (or tc2ssl's own for its own backbones), in eval mode,
    weights loaded strictly, plus the :class:`EncoderTransform` its inputs need.

    Args:
        path: a run folder or an ``encoder.safetensors`` file.
        fmt: ``torchvision``, ``timm`` or ``state_dict`` (tc2ssl's module); default: the backbone's own library.
    """
    tensors, meta = read_encoder(path)
    module = _loaded_module(meta, tensors, fmt, path)
    transform = EncoderTransform.from_metadata(meta)
    transform.metadata = meta
    return LoadedEncoder(module.eval(), transform)


def _library_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Exported tensors under the plain module's names (timm encoders written before the prefix was stripped
    carry ``net.``)."""
    if tensors and all(name.startswith("net.") for name in tensors):
        return {name[len("net."):]: tensor for name, tensor in tensors.items()}
    return tensors


def _loaded_module(meta: dict, tensors: dict[str, torch.Tensor], fmt: str | None, source) -> nn.Module:
    module = build_plain_module(meta, fmt)      # raises a ConfigError for a format the backbone has not
    try:
        module.load_state_dict(_library_state(tensors), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {source} do not fit a fresh {fmt or default_format(meta)} "
                              f"{meta['backbone']} (stem {meta['stem']}): {str(exc).splitlines()[0]}") from None
    return module


def export_encoder_file(path: str | Path, fmt: str | None = None, out: str | Path | None = None) -> Path:
    """Write a run's encoder for ``fmt`` (see module doc) and return the file written.

    ``torchvision`` / ``timm``: safetensors with the library's parameter names and the header (default
    ``<run>/encoder_<fmt>.safetensors``); ``state_dict``: a ``torch.save`` of the tensor dict, loadable with
    ``torch.load(..., weights_only=True)`` (default ``<run>/encoder_state_dict.pt``), the header beside it as JSON.
    The file is written only after the weights were checked to load strictly into a fresh module of that format.
    """
    from safetensors.torch import save

    from tc2ssl.train.checkpoint import atomic_write_bytes, atomic_write_text

    source = encoder_file(path)
    tensors, meta = read_encoder(source)
    fmt = fmt or default_format(meta)
    state = _loaded_module(meta, tensors, fmt, source).state_dict()
    suffix = ".pt" if fmt == "state_dict" else ".safetensors"
    target = Path(out) if out is not None else source.parent / f"encoder_{fmt}{suffix}"
    header = {**meta, "export_format": fmt}
    if fmt == "state_dict":
        atomic_write_bytes(target, lambda fh: torch.save({k: v.contiguous() for k, v in state.items()}, fh))
        atomic_write_text(target.with_suffix(".json"), json.dumps(header, indent=2) + "\n")
    else:
        blob = save({k: v.contiguous() for k, v in state.items()}, metadata=_raw_header(header))
        atomic_write_bytes(target, lambda fh: fh.write(blob))
    return target
