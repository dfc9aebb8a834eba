"""Text features: the 80-template ensemble, context truncation and caches
(docs/engine.md, section "Text features").

Every prompt of every uncached text goes into one pool, sorted by token length and
cut into batches; each batch runs the text transformer on a context truncated to its
longest prompt. For open_clip's own text transformer the causal mask makes the
end-of-text embedding independent of the padding after it, so the result equals the
full 77-token forward for far less work (and prompts sharing a template's leading
tokens run them once). For Hugging Face text towers (open_clip's ``HFTextEncoder``:
BERT, RoBERTa, ...) the padding is masked out of attention, and with a class-token or
masked-mean pooler the output does not depend on the trailing padding either: those
are truncated to the batch's longest prompt too, through the model's own
``encode_text``; other towers run the full context.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import numpy as np

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch

from ..outputs import write_atomic
from ..progress import drain
from .blocks import block_problem, qkv, run_block

__all__ = ["TEXT_PIPELINE_VERSION", "TextEncoder", "mix_aux", "templates"]

#: Bumped whenever anything that changes text embeddings changes (templates,
#: tokenisation, pooling); part of the on-disk cache key so a fix never serves
#: stale embeddings.
TEXT_PIPELINE_VERSION = "text-v1"


def mix_aux(query_features: np.ndarray, aux_features: np.ndarray, vocabulary,
            weight: float) -> torch.Tensor:
    """(Q, D) query features with each class's auxiliary text mixed into its names.

    Row by row: the ``n`` names of a class with an auxiliary text become
    ``(1 - weight) * name + weight * aux`` (``aux_features`` holds one row per class that
    has one, in vocabulary order); other rows are unchanged. See docs/engine.md,
    section "Auxiliary texts".
    """
    q = torch.from_numpy(np.array(query_features, copy=True))
    ai = row = 0
    for c in vocabulary:
        n = len(c.names)
        if c.aux:
            aux = torch.from_numpy(np.asarray(aux_features[ai]))
            q[row : row + n] = (1.0 - weight) * q[row : row + n] + weight * aux
            ai += 1
        row += n
    return q


def templates() -> list[Callable[[str], str]]:
    """The 80 OpenAI ImageNet prompt templates shipped by open_clip."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


class TextEncoder:
    """Template-ensemble text embeddings of one CLIP model, cached.

    Parameters
    ----------
    model : torch.nn.Module
        An open_clip ``CLIP`` or ``CustomTextCLIP``.
    tokenizer : callable
        The model's open_clip tokenizer.
    device : torch.device
        Where the text tower runs.
    cache_key : str or None
        Identity of the weights (model name, pretrained tag or file fingerprint).
        ``None`` disables the on-disk cache (e.g. for weights built in memory).
    cache_dir : Path or None
        Root of the on-disk cache; ``None`` disables it.
    batch_size : int
        Prompts per text-transformer forward.
    """

    def __init__(self, model, tokenizer, device, cache_key=None, cache_dir=None, batch_size=320):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self._memory: dict[str, np.ndarray] = {}
        self._templates = templates()
        self._dir = None
        if cache_key is not None and cache_dir is not None:
            # the weights' precision too: float16 embeddings must not serve a float32 run
            dtype = next((p.dtype for p in model.parameters()), None)
            digest = hashlib.sha256(
                f"{TEXT_PIPELINE_VERSION}|{len(self._templates)}|{cache_key}|{dtype}".encode()
            ).hexdigest()[:24]
            self._dir = Path(cache_dir) / "text" / digest
        #: the embedding length a disk-cache entry must have (None: not known up front)
        self._dim = _embedding_dim(model)
        self.truncate = _supports_truncation(model) or _hf_text_tower(model) is not None
        #: run each template's common leading tokens once for all texts (exact: causal)
        self.share_prefix = self.truncate and _supports_prefix_sharing(model)

    # -- public ----------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Ensemble features (n, D), float32, L2-normalised, one row per text."""
        return drain(self.iter_encode(texts))

    def iter_encode(self, texts: Sequence[str]) -> Generator[tuple[int, int], None, np.ndarray]:
        """Like :meth:`encode`, yielding ``(prompts done, prompts total)`` between batches."""
        texts = [str(t) for t in texts]
        missing = [t for t in dict.fromkeys(texts) if self._lookup(t) is None]
        if missing:
            feats = yield from self._compute(missing)
            for t, f in zip(missing, feats):
                self._memory[t] = f
                self._store(t, f)
        return np.stack([self._memory[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)

    def cached(self, text: str) -> bool:
        """Whether ``text`` is served from a cache (memory or disk)."""
        return self._lookup(text) is not None

    # -- caches ----------------------------------------------------------------------
    def _path(self, text: str) -> Path:
        return self._dir / (hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] + ".npy")

    def _lookup(self, text: str) -> np.ndarray | None:
        hit = self._memory.get(text)
        if hit is not None or self._dir is None:
            return hit
        path = self._path(text)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if not _valid_entry(arr, self._dim):
            return None  # a corrupt or foreign entry is a miss: recomputed and rewritten
        self._memory[text] = arr
        return arr

    def _store(self, text: str, feat: np.ndarray) -> None:
        if self._dir is None:
            return
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self._path(text), lambda tmp: _save_npy(tmp, feat))
        except OSError:
            pass  # a read-only or full cache only costs speed

    # -- computation -----------------------------------------------------------------
    def _compute(self, texts: list[str]):
        n_tpl = len(self._templates)
        prompts = [tpl(t) for t in texts for tpl in self._templates]
        tokens = self.tokenizer(prompts)
        lengths = _lengths(tokens, self.model)
        total = len(prompts)
        out = None
        yield (0, total)
        shared = self.share_prefix and len(texts) >= 4
        if shared:
            # one group per template: its prompts share the template's leading tokens
            groups = [np.arange(j, total, n_tpl) for j in range(n_tpl)]
        else:
            order = np.argsort(-lengths, kind="stable")
            groups = [order[i : i + self.batch_size] for i in range(0, total, self.batch_size)]
        done = 0
        for idx in groups:
            # inference mode around the computation only, never across a yield: it is
            # thread-local, and a generator abandoned while suspended inside it would
            # leave the (pooled) worker thread in inference mode, so a model loaded there
            # later would get inference tensors as weights
            with torch.inference_mode():
                batch = tokens[torch.as_tensor(idx)].to(self.device)
                if shared:
                    feats = _encode_shared_prefix(self.model, batch, lengths[idx])
                else:
                    n = int(lengths[idx].max()) if self.truncate else batch.shape[1]
                    feats = self._forward(batch, n)
                feats = feats.float()
                feats = feats / feats.norm(dim=-1, keepdim=True)
                if out is None:
                    out = torch.empty((total, feats.shape[-1]), dtype=torch.float32)
                out[torch.as_tensor(idx)] = feats.cpu()
            done += len(idx)
            yield (done, total)
        per_text = out.reshape(len(texts), n_tpl, -1).mean(dim=1)
        per_text = per_text / per_text.norm(dim=-1, keepdim=True)
        return [row.numpy().astype(np.float32) for row in per_text]

    def _forward(self, tokens: torch.Tensor, n: int) -> torch.Tensor:
        if not self.truncate or n >= tokens.shape[1]:
            return self.model.encode_text(tokens)
        if _text_tower(self.model) is None:  # a Hugging Face tower: padding is masked
            return self.model.encode_text(tokens[:, :n])
        return _encode_truncated(self.model, tokens, n)


