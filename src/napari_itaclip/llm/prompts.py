"""The chat messages that ask an LLM for a class's definition or synonyms (the paper's form)."""

from __future__ import annotations

from ..config import AUX_KINDS

__all__ = ["KINDS", "PROMPT_VERSION", "build_messages", "check_kind"]

#: The two kinds of auxiliary text (the config's ``aux_kind`` values).
KINDS = AUX_KINDS
#: Bumped whenever the prompts or the answer parsing change, so that generated texts
#: cached under an older prompt are asked for again (user-edited texts are kept).
PROMPT_VERSION = 1

_SYSTEM = {
    "definitions": (
        "You write short definitions of visual categories (objects, animals, plants, "
        "materials, places, parts of scenes) for an image recognition system. You are given "
        "one category name followed by '>='. Reply with its definition only: a plain English "
        "noun phrase in lower case that says what the thing is and what it looks like, no "
        "more than 50 words (10 to 25 words is best). Do not repeat the name, and write "
        "nothing but the definition: no greeting, preamble, quotes, notes, lists or formatting."
    ),
    "synonyms": (
        "You list synonyms of visual category names for an image recognition system. You are "
        "given one category name followed by '>='. Reply with up to three other common English "
        "words or short phrases that name the same kind of thing, most common first, separated "
        "by commas. If there is no exact synonym, give the closest everyday names. Write nothing "
        "but the synonyms: no greeting, preamble, numbering, quotes, explanations or formatting."
    ),
}

_EXAMPLES = {
    "definitions": (
        ("house", "a building that people, usually one family, live in"),
        ("bicycle", "a vehicle with two wheels, a frame, handlebars and pedals that a person "
                    "rides by pushing the pedals with the feet"),
        ("grass", "low green plants with thin narrow leaves that cover lawns, fields and "
                  "the ground of parks"),
    ),
    "synonyms": (
        ("house", "home, dwelling, residence"),
        ("bicycle", "bike, cycle, pushbike"),
        ("grass", "lawn, turf, sward"),
    ),
}


def check_kind(kind: str) -> str:
    """``kind`` normalised to ``"definitions"`` or ``"synonyms"`` (singular forms accepted)."""
    k = str(kind).strip().lower()
    k = {"definition": "definitions", "synonym": "synonyms"}.get(k, k)
    if k not in KINDS:
        raise ValueError(f"kind must be 'definitions' or 'synonyms', got {kind!r}")
    return k


def build_messages(name: str, kind: str = "definitions") -> list[dict[str, str]]:
    """The chat messages that ask for one class's definition or synonyms.

    A system instruction, three worked examples as user/assistant turns in the paper's
    form (``house >=`` answered by ``a building that people, usually one family, live
    in``), then ``"{name} >="``.

    Parameters
    ----------
    name : str
        The class name.
    kind : {"definitions", "synonyms"}
        What to ask for.

    Returns
    -------
    list of dict
        ``[{"role": ..., "content": ...}, ...]``, ready for the request body.
    """
    kind = check_kind(kind)
    messages = [{"role": "system", "content": _SYSTEM[kind]}]
    for example, answer in _EXAMPLES[kind]:
        messages.append({"role": "user", "content": f"{example} >="})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": f"{' '.join(str(name).split())} >="})
    return messages
