"""Model versions: AtomAI U-Net members as safetensors plus a JSON config, checked on load.

A version directory holds ``member_00.safetensors`` ... and ``config.json``::

    {"format": 1, "version": "...", "classes": ["background", "trough", "peak"],
     "pixel_size_nm": 0.098, "architecture": {...}, "preprocess": {...}, "training": {...},
     "data": {...}, "metrics": {...}, "created_at": "...", "parent": null,
     "members": {"member_00.safetensors": "<sha256>", ...}}

Loading checks every file and hash and raises `ModelLoadError` naming what is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectwatch.digest import sha256_file
from defectwatch.domain import CLASSES
from defectwatch.errors import ModelLoadError
from defectwatch.pipeline.contrast import LEGACY_REPORT_CONTRAST, REPORT_CONTRAST

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "config.json"
FORMAT = 1


@dataclass(frozen=True)
class UnetSpec:
    """Arguments of ``atomai.nets.Unet`` (3 max-pools: inputs must be multiples of 8)."""

    nb_classes: int = 3
    nb_filters: int = 16
    batch_norm: bool = True
    dropout: bool = False
    upsampling_mode: str = "bilinear"
    layers: tuple[int, ...] = (1, 2, 2, 3)
    with_dilation: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnetSpec:
        d = dict(d)
        d["layers"] = tuple(d.get("layers", (1, 2, 2, 3)))
        return cls(**d)


@dataclass
class ModelConfig:
    """What a model version needs besides its weights."""

    version: str
    pixel_size_nm: float
    architecture: UnetSpec = field(default_factory=UnetSpec)
    classes: tuple[str, ...] = CLASSES
    preprocess: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    parent: str | None = None
    members: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    # how defects are reported: ``report_contrast`` {kind: weakest contrast} (`contrast.marked`)
    detection: dict[str, Any] = field(
        default_factory=lambda: {"report_contrast": dict(REPORT_CONTRAST)}
    )
    # the detector's calibration per kind (`calibration.Calibration.to_json`); empty: not
    # measured (versions made before it: their densities are reported uncalibrated)
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def report_contrast(self) -> dict[str, float]:
        """{kind: the weakest contrast this version reports} (troughs negative)."""
        return {k: float(v) for k, v in self.detection["report_contrast"].items()}

    def threshold_for(self, channel: str, default: float = 0.5) -> float:
        """The mean-probability threshold for scans analysed in ``channel``: the version's
        ``metrics.threshold_by_channel[channel]`` (C-AFM current maps: "Current"), else its
        ``metrics.threshold``, else ``default``."""
        by_channel = self.metrics.get("threshold_by_channel") or {}
        return float(by_channel.get(channel, self.metrics.get("threshold", default)))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["architecture"] = self.architecture.to_dict()
        d["classes"] = list(self.classes)
        return {"format": FORMAT, **d}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelConfig:
        d = dict(d)
        if d.pop("format", None) != FORMAT:
            raise ValueError(f"unknown config format (expected {FORMAT})")
        d["architecture"] = UnetSpec.from_dict(d.get("architecture", {}))
        d["classes"] = tuple(d.get("classes", ()))
        # written before versions carried the rule: they reported what a labeller marks
        d.setdefault("detection", {"report_contrast": dict(LEGACY_REPORT_CONTRAST)})
        return cls(**d)


_LIGHT_PACKAGE = "_defectwatch_atomai_nets"


def unet_class():
    """``atomai.nets.Unet`` without importing all of atomai.

    ``import atomai`` pulls gpytorch, mendeleev, its trainers and predictors (seconds and about
    400 MB per process); the U-Net needs only ``atomai/nets/fcnn.py`` and ``blocks.py``, which
    are loaded here from atomai's installed files under a private package name. Same classes,
    same state dict keys. Falls back to the normal import if atomai's layout differs.

    Returns
    -------
    type
        The ``Unet`` class (a ``torch.nn.Module`` subclass).
    """
    import importlib.util
    import sys

    if "atomai.nets" in sys.modules:
        return sys.modules["atomai.nets"].Unet
    if f"{_LIGHT_PACKAGE}.fcnn" in sys.modules:
        return sys.modules[f"{_LIGHT_PACKAGE}.fcnn"].Unet
    try:
        import types

        root = Path(importlib.util.find_spec("atomai").origin).parent / "nets"
        package = types.ModuleType(_LIGHT_PACKAGE)
        package.__path__ = [str(root)]
        sys.modules[_LIGHT_PACKAGE] = package
        for name in ("blocks", "fcnn"):
            spec = importlib.util.spec_from_file_location(
                f"{_LIGHT_PACKAGE}.{name}", root / f"{name}.py"
            )
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        return sys.modules[f"{_LIGHT_PACKAGE}.fcnn"].Unet
    except Exception:  # pragma: no cover - another atomai layout: take the slow road
        for name in (f"{_LIGHT_PACKAGE}.fcnn", f"{_LIGHT_PACKAGE}.blocks", _LIGHT_PACKAGE):
            sys.modules.pop(name, None)
        from atomai.nets import Unet

        return Unet


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device to run members on.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA when present, else the CPU), or anything ``torch.device`` takes
        (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Returns
    -------
    torch.device
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_member(spec: UnetSpec):
    """A fresh member network.

    Parameters
    ----------
    spec : UnetSpec
        Classes, filters, layers... (AtomAI's ``Unet`` arguments).

    Returns
    -------
    torch.nn.Module
        An ``atomai.nets.Unet`` (see `unet_class`), randomly initialised, in training mode.
        Input (B, 1, H, W) with H, W multiples of 8; output (B, C, H, W) logits.
    """
    Unet = unet_class()
    return Unet(
        nb_classes=spec.nb_classes,
        nb_filters=spec.nb_filters,
        batch_norm=spec.batch_norm,
        dropout=spec.dropout,
        upsampling_mode=spec.upsampling_mode,
        with_dilation=spec.with_dilation,
        layers=list(spec.layers),
    )


def save_version(
    directory: str | os.PathLike[str],
    config: ModelConfig,
    members: Sequence[Mapping[str, Any]],
    *,
    half: bool = True,
) -> Path:
    """Write a version directory: one safetensors file per member and ``config.json``.

    Parameters
    ----------
    directory : str or os.PathLike
        Created when missing; existing member files are overwritten.
    config : ModelConfig
        Its ``members`` is set to ``{file name: sha256}`` of the files written.
    members : sequence of mapping
        Member state dicts (name -> tensor).
    half : bool, optional
        Store floating tensors as float16 (half the size; loading turns them back to
        float32).

    Returns
    -------
    pathlib.Path
        The directory.
    """
    import torch
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for i, state in enumerate(members):
        tensors = {}
        for k, v in state.items():
            v = v.detach().cpu().contiguous()
            if half and v.is_floating_point():
                v = v.to(torch.float16)
            tensors[k] = v
        name = f"member_{i:02d}.safetensors"
        save_file(tensors, str(out / name))
        hashes[name] = sha256_file(out / name)
    config.members = hashes
    (out / CONFIG_NAME).write_text(json.dumps(config.to_json(), indent=2))
    return out


def _replace_config_field(
    directory: str | os.PathLike[str], field_name: str, value: Mapping[str, Any]
) -> None:
    """Replace one top-level object of a saved version's config.json (weights and hashes
    untouched)."""
    path = Path(directory) / CONFIG_NAME
    stored = json.loads(path.read_text())
    stored[field_name] = dict(value)
    path.write_text(json.dumps(stored, indent=2))


def write_calibration(directory: str | os.PathLike[str], calibration: Mapping[str, Any]) -> None:
    """Replace the ``calibration`` of a saved version's config.json (weights untouched).

    Parameters
    ----------
    directory : str or os.PathLike
        The version directory (holds ``config.json``).
    calibration : Mapping
        ``pipeline.calibration.Calibration.to_json()`` of the calibration measured for it
        (e.g. by ``service.calibration.simulated_calibration``).
    """
    _replace_config_field(directory, "calibration", calibration)


def write_metrics(directory: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
    """Replace the ``metrics`` of a saved version's ``config.json`` (weights and hashes
    untouched).

    Parameters
    ----------
    directory : str or os.PathLike
        A version directory.
    metrics : mapping
        JSON-serialisable (thresholds, validation tables, scores).
    """
    _replace_config_field(directory, "metrics", metrics)


def write_detection(directory: str | os.PathLike[str], detection: Mapping[str, Any]) -> None:
    """Replace the ``detection`` (report rule, `ModelConfig.report_contrast`) of a saved
    version's ``config.json`` (weights and hashes untouched).

    Parameters
    ----------
    directory : str or os.PathLike
        A version directory.
    detection : mapping
        ``{"report_contrast": {kind: weakest contrast in sigmas}, ...}`` (JSON-serialisable).
    """
    if "report_contrast" not in detection:
        raise ValueError("a detection rule needs report_contrast")
    _replace_config_field(directory, "detection", detection)


def load_version(directory: str | os.PathLike[str]) -> tuple[ModelConfig, list[dict[str, Any]]]:
    """Read and check a version directory.

    Parameters
    ----------
    directory : str or os.PathLike

    Returns
    -------
    config : ModelConfig
    states : list of dict
        One state dict per member, floating tensors in float32.

    Raises
    ------
    ModelLoadError
        No or an unreadable ``config.json``, a missing member file, a sha256 that does not
        match, an unreadable file, or weights that do not fit the declared architecture.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelLoadError(f"{d}: no {CONFIG_NAME}; is this a model version directory?")
    try:
        config = ModelConfig.from_json(json.loads(cfg_path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{cfg_path}: unreadable config ({exc})") from None
    if not config.members:
        raise ModelLoadError(f"{cfg_path}: lists no members")
    states = []
    for name, digest in config.members.items():
        path = d / name
        if not path.is_file():
            raise ModelLoadError(f"{d}: member file {name} is missing")
        if sha256_file(path) != digest:
            raise ModelLoadError(
                f"{path}: sha256 does not match config.json (corrupted or replaced weights)"
            )
        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from None
        states.append({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    # weights must fit the declared architecture
    probe = build_member(config.architecture)
    for name, state in zip(config.members, states):
        try:
            probe.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"{d / name}: weights do not fit the architecture in "
                f"config.json ({str(exc).splitlines()[0]})"
            ) from None
    return config, states


def import_atomai_ensemble(
    tar_path: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    version: str,
    pixel_size_nm: float,
    preprocess: Mapping[str, Any] | None = None,
    layers: Sequence[int] = (1, 2, 2, 3),
) -> Path:
    """An ensemble trained with AtomAI (``*_ensemble_metadict.tar``) -> a version directory.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only,
    nothing is unpickled. AtomAI stores no pixel size or preprocessing, so the caller states
    them (``pixel_size_nm``: nm per pixel of the images it was trained on); its metadict does
    not store ``layers`` either (AtomAI's default is used unless given).

    Parameters
    ----------
    tar_path : str or os.PathLike
        The AtomAI ensemble file.
    directory : str or os.PathLike
        Where the version directory is written.
    version : str
        Its name.
    pixel_size_nm : float
        nm per pixel of the images the ensemble was trained on.
    preprocess : mapping, optional
        `PreprocessParams` fields (default: ours).
    layers : sequence of int, optional
        AtomAI's ``layers`` argument the members were built with.

    Returns
    -------
    pathlib.Path
        The version directory.

    Raises
    ------
    ModelLoadError
        The file is missing, holds pickled objects (refused), or is not an AtomAI ensemble.
    """
    import torch

    src = Path(tar_path)
    try:
        meta = torch.load(src, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"{src}: no such file") from None
    except Exception as exc:  # pickle / zip errors of every kind
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{src}: not a weights-only AtomAI ensemble file ({first}); "
            "re-save it with only the metadata and member state dicts"
        ) from None
    if (
        not isinstance(meta, Mapping)
        or not isinstance(meta.get("weights"), Mapping)
        or not meta["weights"]
    ):
        raise ModelLoadError(
            f"{src}: expected AtomAI's ensemble metadict with a 'weights' dict "
            "of member state dicts"
        )
    if str(meta.get("model", "Unet")) != "Unet" or str(meta.get("model_type", "seg")) != "seg":
        raise ModelLoadError(
            f"{src}: model {meta.get('model')!r} ({meta.get('model_type')!r}); "
            "only AtomAI's segmentation Unet is supported"
        )
    spec = UnetSpec(
        nb_classes=int(meta.get("nb_classes", 3)),
        nb_filters=_nb_filters(meta["weights"]),
        batch_norm=bool(meta.get("batch_norm", True)),
        dropout=bool(meta.get("dropout", False)),
        upsampling_mode=str(meta.get("upsampling", "bilinear")),
        layers=tuple(layers),
        with_dilation=bool(meta.get("with_dilation", False)),
    )
    members = [meta["weights"][k] for k in sorted(meta["weights"], key=lambda k: int(k))]
    probe = build_member(spec)
    for i, state in enumerate(members):
        try:
            probe.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelLoadError(
                f"{src}: member {i} does not fit an AtomAI Unet with "
                f"{spec.nb_filters} filters and layers {list(spec.layers)} "
                f"({str(exc).splitlines()[0]})"
            ) from None
    classes = (
        CLASSES
        if spec.nb_classes == 3
        else tuple(["background"] + [f"class{i}" for i in range(1, spec.nb_classes)])
    )
    config = ModelConfig(
        version=version,
        pixel_size_nm=float(pixel_size_nm),
        architecture=spec,
        classes=classes,
        preprocess=dict(preprocess or {}),
        training={"imported_from": src.name, "trainer": "atomai"},
    )
    return save_version(directory, config, members, half=False)


def _nb_filters(state: Mapping[Any, Mapping[str, Any]]) -> int:
    """AtomAI's Unet: the first conv has nb_filters output channels."""
    first = next(iter(state.values()))
    for key, value in first.items():
        if key.endswith("weight") and getattr(value, "ndim", 0) == 4:
            return int(value.shape[0])
    raise ModelLoadError("no convolution weights in the first member")