#: open_clip poolers whose output ignores masked (padding) positions
_MASK_EXACT_POOLERS = ("ClsPooler", "ClsLastHiddenStatePooler", "MeanPooler")


def _valid_entry(arr: np.ndarray, dim: int | None) -> bool:
    """Whether a disk-cache entry can be an embedding of this model: a 1-D float32
    vector of the model's length (when known), finite and of unit norm (as stored).
    """
    if arr.ndim != 1 or arr.dtype != np.float32 or arr.size == 0:
        return False
    if dim is not None and arr.shape[0] != dim:
        return False
    return bool(np.isfinite(arr).all()) and abs(float(np.linalg.norm(arr)) - 1.0) < 1e-3


def _embedding_dim(model) -> int | None:
    """The length of the model's text embeddings, when its projection shows it."""
    for owner in (model, getattr(model, "text", None)):
        for attr in ("text_projection", "proj"):
            proj = getattr(owner, attr, None) if owner is not None else None
            if isinstance(proj, torch.nn.Linear):
                return int(proj.out_features)
            if isinstance(proj, torch.Tensor) and proj.ndim == 2:
                return int(proj.shape[-1])
    return None


def _hf_text_tower(model):
    """(tower, pad id) of open_clip's ``HFTextEncoder`` when trailing padding can be cut, or None.

    Its forward builds the attention mask as ``tokens != pad_token_id``, so padding
    never enters attention; a class-token or masked-mean pooler then makes the output
    independent of how much padding follows the prompt.
    """
    tower = getattr(model, "text", None)
    try:
        from open_clip.hf_model import HFTextEncoder
    except ImportError:  # pragma: no cover - open_clip always ships it
        return None
    if not isinstance(tower, HFTextEncoder) or type(tower).forward is not HFTextEncoder.forward:
        return None
    if type(getattr(tower, "pooler", None)).__name__ not in _MASK_EXACT_POOLERS:
        return None
    pad = getattr(tower.config, "pad_token_id", None)
    if pad is None:
        return None
    return tower, int(pad)


