"""Cleaning an LLM's answer down to a definition or synonyms that fit CLIP's context.

:func:`parse_answer` strips reasoning, markdown, preambles, echoes of the class name,
quotes and leading punctuation; :func:`fit_aux_text` shortens a text at a word
boundary so every prompt template built from it fits CLIP's 77-token context.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from .prompts import check_kind

__all__ = ["CONTEXT_LENGTH", "MAX_DEFINITION_WORDS", "MAX_SYNONYMS", "MAX_SYNONYM_WORDS",
           "BadAnswer", "aux_token_budget", "count_template_tokens", "fit_aux_text",
           "parse_answer"]

#: CLIP's text context, start- and end-of-text tokens included.
CONTEXT_LENGTH = 77
#: Longest answer (in words, after cleaning) taken as a definition; the prompt asks
#: for at most 50. Longer answers are rejected as rambling.
MAX_DEFINITION_WORDS = 60
#: Longest single synonym, in words; longer items are explanations, not synonyms.
MAX_SYNONYM_WORDS = 6
#: Most synonyms kept per class.
MAX_SYNONYMS = 5

class BadAnswer(ValueError):
    """An answer that holds no usable definition or synonyms."""


_THINK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.S | re.I)
_FENCE = re.compile(r"^\s*(```|~~~)[\w+-]*\s*$")
_LIST_MARK = re.compile(r"^\s*(?:[-*+\u2022>]+|\d+[.)]|[a-z][.)](?=\s))\s*", re.I)
_HEADING = re.compile(r"^\s*#+\s*")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_QUOTES = "\"'\u201c\u201d\u2018\u2019\u00ab\u00bb`"
# a greeting counts only when punctuation follows ("Great!", not "great white shark")
_GREETING = (r"(?:sure|certainly|of course|okay|ok|absolutely|great|alright|gladly|happy to help"
             r"|no problem)(?:\s+thing)?[!.,]+")
_PREAMBLE = re.compile(
    r"^(?:" + _GREETING + r"|here(?:'s|\u2019s| is| are| you go)\b|below is\b"
    r"|the following\b)", re.I)
_INLINE_PREAMBLE = re.compile(
    r"^(?:" + _GREETING + r"\s*)?(?:here(?:'s|\u2019s| is| are)\b[^:]{0,80}:\s*)?", re.I)
_LABEL = re.compile(r"^(?:definition|synonyms?|answer|output|response)\b[^:]{0,40}:\s*", re.I)
_REFUSAL = re.compile(
    r"^(?:i'm sorry|i am sorry|sorry|i cannot|i can't|i can\u2019t|i'm not sure|i am not sure"
    r"|i don't know|i do not know|as an ai|unfortunately|i'm unable|i am unable"
    r"|could you|can you|please provide|i need more)\b", re.I)
# what is left of an echo the model began with (": a rounded organelle", "- a ...")
_LEADING_PUNCT = re.compile(r"^[\s:;,.!?>=\-\u2013\u2014]+")
_DANGLING = frozenset((
    "a", "an", "the", "and", "or", "of", "with", "to", "in", "on", "for", "from", "by", "at",
    "as", "that", "which", "who", "whose", "is", "are", "such", "like", "including", "e.g.",
    "i.e.", "etc", "but"))


def _strip_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if text.count('"') == 1:
        text = text.replace('"', "")
    return text.strip()


def _clean_line(line: str) -> str:
    line = _HEADING.sub("", line)
    line = _LIST_MARK.sub("", line)
    line = _EMPHASIS.sub("", line)
    return " ".join(line.replace("#", " ").split())


def _strip_echo(text: str, name: str, kind: str) -> str:
    """Remove ``name >=``-style echoes, labels, preambles and quotes, repeatedly."""
    words = [re.escape(w) for w in name.split()]
    pat_name = r"[\"'\u201c\u2018]?" + r"[\s_-]+".join(words) + r"s?[\"'\u201d\u2019]?"
    echo = re.compile(r"^(?:the\s+)?" + pat_name + r"\s*(?:>=|=>|->|:|=|\u2013|\u2014|-(?=\s))\s*",
                      re.I)
    copula = re.compile(r"^(?:an?\s+|the\s+)?" + pat_name + r"\s+(?:is|are|means|refers to)\s+",
                        re.I)
    for _ in range(4):
        before = text
        text = _LEADING_PUNCT.sub("", text)
        text = _INLINE_PREAMBLE.sub("", text, count=1)
        text = _LABEL.sub("", text, count=1)
        text = echo.sub("", text, count=1)
        if kind == "definitions":
            text = copula.sub("", text, count=1)
        text = _strip_quotes(text)
        if text == before:
            break
    return text


def _content_lines(answer: str) -> list[str]:
    text = _THINK.sub("\n", answer)
    if re.search(r"<(think|thinking|reasoning)>", text, re.I):
        raise BadAnswer("the answer holds only the model's reasoning, no result "
                         "(raise max_tokens, or use a model that does not think aloud)")
    lines = []
    for raw in text.replace("\r", "\n").split("\n"):
        if _FENCE.match(raw):
            continue
        line = _clean_line(raw)
        if line:
            lines.append(line)
    # drop preamble lines ("Sure! Here is the definition:"), keep the rest
    while len(lines) > 1 and (lines[0].endswith(":") or _PREAMBLE.match(lines[0])):
        lines.pop(0)
    return lines


def _lower_first(text: str) -> str:
    """Lower-case a capitalised first word ("A", "Small"), not an acronym ("DNA")."""
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and (len(first) == 1 or first[1:].islower()):
        return text[0].lower() + text[1:]
    return text


def _finish_definition(text: str) -> str:
    return _lower_first(text.strip().rstrip(".;:,!").strip())


def parse_answer(answer: str, name: str, kind: str = "definitions", *,
                 context_length: int = CONTEXT_LENGTH) -> str:
    """Keep only the definition or synonyms from a model's answer.

    Removes reasoning blocks (``<think>...</think>``), markdown (fences, headings,
    emphasis, list markers), preambles ("Sure! Here is the definition:"), labels
    ("Definition:"), echoes of the name ("cat >= ...", "A cat is ..."), quotes and
    any further lines (definitions keep the first line; synonyms given one per line
    are joined). The result is shortened at a word boundary to fit CLIP's context
    inside every prompt template (:func:`fit_aux_text`).

    Parameters
    ----------
    answer : str
        The model's reply.
    name : str
        The class name that was asked about.
    kind : {"definitions", "synonyms"}
        What was asked for.
    context_length : int
        The text encoder's context, start and end tokens included.

    Returns
    -------
    str
        A definition (lower-case first letter, no final period) or a comma-separated
        list of at most five synonyms.

    Raises
    ------
    ValueError
        The answer is empty, a refusal or question, longer than
        ``MAX_DEFINITION_WORDS`` words (rambling), or holds no synonym.
    """
    kind = check_kind(kind)
    name = " ".join(str(name).split())
    if not isinstance(answer, str) or not answer.strip():
        raise BadAnswer("the answer is empty")
    lines = _content_lines(answer)
    if len(lines) > 1:  # a heading that only names the class ("# Cat")
        lines = [ln for ln in lines if _strip_quotes(ln).rstrip(":").lower() != name.lower()]
    if not lines:
        raise BadAnswer("the answer is empty once formatting is removed")
    if kind == "definitions":
        text = _finish_definition(_strip_echo(lines[0], name, kind))
        if not text:
            raise BadAnswer(f"the answer holds no definition: {answer.strip()[:120]!r}")
        if _REFUSAL.match(text) or text.endswith("?"):
            raise BadAnswer(f"the answer is not a definition: {text[:120]!r}")
        if text.lower() == name.lower():
            raise BadAnswer(f"the answer only repeats the class name: {text!r}")
        n_words = len(text.split())
        if n_words > MAX_DEFINITION_WORDS:
            raise BadAnswer(f"the answer is too long for a definition ({n_words} words, "
                             f"at most {MAX_DEFINITION_WORDS}): {text[:80]!r}...")
    else:
        items_src = lines if len(lines) > 1 and all(
            len(ln.split()) <= MAX_SYNONYM_WORDS for ln in lines) else lines[:1]
        items: list[str] = []
        seen = {name.lower()}
        too_long = []
        first = _strip_echo(items_src[0], name, kind)
        if _REFUSAL.match(first) or first.endswith("?"):
            raise BadAnswer(f"the answer is not a list of synonyms: {first[:120]!r}")
        for i, src in enumerate(items_src):
            src = first if i == 0 else _strip_echo(src, name, kind)
            for item in re.split(r"[,;/|]", src):
                item = _strip_quotes(_clean_line(item)).rstrip(".!").strip()
                if not item:
                    continue
                if len(item.split()) > MAX_SYNONYM_WORDS:
                    too_long.append(item)
                    continue
                key = item.lower()
                if key not in seen:
                    seen.add(key)
                    items.append(_lower_first(item))
        if not items or len(too_long) >= len(items):
            what = (f"an explanation instead of synonyms: {too_long[0][:120]!r}" if too_long
                    else f"no synonym other than the name itself: {answer.strip()[:120]!r}")
            raise BadAnswer(f"the answer holds {what}")
        text = ", ".join(items[:MAX_SYNONYMS])
    fitted = fit_aux_text(text, context_length=context_length)
    if not fitted:
        raise BadAnswer(f"the answer does not fit CLIP's context: {text[:80]!r}")
    return fitted


@functools.lru_cache(maxsize=1)
def _tokenizer_and_templates() -> tuple[Any, tuple[Any, ...]]:
    """open_clip's CLIP tokenizer and the 80 OpenAI templates, loaded once."""
    from .._torch_setup import before_torch

    before_torch()  # open_clip loads torch (in napari: the widget's LLM fill, maybe before any Run)
    try:
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    except ImportError as exc:  # pragma: no cover - open_clip is a dependency
        raise ImportError("napari_itaclip.llm needs open_clip_torch to count CLIP tokens: "
                          "pip install open_clip_torch") from exc
    return SimpleTokenizer(), tuple(OPENAI_IMAGENET_TEMPLATES)


