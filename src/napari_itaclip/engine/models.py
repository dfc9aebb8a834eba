"""Model loading: open_clip names and tags, local checkpoints, hub folders, devices.

Weights named by a pretrained tag are downloaded and cached by open_clip / the
Hugging Face hub cache exactly as open_clip does; a local file is read without
executing pickled code (``torch.load(weights_only=True)``, safetensors, or a
TorchScript archive such as OpenAI's original ``ViT-B-16.pt``).

``hf-hub:org/name`` and ``local-dir:/path`` models (open_clip's schemas) bring their
own configuration and weights: ``open_clip_config.json`` plus
``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``, read the same way.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import logging
import os
import socket
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch

from ..errors import CheckpointError, ModelError, WeightsUnavailableError
from ..identity import DEFAULT_MODEL, DEFAULT_PRETRAINED, OWN_WEIGHTS_SCHEMES, normalise_pretrained
from .model_checks import (
    check_model_config,
    shape_mismatches,
    warn_gelu_with_quickgelu_weights,
)

__all__ = [
    "DEFAULT_PRETRAINED",
    "LoadedModel",
    "checkpoint_fingerprint",
    "is_schema_model",
    "load_model",
    "resolve_device",
]

#: Prefixes of open_clip's model identifiers that carry their own configuration and weights.
SCHEMAS = OWN_WEIGHTS_SCHEMES

#: Weight files of a hub-layout folder, in open_clip's order of preference.
_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)


def is_schema_model(model) -> bool:
    """Whether ``model`` is an ``hf-hub:`` or ``local-dir:`` identifier."""
    return isinstance(model, str) and model.startswith(SCHEMAS)

log = logging.getLogger(__name__)

#: open_clip's warning when ``create_model`` gets no weights; false here, where the
#: weights are loaded right after (see :func:`_quiet_random_init_warning`).
_RANDOM_INIT_WARNING = "No pretrained weights loaded for model"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; other names are checked."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use auto, cuda, mps or cpu") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but PyTorch sees no CUDA GPU; use 'auto' or 'cpu'")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' requested but it is not available; use 'auto' or 'cpu'")
    return dev


@dataclass
class LoadedModel:
    """A CLIP model ready for the engine."""

    model: torch.nn.Module
    tokenizer: object
    cache_key: str | None  # identity of the weights for the text cache; None = don't cache
    description: str


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """Cheap identity of a local file: resolved path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a state dict without running pickled code.

    Raises
    ------
    CheckpointError
        Missing, unreadable or corrupt file, or one that holds no tensors.
    """
    return _read_checkpoint(path)[0]


def _read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], bool]:
    """:func:`read_state_dict`, and whether the file is an OpenAI release checkpoint.

    OpenAI's released CLIP files (trained with QuickGELU) are TorchScript archives whose
    state dict carries the scalars ``input_resolution``, ``context_length`` and
    ``vocab_size``; open_clip's own checkpoints have neither.
    """
    p = Path(path).expanduser()
    torchscript = False
    if not p.exists():
        raise CheckpointError(f"checkpoint file not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        elif torchscript := _is_torchscript(p):
            obj = torch.jit.load(str(p), map_location="cpu").state_dict()
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means a bad file
        raise CheckpointError(
            f"could not read checkpoint {p}: {type(exc).__name__}: {exc}. The file is corrupt, "
            "truncated, or not a PyTorch/safetensors checkpoint (pickled Python objects other "
            "than tensors are refused for safety)"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        raise CheckpointError(f"checkpoint {p} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    release_keys = ("input_resolution", "context_length", "vocab_size")
    openai_release = torchscript or all(k in obj for k in release_keys)
    for key in release_keys:
        obj.pop(key, None)  # OpenAI TorchScript archives carry these scalars
    return obj, openai_release


def _check_name(name: str) -> None:
    import open_clip

    if name.startswith(SCHEMAS):
        return
    known = open_clip.list_models()
    if name.replace("/", "-") not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown open_clip model {name!r}.{hint} See open_clip.list_models() for all "
            f"{len(known)} names, or pass a path to a model-config .json."
        )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (assumed yes behind a proxy)."""
    env = os.environ
    if env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(env.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urllib.parse.urlparse(env.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((host.hostname, host.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Put huggingface_hub in offline mode (cache only) for the duration, if asked."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip falls back to plain URLs
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _offline_help(name: str, tag: str) -> str:
    return (
        f"Pretrained weights {name!r}/{tag!r} are not in the local cache and could not be "
        "downloaded (no network?). Either download them once on a machine with network "
        "access and copy the Hugging Face cache (~/.cache/huggingface, or $HF_HOME) here "
        "(set HF_HUB_OFFLINE=1 to use it without trying the network), "
        "or pass a local checkpoint file: Segmenter(model=..., pretrained='/path/to/file.pt') "
        "(OpenAI's ViT-B-16.pt loads with model='ViT-B-16-quickgelu')."
    )


def load_model(
    model: str | os.PathLike | torch.nn.Module = DEFAULT_MODEL,
    pretrained: str | os.PathLike | None = DEFAULT_PRETRAINED,
    *,
    device: torch.device,
    half: bool = False,
    tokenizer=None,
    cache_dir: str | os.PathLike | None = None,
) -> LoadedModel:
    """Build or adopt a CLIP model.

    Parameters
    ----------
    model : str, path or torch.nn.Module
        An open_clip model name (``open_clip.list_models()``), an ``hf-hub:org/name`` or
        ``local-dir:/path`` identifier (configuration and weights from that hub repository
        or folder), a path to an open_clip model-config ``.json``, or a model instance.
    pretrained : str, path or None
        A pretrained tag of that model (``open_clip.list_pretrained_tags_by_model``), a
        local checkpoint file, or ``None`` for random weights. For ``hf-hub:``/
        ``local-dir:`` models only ``None`` or :data:`DEFAULT_PRETRAINED` (their own
        weights); anything else is refused.
    device : torch.device
        Where to put the model.
    half : bool
        Cast to float16 (CUDA only).
    tokenizer : callable, optional
        Override the tokenizer (default: open_clip's for the model).
    cache_dir : path, optional
        Download cache for open_clip (default: the Hugging Face cache).
    """
    import open_clip

    if half and device.type != "cuda":
        raise ValueError("half precision is only supported on CUDA devices")
    pretrained = normalise_pretrained(model, pretrained)
    if isinstance(model, torch.nn.Module):
        if isinstance(pretrained, (str, os.PathLike)):
            state = read_state_dict(pretrained)
            _load_into(model, state, pretrained, type(model).__name__)
        net, key, desc = model, None, f"{type(model).__name__} instance"
        tok = tokenizer or open_clip.get_tokenizer(DEFAULT_MODEL)
    elif is_schema_model(str(model)):
        net, key, desc, tok = _load_schema_model(str(model), pretrained, tokenizer, cache_dir)
    else:
        name = str(model)
        if name.endswith(".json"):
            cfg_path = Path(name).expanduser()
            check_model_config(cfg_path)
            open_clip.add_model_config(cfg_path)
            name = cfg_path.stem
            model_id = f"{checkpoint_fingerprint(cfg_path)}"
        else:
            _check_name(name)
            model_id = name
        tag, ckpt, source, force_quick_gelu = _resolve_weights(name, pretrained, cache_dir)
        try:
            with _quiet_random_init_warning(ckpt is not None):
                net = open_clip.create_model(
                    name, pretrained=None, device="cpu", force_quick_gelu=force_quick_gelu
                )
        except Exception as exc:  # noqa: BLE001
            where = f" (from {model})" if str(model).endswith(".json") else ""
            raise ModelError(f"could not build open_clip model {name!r}{where}: {exc}") from exc
        if ckpt is not None:
            state, openai_release = _read_checkpoint(ckpt)
            if openai_release and not force_quick_gelu:
                warn_gelu_with_quickgelu_weights(name, str(model), ckpt)
            _load_into(net, state, ckpt, name)
            key, desc = f"{model_id}|{source}", f"{name} ({tag})"
            log.info("loaded weights for %s from %s (%s)", name, _weights_origin(tag, ckpt),
                     _size_text(ckpt))
        else:
            key, desc = None, f"{name} (random weights)"
        tok = tokenizer or open_clip.get_tokenizer(name)
    net = net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    if half:
        net = net.half()
    return LoadedModel(net, tok, key, desc)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_RANDOM_INIT_WARNING)


def _resolve_weights(name: str, pretrained, cache_dir
                     ) -> tuple[str | None, Path | None, str | None, bool]:
    """(tag, checkpoint file, cache-key source, force_quick_gelu) of an open_clip name's weights."""
    import open_clip

    tag = normalise_pretrained(name, pretrained)
    force_quick_gelu = False
    if tag is None:
        ckpt, source = None, None
    elif Path(tag).expanduser().is_file() or os.sep in tag or tag.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    ):
        ckpt = Path(tag).expanduser()
        if not ckpt.is_file():
            raise CheckpointError(f"checkpoint file not found: {ckpt}")
        source = f"file:{checkpoint_fingerprint(ckpt)}"
    else:
        cfg = open_clip.get_pretrained_cfg(name, tag)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ModelError(
                f"unknown pretrained tag {tag!r} for {name!r}; available: "
                f"{', '.join(tags) if tags else 'none (pass a checkpoint file)'}"
            )
        # e.g. the 'openai' weights were trained with QuickGELU: build the model with it
        force_quick_gelu = bool(cfg.get("quick_gelu", False))
        try:
            # without network, read the hub cache at once instead of retrying for a minute
            with _hub_offline(not hub_reachable()):
                ckpt = Path(open_clip.download_pretrained(cfg, cache_dir=cache_dir))
        except Exception as exc:  # noqa: BLE001 - network, hub and IO errors alike
            raise WeightsUnavailableError(_offline_help(name, tag) + f" ({exc})") from exc
        source = f"tag:{tag}|quickgelu={force_quick_gelu}"
    return tag, ckpt, source, force_quick_gelu


@contextlib.contextmanager
def _quiet_random_init_warning(weights_follow: bool):
    """Drop open_clip's "initialized randomly" warning while it is false.

    open_clip logs it on the root logger when ``create_model`` gets no weights; this
    module builds the network that way and loads the weights itself right after.
    """
    if not weights_follow:
        yield
        return
    root = logging.getLogger()
    flt = _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _weights_origin(tag: str, ckpt: Path) -> str:
    """Where loaded weights came from: the local file, or the hub/URL tag and cached file."""
    if Path(tag).expanduser().is_file():
        return str(ckpt)
    return f"pretrained tag {tag!r}, cached file {ckpt}"


def _size_text(path: Path) -> str:
    try:
        return f"{path.stat().st_size / 1e6:.1f} MB"
    except OSError:  # pragma: no cover - the file was just read
        return "size unknown"


def _load_into(net: torch.nn.Module, state: dict, path, name: str) -> None:
    from open_clip.factory import convert_state_dict, resize_pos_embed
    from open_clip.model import convert_to_custom_text_state_dict, resize_text_pos_embed

    try:
        state = convert_state_dict(net, dict(state))
        if "positional_embedding" in state and not hasattr(net, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)  # CLIP layout into CustomTextCLIP
        if "logit_scale" in state and hasattr(net, "logit_scale"):
            state["logit_scale"] = state["logit_scale"].reshape(net.logit_scale.shape)
        # Hugging Face text towers stopped storing position_ids (transformers 4.31)
        pos_ids = "text.transformer.embeddings.position_ids"
        if pos_ids in state and pos_ids not in net.state_dict():
            del state[pos_ids]
        shapes = shape_mismatches(state, net)
        if shapes:  # e.g. another width: open_clip's resizing would assert
            raise CheckpointError(
                f"checkpoint {path} does not fit model {name!r}: {shapes}. Pick the model "
                "name that matches the checkpoint (OpenAI's files load with the '-quickgelu' "
                "names)")
        resize_pos_embed(state, net)
        resize_text_pos_embed(state, net)
        missing, unexpected = net.load_state_dict(state, strict=False)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit model {name!r}: {type(exc).__name__}: {exc}. "
            "Pick the model name that matches the checkpoint (OpenAI's files load with the "
            "'-quickgelu' names)"
        ) from exc
    missing = [k for k in missing if k != "logit_bias"]
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:6])
        raise CheckpointError(
            f"checkpoint {path} does not fit model {name!r}: {len(missing)} missing and "
            f"{len(unexpected)} unexpected keys (e.g. {shown}). Pick the model name that "
            "matches the checkpoint (OpenAI's files load with the '-quickgelu' names)"
        )


