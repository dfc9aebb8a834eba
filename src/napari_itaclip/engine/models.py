"""Model loading: open_clip names and tags, local checkpoints, devices.

Weights named by a pretrained tag are downloaded and cached by open_clip / the
Hugging Face hub cache exactly as open_clip does; a local file is read without
executing pickled code (``torch.load(weights_only=True)``, safetensors, or a
TorchScript archive such as OpenAI's original ``ViT-B-16.pt``).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, ModelError, WeightsUnavailableError

__all__ = ["LoadedModel", "checkpoint_fingerprint", "load_model", "resolve_device"]


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
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint file not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        elif _is_torchscript(p):
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
    for key in ("input_resolution", "context_length", "vocab_size"):
        obj.pop(key, None)  # OpenAI TorchScript archives carry these scalars
    return obj


def _check_name(name: str) -> None:
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
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
    model: str | os.PathLike | torch.nn.Module = "ViT-B-16",
    pretrained: str | os.PathLike | None = "openai",
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
        An open_clip model name (``open_clip.list_models()``), ``hf-hub:``/``local-dir:``
        identifiers, a path to an open_clip model-config ``.json``, or a model instance.
    pretrained : str, path or None
        A pretrained tag of that model (``open_clip.list_pretrained_tags_by_model``), a
        local checkpoint file, or ``None`` for random weights.
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
    if isinstance(model, torch.nn.Module):
        if isinstance(pretrained, (str, os.PathLike)):
            state = read_state_dict(pretrained)
            _load_into(model, state, pretrained, type(model).__name__)
        net, key, desc = model, None, f"{type(model).__name__} instance"
        tok = tokenizer or open_clip.get_tokenizer("ViT-B-16")
    else:
        name = str(model)
        if name.endswith(".json"):
            cfg_path = Path(name).expanduser()
            if not cfg_path.is_file():
                raise ModelError(f"model config file not found: {cfg_path}")
            open_clip.add_model_config(cfg_path)
            name = cfg_path.stem
            model_id = f"{checkpoint_fingerprint(cfg_path)}"
        else:
            _check_name(name)
            model_id = name
        tag = None if pretrained in (None, "", "none", "None") else str(pretrained)
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
        try:
            net = open_clip.create_model(
                name, pretrained=None, device="cpu", force_quick_gelu=force_quick_gelu
            )
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"could not build open_clip model {name!r}: {exc}") from exc
        if ckpt is not None:
            _load_into(net, read_state_dict(ckpt), ckpt, name)
            key, desc = f"{model_id}|{source}", f"{name} ({tag})"
        else:
            key, desc = None, f"{name} (random weights)"
        tok = tokenizer or open_clip.get_tokenizer(name)
    net = net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    if half:
        net = net.half()
    return LoadedModel(net, tok, key, desc)


def _load_into(net: torch.nn.Module, state: dict, path, name: str) -> None:
    from open_clip.factory import convert_state_dict, resize_pos_embed

    try:
        state = convert_state_dict(net, dict(state))
        if "logit_scale" in state and hasattr(net, "logit_scale"):
            state["logit_scale"] = state["logit_scale"].reshape(net.logit_scale.shape)
        resize_pos_embed(state, net)
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit model {name!r}: {exc}. Pick the model name that "
            "matches the checkpoint (OpenAI's files load with the '-quickgelu' names)"
        ) from exc
    missing = [k for k in missing if k != "logit_bias"]
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:6])
        raise CheckpointError(
            f"checkpoint {path} does not fit model {name!r}: {len(missing)} missing and "
            f"{len(unexpected)} unexpected keys (e.g. {shown}). Pick the model name that "
            "matches the checkpoint (OpenAI's files load with the '-quickgelu' names)"
        )