def count_template_tokens(text: str) -> int:
    """Tokens of the longest prompt made from ``text``, start and end tokens included.

    The text is placed in each of the 80 OpenAI ImageNet templates (``"a photo of a
    {}."``, ..., docs/engine.md, section "Text features") and tokenised with
    open_clip's CLIP tokenizer (the one
    ``open_clip.get_tokenizer("ViT-B-16")`` returns); the largest count is returned.
    """
    tok, templates = _tokenizer_and_templates()
    return 2 + max(len(tok.encode(t(text))) for t in templates)


def aux_token_budget(context_length: int = CONTEXT_LENGTH) -> int:
    """How many CLIP tokens an auxiliary text may have.

    ``context_length`` minus the start and end tokens minus the longest template
    (``"a jpeg corrupted photo of the {}."``: 9 tokens). For CLIP's 77-token context
    that is 66 tokens, about 45 to 55 ordinary English words.
    """
    tok, templates = _tokenizer_and_templates()
    overhead = max(len(tok.encode(t("x"))) for t in templates) - len(tok.encode("x"))
    return context_length - 2 - overhead


def fit_aux_text(text: str, context_length: int = CONTEXT_LENGTH) -> str:
    """Shorten ``text`` at a word boundary so every template prompt fits the context.

    Text that fits is returned unchanged (whitespace collapsed). Otherwise the longest
    fitting run of leading words is kept; if a sentence ends in its second half the text
    is cut there, else trailing connectors ("and", "of", "with", ...) and punctuation are
    dropped. Returns ``""`` when not even one word fits.
    """
    text = " ".join(str(text).split())
    if not text or count_template_tokens(text) <= context_length:
        return text
    words = text.split(" ")

    def fits(n: int) -> bool:
        return count_template_tokens(" ".join(words[:n])) <= context_length

    lo, hi = 0, len(words) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    kept = words[:lo]
    for j in range(len(kept) - 1, max(len(kept) // 2, 1) - 1, -1):
        if kept[j].endswith((".", "!", ";")):
            kept = kept[: j + 1]
            break
    while kept:
        last = kept[-1].rstrip(".,;:!-\u2013\u2014(")
        if not last or last.lower() in _DANGLING:
            kept.pop()
            continue
        kept[-1] = last
        break
    return " ".join(kept)