# -- hf-hub: / local-dir: models ------------------------------------------------------------
def _find_weights(folder: Path) -> Path | None:
    """The CLIP weights of a hub-layout folder (open_clip's preferred names first)."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _needs_transformers(model_cfg: dict) -> bool:
    text_cfg = model_cfg.get("text_cfg", {}) or {}
    return bool(text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"))


def require_transformers(what: str) -> None:
    """Raise a :class:`ModelError` naming the extra to install when transformers is missing."""
    if importlib.util.find_spec("transformers") is None:
        raise ModelError(
            f"{what} has a Hugging Face text tower, which needs the 'transformers' package: "
            "pip install 'napari-itaclip[hf]' (or pip install transformers)"
        )


def _schema_help(name: str) -> str:
    return (
        f"The configuration or weights of {name!r} are not in the local Hugging Face cache "
        "and could not be downloaded (no network?). Either download them once on a machine "
        "with network access (Segmenter(model=...).load() or open_clip.create_model(...)) and "
        "copy the Hugging Face cache (~/.cache/huggingface, or $HF_HOME) here (set "
        "HF_HUB_OFFLINE=1 to use it without trying the network), or copy the repository's "
        "files into a folder and load it with model='local-dir:/path/to/folder'."
    )


def _load_schema_model(name: str, pretrained, tokenizer, cache_dir):
    """(model, cache key, description, tokenizer) of an ``hf-hub:``/``local-dir:`` model."""
    import open_clip

    schema, ident = name.split(":", 1)
    if not ident.strip():
        raise ModelError(f"{name!r}: nothing after '{schema}:' (expected {schema}:"
                         + ("org/name)" if schema == "hf-hub" else "/path/to/folder)"))
    if normalise_pretrained(name, pretrained) is not None:
        raise ModelError(
            f"{name!r} brings its own weights ({'repository' if schema == 'hf-hub' else 'folder'}"
            f" with open_clip_config.json and open_clip_model.safetensors or "
            f"open_clip_pytorch_model.bin); pretrained={str(pretrained)!r} cannot apply to it. "
            "Pass pretrained=None."
        )
    offline = False
    if schema == "local-dir":
        folder = Path(ident).expanduser()
        if not folder.is_dir():
            raise ModelError(f"model folder not found: {folder} (from {name!r})")
        cfg_path = folder / "open_clip_config.json"
        if not cfg_path.is_file():
            raise ModelError(
                f"{folder} has no open_clip_config.json: a local-dir: model is a folder in the "
                "layout of an open_clip hub repository (open_clip_config.json plus "
                "open_clip_model.safetensors or open_clip_pytorch_model.bin)"
            )
        ckpt = _find_weights(folder)
        if ckpt is None:
            raise CheckpointError(
                f"{folder} has no weights: expected one of {', '.join(_WEIGHT_FILES)}"
            )
        name = f"local-dir:{folder}"
    else:
        from open_clip.pretrained import download_pretrained_from_hf

        offline = not hub_reachable()
        try:
            with _hub_offline(offline):
                cfg_path = Path(download_pretrained_from_hf(
                    ident, filename="open_clip_config.json", cache_dir=cache_dir))
                ckpt = Path(download_pretrained_from_hf(ident, cache_dir=cache_dir))
        except Exception as exc:  # noqa: BLE001 - network, hub and IO errors alike
            raise WeightsUnavailableError(_schema_help(name) + f" ({exc})") from exc
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            model_cfg = json.load(fh)["model_cfg"]
        if not isinstance(model_cfg, dict):
            raise TypeError("model_cfg is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{cfg_path} is not an open_clip configuration with a 'model_cfg' "
                         f"entry: {type(exc).__name__}: {exc}") from exc
    hf_text = _needs_transformers(model_cfg)
    if hf_text:
        require_transformers(name)
        # the text tower's own configuration and tokenizer may come from the hub cache
        offline = offline or not hub_reachable()
    try:
        with _hub_offline(offline), _quiet_random_init_warning(True):
            net = open_clip.create_model(
                name, load_weights=False, pretrained_image=False, pretrained_text=False,
                device="cpu", cache_dir=cache_dir,
            )
            tok = tokenizer or open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001
        if hf_text and offline:
            raise WeightsUnavailableError(
                _schema_help(name) + " The Hugging Face text tower's configuration and "
                f"tokenizer files are needed too ({type(exc).__name__}: {exc})"
            ) from exc
        raise ModelError(f"could not build open_clip model {name!r}: {type(exc).__name__}: "
                         f"{exc}") from exc
    _load_into(net, read_state_dict(ckpt), ckpt, name)
    log.info("loaded weights for %s from %s (%s)", name, ckpt, _size_text(ckpt))
    key = f"{name}|config={checkpoint_fingerprint(cfg_path)}|weights={checkpoint_fingerprint(ckpt)}"
    return net, key, f"{name} (its own weights)", tok
