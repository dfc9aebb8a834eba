"""Watch a model's public modules while the engine runs (no private hooks into our code)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def token_batches(module, *, fail: bool = False):
    """Record the (rows, width) of every token batch ``module`` (a text tower's token
    embedding, or a Hugging Face text tower) is called on; ``fail``: raise instead, for
    "nothing is computed".
    """
    seen: list[tuple[int, int]] = []

    def hook(_module, args):
        if fail:
            raise AssertionError("text recomputed")
        seen.append(tuple(args[0].shape[:2]))

    handle = module.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()