def _text_tower(model):
    """(tower, pool_type, eos_id) of a causal CLIP text tower, or None."""
    tower = getattr(model, "text", None)
    if tower is None and hasattr(model, "token_embedding"):
        tower = model
        pool = getattr(model, "text_pool_type", "argmax")
    elif tower is not None and hasattr(tower, "token_embedding"):
        pool = getattr(tower, "pool_type", "argmax")
        if getattr(tower, "cls_emb", None) is not None:
            return None
    else:
        return None
    mask = getattr(tower, "attn_mask", None)
    if mask is None or pool not in ("argmax", "eos"):
        return None
    eos_id = getattr(tower, "text_eos_id", None) or getattr(model, "text_eos_id", None)
    if pool == "eos" and eos_id is None:
        return None
    return tower, pool, eos_id


def _supports_truncation(model) -> bool:
    return _text_tower(model) is not None


def _supports_prefix_sharing(model) -> bool:
    spec = _text_tower(model)
    if spec is None or spec[1] != "argmax":
        return False
    transformer = spec[0].transformer
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or not getattr(transformer, "batch_first", True):
        return False
    return all(block_problem(b) is None for b in blocks)


def _lengths(tokens: torch.Tensor, model) -> np.ndarray:
    """Context length each prompt needs: its end-of-text (or last non-padding) position + 1."""
    spec = _text_tower(model)
    if spec is None:
        hf = _hf_text_tower(model)
        if hf is None:
            return np.full(tokens.shape[0], tokens.shape[1])
        pos = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
        last = ((tokens != hf[1]) * pos).max(dim=1).values  # 1 + last non-padding position
        return last.clamp(min=1).cpu().numpy()
    _, pool, eos_id = spec
    return (_end_positions(tokens, pool, eos_id) + 1).cpu().numpy()


def _end_positions(tokens: torch.Tensor, pool: str, eos_id) -> torch.Tensor:
    """Index of each prompt's end-of-text token (the pooled one)."""
    if pool == "argmax":
        return tokens.argmax(dim=-1)  # end-of-text has the highest id
    return (tokens == eos_id).int().argmax(dim=-1)


def _embed(tower, tokens: torch.Tensor) -> torch.Tensor:
    """Token plus positional embeddings of (B, n) tokens, in the tower's cast dtype."""
    n = tokens.shape[1]
    transformer = tower.transformer
    cast = transformer.get_cast_dtype() if hasattr(transformer, "get_cast_dtype") else None
    x = tower.token_embedding(tokens)
    if cast is not None:
        x = x.to(cast)
    return x + tower.positional_embedding[:n].to(x.dtype)


def _project(tower, x: torch.Tensor) -> torch.Tensor:
    """The tower's text projection of pooled features (if it has one)."""
    proj = tower.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def _encode_truncated(model, tokens: torch.Tensor, n: int) -> torch.Tensor:
    tower, pool, eos_id = _text_tower(model)
    tokens = tokens[:, :n]
    x = tower.transformer(_embed(tower, tokens), attn_mask=tower.attn_mask[:n, :n])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), _end_positions(tokens, pool, eos_id)]
    return _project(tower, x)


def _encode_shared_prefix(model, tokens: torch.Tensor, lengths: np.ndarray) -> torch.Tensor:
    """Text features of prompts that share leading tokens, the prefix run only once.

    Attention is causal, so the hidden states of the common prefix are the same for
    every prompt: run it once, keep each block's keys and values, and run only the
    remaining tokens of each prompt against them. Same result as the full forward.
    """
    tower, _, _ = _text_tower(model)
    b = tokens.shape[0]
    shortest = int(lengths.min())
    same = (tokens[:, : shortest - 1] == tokens[:1, : shortest - 1]).all(dim=0)
    p = int(same.long().cumprod(0).sum())  # common prefix, leaving each its end token
    if p == 0:
        return _encode_truncated(model, tokens, int(lengths.max()))
    s = int(lengths.max()) - p
    emb = _embed(tower, tokens[:, : p + s])
    xp, xs = emb[:1, :p], emb[:, p:]
    dev = tokens.device
    causal = torch.ones(p + s, p + s, dtype=torch.bool, device=dev).tril()
    mask_p, mask_s = causal[:p, :p], causal[p:, :]
    for blk in tower.transformer.resblocks:
        qp, kp, vp = qkv(blk, blk.ln_1(xp))
        qs, ks, vs = qkv(blk, blk.ln_1(xs))
        k = torch.cat([kp.expand(b, -1, -1, -1), ks], dim=2)
        v = torch.cat([vp.expand(b, -1, -1, -1), vs], dim=2)
        xp = run_block(blk, xp, qp, kp, vp, attn_mask=mask_p)
        xs = run_block(blk, xs, qs, k, v, attn_mask=mask_s)
    x = tower.ln_final(xs)
    idx = torch.as_tensor(lengths - 1 - p, device=dev)
    return _project(tower, x[torch.arange(b, device=dev), idx])


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """``arr`` in .npy format at ``path`` exactly (``np.save`` of a name would append
    ``.npy`` to a temporary name).
    """
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
