"""Checks of what a user hands the model loader: model-config files, checkpoint shapes, GELU.

Used by :mod:`.models`; each turns a raw failure (a JSON traceback, open_clip's
``AssertionError``, a silent mismatch) into a clear error or warning naming the file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch

from ..errors import ModelError

__all__ = ["check_model_config", "shape_mismatches", "warn_gelu_with_quickgelu_weights"]


def check_model_config(path: Path) -> None:
    """Refuse a model-config ``.json`` that is missing, malformed or not an open_clip config."""
    if not path.is_file():
        raise ModelError(f"model config file not found: {path}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read model config {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"model config {path} is not valid JSON: {exc.msg} (line {exc.lineno}, "
                         f"column {exc.colno})") from exc
    need = ("embed_dim", "vision_cfg", "text_cfg")
    lacking = [k for k in need if not isinstance(cfg, dict) or k not in cfg]
    if lacking:
        raise ModelError(f"model config {path} is not an open_clip model config: it lacks "
                         f"{', '.join(map(repr, lacking))} (an object with "
                         f"{', '.join(need)}, as open_clip's model_configs/*.json)")


def warn_gelu_with_quickgelu_weights(name: str, model: str, ckpt: Path) -> None:
    """Warn when OpenAI's (QuickGELU) weights go into a model built with GELU."""
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    if cfg.get("quick_gelu", False):
        return
    if model.endswith(".json"):
        sibling = Path(model).expanduser().with_name(f"{name}-quickgelu.json")
        use = (f"model {str(sibling)!r}" if sibling.is_file()
               else f"a copy of {model} with \"quick_gelu\": true")
    elif f"{name}-quickgelu" in open_clip.list_models():
        use = f"model {name + '-quickgelu'!r}"
    else:  # pragma: no cover - every OpenAI architecture has a -quickgelu name
        use = "a model config with \"quick_gelu\": true"
    warnings.warn(
        f"{ckpt} is an OpenAI release checkpoint, trained with QuickGELU, but model "
        f"{name!r} uses GELU: the features will be off. Use {use} with these weights.",
        UserWarning, stacklevel=3)



def shape_mismatches(state: dict, net: torch.nn.Module) -> str:
    """``key: checkpoint (a, b) vs model (c, d)`` for tensors of another shape (up to 3).

    Position tables of another length but the same width are left out (they are
    resized); one of another width is a mismatch.
    """
    own = net.state_dict()
    found = []
    for key, value in state.items():
        if key not in own or tuple(value.shape) == tuple(own[key].shape):
            continue
        mine = own[key]
        resizable = ("positional_embedding" in key and value.ndim == mine.ndim
                     and value.shape[-1] == mine.shape[-1])
        if not resizable:
            found.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(mine.shape)}")
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return "; ".join(found[:3]) + more if found else ""
