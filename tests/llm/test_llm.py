"""Tests of napari_itaclip.llm against a scripted chat-completions server on loopback."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from napari_itaclip import llm
from napari_itaclip.errors import ITACLIPError
from napari_itaclip.llm import (
    LLMError,
    LLMSettings,
    cached_aux,
    forget_aux,
    generate_aux,
    iter_generate_aux,
    remember_aux,
)
from napari_itaclip.vocabulary import Vocabulary

# -- a scripted stand-in for an LLM service ------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: object = None  # dict -> JSON, str/bytes -> as is
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


def chat(content, finish_reason="stop"):
    """A chat-completions response body holding ``content``."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "test-model",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}]}


def asked_name(request):
    """The class name of a recorded request (its last user message is "name >=")."""
    return request["json"]["messages"][-1]["content"].removesuffix(">=").strip()


DEFINITIONS = {
    "cat": "A small domesticated carnivorous mammal with soft fur.",
    "car": "a road vehicle with four wheels and an engine",
    "person": "a human being",
    "dog": "a domesticated animal that barks",
}


class FakeLLM:
    """An OpenAI-compatible server on 127.0.0.1 whose replies a test scripts.

    ``respond(request) -> Reply`` answers each POST; by default it returns the
    definitions above. Every request is recorded in ``requests``.
    """

    def __init__(self):
        self.requests = []
        self.respond = lambda req: Reply(body=chat(DEFINITIONS.get(asked_name(req), "a thing")))
        self.stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                request = {"path": self.path, "headers": dict(self.headers), "json": body}
                fake.requests.append(request)
                reply = fake.respond(request)
                if reply.delay:
                    fake.stop.wait(reply.delay)
                payload = reply.body
                if isinstance(payload, dict):
                    payload = json.dumps(payload)
                if isinstance(payload, str):
                    payload = payload.encode("utf-8")
                payload = payload or b""
                try:
                    self.send_response(reply.status)
                    ctype = "application/json" if isinstance(reply.body, dict) else "text/html"
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        # a bound on the server's life, should a test hang
        self.watchdog = threading.Timer(60.0, self.close)
        self.watchdog.daemon = True

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self):
        self.thread.start()
        self.watchdog.start()
        return self

    def close(self):
        self.stop.set()
        self.watchdog.cancel()
        self.server.shutdown()
        self.server.server_close()

    def asked(self):
        return [asked_name(r) for r in self.requests]


@pytest.fixture
def server():
    fake = FakeLLM().start()
    yield fake
    fake.close()


@pytest.fixture
def settings(server):
    return LLMSettings(base_url=server.url, model="test-model", timeout=5.0, max_retries=0,
                       retry_delay=0.0)


VOCAB = Vocabulary.parse("background: sky, wall\ncat, feline\nperson >= a human being\ncar")


# -- success ---------------------------------------------------------------------------------
def test_definitions_fill_vocabulary(server, settings):
    out = generate_aux(VOCAB, "definitions", settings)
    assert out.format() == (
        "background: sky, wall\n"
        "cat, feline >= a small domesticated carnivorous mammal with soft fur\n"
        "person >= a human being\n"
        "car >= a road vehicle with four wheels and an engine")
    # only the classes without text were asked about; never the background
    assert server.asked() == ["cat", "car"]
    assert VOCAB[2].aux == "a human being" and VOCAB[1].aux is None  # input untouched


def test_request_follows_chat_completions_protocol(server, settings):
    generate_aux(["cat"], "definitions", settings.replace(api_key="sk-test", seed=3))
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["json"]
    assert body["model"] == "test-model"
    assert body["temperature"] == 0.6 and body["top_p"] == 0.9
    assert body["seed"] == 3 and body["stream"] is False
    messages = body["messages"]
    assert messages[0]["role"] == "system" and "50 words" in messages[0]["content"]
    assert {"role": "user", "content": "house >="} in messages
    assert {"role": "assistant",
            "content": "a building that people, usually one family, live in"} in messages
    assert messages[-1] == {"role": "user", "content": "cat >="}


def test_no_authorization_header_without_key(server, settings):
    generate_aux(["cat"], "definitions", settings)
    assert "Authorization" not in server.requests[0]["headers"]


def test_synonyms(server, settings):
    answers = {"car": "Sure! Here are some synonyms for car:\n\n1. **Automobile**\n2. motorcar\n"
                      "3. auto",
               "cat": "cat >= \"kitty, feline, pussycat.\""}
    server.respond = lambda req: Reply(body=chat(answers[asked_name(req)]))
    out = generate_aux("cat\ncar", "synonyms", settings)
    assert out.aux_texts == {"cat": "kitty, feline, pussycat", "car": "automobile, motorcar, auto"}
    system = server.requests[0]["json"]["messages"][0]["content"]
    assert "synonyms" in system
    assert Vocabulary.parse(out.format()) == out


def test_iter_generate_progress_and_return(server, settings):
    gen = iter_generate_aux(VOCAB, kind="definitions", settings=settings)
    steps = []
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(gen))
    assert steps == [(1, 3, "cat"), (2, 3, "person"), (3, 3, "car")]
    assert stop.value.value.aux_texts["car"] == "a road vehicle with four wheels and an engine"


def test_cancel_between_classes_keeps_received(server, settings):
    gen = iter_generate_aux(VOCAB, "definitions", settings)
    assert next(gen) == (1, 3, "cat")
    gen.close()  # the GUI's cancel
    assert server.asked() == ["cat"]
    assert cached_aux(VOCAB, "definitions", settings) == {
        "cat": "a small domesticated carnivorous mammal with soft fur"}


def test_overwrite_replaces_existing_but_not_background(server, settings):
    out = generate_aux(VOCAB, "definitions", settings, overwrite=True)
    assert server.asked() == ["cat", "person", "car"]
    assert out[0] == VOCAB[0]
    assert out[2].aux == "a human being"  # the server's definition of person
    server.respond = lambda req: Reply(body=chat("an individual human"))
    out = generate_aux(VOCAB, "definitions", settings, overwrite=True, refresh=True)
    assert out[2].aux == "an individual human"


def test_progress_callback(server, settings):
    seen = []
    generate_aux(["cat", "dog"], "definitions", settings, progress=lambda *a: seen.append(a))
    assert seen == [(1, 2, "cat"), (2, 2, "dog")]


def test_generated_texts_reach_the_engine(server, settings, tiny_segmenter):
    import numpy as np

    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    vocab = Vocabulary.parse("background: sky\ncat\ncar")
    plain = tiny_segmenter.segment(image, vocab)
    enhanced_vocab = generate_aux(vocab, "definitions", settings)
    enhanced = tiny_segmenter.segment(image, enhanced_vocab)
    assert enhanced.class_names == plain.class_names == ["background", "cat", "car"]
    assert not np.allclose(enhanced.similarity[1:], plain.similarity[1:])
    np.testing.assert_allclose(enhanced.similarity[0], plain.similarity[0], atol=1e-6)


# -- cache -------------------------------------------------------------------------------------
def test_second_call_sends_no_request(server, settings, tmp_path):
    first = generate_aux(VOCAB, "definitions", settings)
    assert len(server.requests) == 2
    again = generate_aux(VOCAB, "definitions", LLMSettings(base_url=server.url, model="test-model"))
    assert again == first
    assert len(server.requests) == 2
    files = list((tmp_path / "cache" / "llm").glob("*.json"))
    assert len(files) == 1 and "test-model" in files[0].name


def test_cache_keyed_by_model_kind_and_prompt_version(server, settings, monkeypatch):
    generate_aux(["cat"], "definitions", settings)
    generate_aux(["cat"], "definitions", settings.replace(model="other-model"))
    assert len(server.requests) == 2
    server.respond = lambda req: Reply(body=chat("kitty, feline"))
    generate_aux(["cat"], "synonyms", settings)
    assert len(server.requests) == 3
    monkeypatch.setattr(llm.prompts, "PROMPT_VERSION", llm.PROMPT_VERSION + 1)
    out = generate_aux(["cat"], "synonyms", settings)
    assert len(server.requests) == 4 and out[0].aux == "kitty, feline"


def test_cache_dir_setting_and_use_cache_false(server, settings, tmp_path):
    own = tmp_path / "own"
    generate_aux(["cat"], "definitions", settings.replace(cache_dir=own))
    assert list(own.glob("*.json"))
    assert llm.llm_cache_dir(settings) == tmp_path / "cache" / "llm"
    assert not (tmp_path / "cache").exists()
    nocache = settings.replace(use_cache=False)
    generate_aux(["dog"], "definitions", nocache)
    generate_aux(["dog"], "definitions", nocache)
    assert server.asked() == ["cat", "dog", "dog"]
    assert not (tmp_path / "cache").exists()


def test_refresh_asks_again(server, settings):
    generate_aux(["cat"], "definitions", settings)
    server.respond = lambda req: Reply(body=chat("a feline pet"))
    assert generate_aux(["cat"], "definitions", settings)[0].aux != "a feline pet"
    assert generate_aux(["cat"], "definitions", settings, refresh=True)[0].aux == "a feline pet"
    assert len(server.requests) == 2


def test_unreadable_cache_is_ignored(server, settings, tmp_path, caplog):
    generate_aux(["cat"], "definitions", settings)
    (path,) = (tmp_path / "cache" / "llm").glob("*.json")
    path.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="napari_itaclip.llm"):
        out = generate_aux(["cat"], "definitions", settings)
    assert out[0].aux.startswith("a small domesticated")
    assert len(server.requests) == 2
    assert "unreadable LLM cache" in caplog.text
    assert json.loads(path.read_text(encoding="utf-8"))["entries"]  # rewritten


# -- the user's edits ----------------------------------------------------------------------------
def test_edited_texts_are_kept(server, settings):
    generated = generate_aux(VOCAB, "definitions", settings)
    edited = generated.with_aux({"cat": "a pet with whiskers"})
    # person's text was the user's from the start: also recorded
    assert remember_aux(edited, "definitions", settings) == {"cat": "a pet with whiskers",
                                                             "person": "a human being"}
    # generated texts passed back unchanged are not edits
    assert remember_aux(generated.with_aux({"cat": None}), "definitions", settings) == {}

    n = len(server.requests)
    plain = VOCAB.without_aux()
    assert generate_aux(plain, "definitions", settings)[1].aux == "a pet with whiskers"
    assert len(server.requests) == n  # all cached
    out = generate_aux(plain, "definitions", settings, overwrite=True, refresh=True)
    assert out[1].aux == "a pet with whiskers"
    assert out[2].aux == "a human being"
    assert server.asked()[n:] == ["car"]
    assert cached_aux(["cat", "car"], "definitions", settings)["cat"] == "a pet with whiskers"

    # going back to the generated text drops the edit
    assert remember_aux(generated, "definitions", settings) == {}
    assert generate_aux(plain, "definitions", settings)[1].aux.startswith("a small domesticated")


def test_edits_survive_prompt_version_and_forget(server, settings, monkeypatch):
    remember_aux("cat >= my own words", "definitions", settings)
    monkeypatch.setattr(llm.prompts, "PROMPT_VERSION", llm.PROMPT_VERSION + 1)
    assert generate_aux(["cat"], "definitions", settings)[0].aux == "my own words"
    assert server.requests == []
    assert forget_aux(["cat"], "definitions", settings) == 1
    assert generate_aux(["cat"], "definitions", settings)[0].aux.startswith("a small")
    assert server.asked() == ["cat"]


# -- failures ------------------------------------------------------------------------------------
def _fails(settings, vocab=("cat",), kind="definitions"):
    with pytest.raises(LLMError) as info:
        generate_aux(list(vocab), kind, settings)
    err = info.value
    assert isinstance(err, ITACLIPError) and isinstance(err, RuntimeError)
    msg = str(err)
    assert settings.endpoint in msg and settings.model in msg
    assert err.endpoint == settings.endpoint and err.model == settings.model
    return err, msg


def test_unreachable_endpoint(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout=2,
                           retry_delay=0)
    t0 = time.monotonic()
    err, msg = _fails(settings)
    assert "connection refused" in msg and "ollama serve" in msg and "'cat'" in msg
    assert err.class_name == "cat" and err.status is None
    assert time.monotonic() - t0 < 2


def test_timeout(server, settings):
    server.respond = lambda req: Reply(body=chat("late"), delay=3.0)
    t0 = time.monotonic()
    _, msg = _fails(settings.replace(timeout=0.3, max_retries=2))
    assert time.monotonic() - t0 < 2.0  # timeouts are not retried
    assert "no complete answer within 0.3 s" in msg and "timeout" in msg
    assert len(server.requests) == 1


@pytest.mark.parametrize(("status", "body", "expect"), [
    (401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
     ["HTTP 401", "Incorrect API key provided", "API key"]),
    (404, {"error": "model \"test-model\" not found, try pulling it first"},
     ["HTTP 404", "not found, try pulling it first", "ollama pull test-model", "/v1"]),
    (400, "<html>Bad Request</html>", ["HTTP 400", "Bad Request"]),
])
def test_http_errors_not_retried(server, settings, status, body, expect):
    server.respond = lambda req: Reply(status=status, body=body)
    err, msg = _fails(settings.replace(max_retries=2))
    assert err.status == status
    for text in expect:
        assert text in msg
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_http_errors_retried_then_reported(server, settings, status):
    server.respond = lambda req: Reply(
        status=status, body={"error": {"message": f"server says {status}"}},
        headers={"Retry-After": "0"})
    err, msg = _fails(settings.replace(max_retries=1))
    assert len(server.requests) == 2
    assert f"HTTP {status}" in msg and f"server says {status}" in msg
    assert "gave up after 2 attempts" in msg and err.status == status
    if status == 429:
        assert "rate-limiting" in msg


def test_transient_error_then_success(server, settings):
    replies = iter([Reply(status=500, body={"error": "boom"}), Reply(body=chat("a pet"))])
    server.respond = lambda req: next(replies)
    assert generate_aux(["cat"], "definitions", settings.replace(max_retries=2))[0].aux == "a pet"
    assert len(server.requests) == 2


@pytest.mark.parametrize(("body", "expect"), [
    ("<!DOCTYPE html><html>Ollama is running</html>", ["not JSON", "/v1"]),
    ({"id": "x", "object": "chat.completion"}, ["lacks choices[0].message.content"]),
    ({"choices": []}, ["lacks choices[0].message.content"]),
    ({"choices": [{"message": {"role": "assistant"}}]}, ["lacks choices[0].message.content"]),
    ({"choices": [{"message": {"content": 42}}]}, ["is a int, not text"]),
    ({"error": {"message": "model is loading"}}, ["model is loading"]),
])
def test_malformed_responses(server, settings, body, expect):
    server.respond = lambda req: Reply(body=body)
    _, msg = _fails(settings)
    for text in expect:
        assert text in msg


@pytest.mark.parametrize(("content", "finish", "expect"), [
    ("", "stop", "answer is empty"),
    ("   \n ", "stop", "answer is empty"),
    (None, "length", "raise max_tokens"),
    ("<think>Let me think about cats and what they", "length", "only the model's reasoning"),
])
def test_empty_answers(server, settings, content, finish, expect):
    server.respond = lambda req: Reply(body=chat(content, finish))
    _, msg = _fails(settings)
    assert expect in msg and "'cat'" in msg


def test_rambling_and_non_definitions(server, settings):
    rambling = " ".join(["cats are wonderful animals that people love"] * 12)
    server.respond = lambda req: Reply(body=chat(rambling))
    _, msg = _fails(settings.replace(max_retries=1))
    assert "too long for a definition" in msg and "no usable definition" in msg
    assert "gave up after 2 attempts" in msg and len(server.requests) == 2

    server.respond = lambda req: Reply(body=chat("I'm sorry, but I cannot help with that."))
    _, msg = _fails(settings)
    assert "not a definition" in msg

    server.respond = lambda req: Reply(body=chat("Could you tell me which cat you mean?"))
    assert "not a definition" in _fails(settings)[1]

    server.respond = lambda req: Reply(body=chat(
        "A cat is an animal. Here is why, at great length, in a single very long sentence "
        "that goes on and on about things that are not synonyms at all really"))
    assert "explanation instead of synonyms" in _fails(settings, kind="synonyms")[1]


def test_bad_answer_retried_then_success(server, settings):
    replies = iter([Reply(body=chat("I'm sorry, I can't.")), Reply(body=chat("a small pet"))])
    server.respond = lambda req: next(replies)
    assert generate_aux(["cat"], "definitions", settings.replace(max_retries=1))[0].aux == \
        "a small pet"


def test_failure_keeps_received_results(server, settings):
    server.respond = lambda req: (Reply(status=500, body={"error": "overloaded"})
                                  if asked_name(req) == "car" else
                                  Reply(body=chat(DEFINITIONS[asked_name(req)])))
    vocab = Vocabulary.parse("background\ncat\ncar\ndog")  # "background" is never asked about
    with pytest.raises(LLMError, match="'car'") as info:
        generate_aux(vocab, "definitions", settings)
    assert info.value.class_name == "car"
    assert vocab.aux_texts == {}
    server.respond = lambda req: Reply(body=chat(DEFINITIONS[asked_name(req)]))
    server.requests.clear()
    out = generate_aux(vocab, "definitions", settings)
    assert server.asked() == ["car", "dog"]  # cat came from the cache
    assert set(out.aux_texts) == {"cat", "car", "dog"}


# -- parsing and the token budget ----------------------------------------------------------------
@pytest.mark.parametrize(("answer", "expected"), [
    ("a small domesticated carnivorous mammal", "a small domesticated carnivorous mammal"),
    ("cat >= a small pet", "a small pet"),
    ("Cat: A small pet.", "a small pet"),
    ("\"A small pet.\"", "a small pet"),
    ("\u201ca small pet\u201d", "a small pet"),
    ("A cat is a small pet.", "a small pet"),
    ("Sure! Here is the definition: a small pet", "a small pet"),
    ("Sure! Here's a definition of \"cat\":\n\n**A small pet.**\n\nCats purr.", "a small pet"),
    ("Definition: a small pet", "a small pet"),
    ("```\ncat >= a small pet\n```", "a small pet"),
    ("# Cat\n- a small pet", "a small pet"),
    ("<think>They want a definition.</think>\n\na small pet", "a small pet"),
    ("DNA-based lifeform kept as a pet", "DNA-based lifeform kept as a pet"),
    ("Okay! a small pet", "a small pet"),
])
def test_parse_definitions(answer, expected):
    assert llm.parse_answer(answer, "cat", "definitions") == expected


@pytest.mark.parametrize(("answer", "kind", "expected"), [
    (": a rounded organelle", "definitions", "a rounded organelle"),
    ("  ; - a rounded organelle.", "definitions", "a rounded organelle"),
    ("— a rounded organelle", "definitions", "a rounded organelle"),
    (">= a rounded organelle", "definitions", "a rounded organelle"),
    (": karyon, cell nucleus", "synonyms", "karyon, cell nucleus"),
])
def test_parse_strips_leading_punctuation(answer, kind, expected):
    """Issue #8 (b): an answer starting with punctuation kept it in the aux text."""
    assert llm.parse_answer(answer, "nucleus", kind) == expected


def test_parse_keeps_words_that_look_like_greetings():
    answer = "Great white shark: a large grey ocean shark\nIt lives in coastal waters."
    assert llm.parse_answer(answer, "great white shark") == "a large grey ocean shark"
    assert llm.parse_answer("Great Lakes water and their shores", "lake") == \
        "great Lakes water and their shores"
    assert llm.parse_answer("Great white sharks are big.\nThey bite.", "shark") == \
        "great white sharks are big"


@pytest.mark.parametrize(("answer", "expected"), [
    ("automobile, motorcar, auto", "automobile, motorcar, auto"),
    ("car >= Automobile, motorcar.", "automobile, motorcar"),
    ("Synonyms: automobile; motorcar", "automobile, motorcar"),
    ("Here are three synonyms:\n- automobile\n- motor car\n- car\n- auto",
     "automobile, motor car, auto"),
    ("automobile, Automobile, car, auto, vehicle, motor, ride, wheels",
     "automobile, auto, vehicle, motor, ride"),
])
def test_parse_synonyms(answer, expected):
    assert llm.parse_answer(answer, "car", "synonyms") == expected


def test_token_budget_matches_templates():
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    tok = SimpleTokenizer()
    worst = max(len(tok.encode(t("x"))) - 1 for t in OPENAI_IMAGENET_TEMPLATES)
    assert llm.aux_token_budget() == 77 - 2 - worst == 66


def test_long_definition_truncated_at_word_boundary():
    import open_clip
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    # no connector words ("and", "by", ...), so the cut is exactly at the limit
    source = ("extraordinarily photosynthesising multicellular organism bearing chlorophyllous "
              "leaves arranged alternately along woody branches producing fragrant blossoms "
              "pollinated predominantly everywhere throughout springtime")
    words = source.split()
    text = " ".join((words * 3)[:45])  # 45 words, far more than 66 tokens
    out = llm.parse_answer(text, "tree", "definitions")
    kept = out.split()
    assert kept == text.split()[: len(kept)] and 10 < len(kept) < 45
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    for template in OPENAI_IMAGENET_TEMPLATES:
        assert len(tokenizer.encode(template(out))) + 2 <= 77
    # one more word would not fit "a jpeg corrupted photo of the {}."
    longer = " ".join(text.split()[: len(kept) + 1])
    assert len(tokenizer.encode(f"a jpeg corrupted photo of the {longer}.")) + 2 > 77
    # short texts are left alone
    assert llm.fit_aux_text("a small   pet") == "a small pet"


def test_truncation_prefers_sentence_end_and_drops_connectors():
    first = ("a tall woody perennial plant with a single main trunk, many branches and a "
             "crown of leaves, found in forests, parks and gardens all over the world, living "
             "for decades or even centuries.")
    rest = " ".join(["it grows leaves and flowers and fruit in forests and gardens"] * 6)
    assert llm.fit_aux_text(f"{first} {rest}") == first.rstrip(".")
    cut = llm.fit_aux_text(" ".join(["leaves and"] * 60))
    assert cut.endswith("leaves") and llm.count_template_tokens(cut) <= 77


# -- settings and import ---------------------------------------------------------------------------
def test_settings_from_env(monkeypatch):
    s = LLMSettings.from_env()
    assert (s.base_url, s.model, s.api_key) == (llm.DEFAULT_BASE_URL, llm.DEFAULT_MODEL, None)
    assert (s.temperature, s.top_p) == (0.6, 0.9)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    s = LLMSettings.from_env()
    assert (s.base_url, s.api_key) == ("https://api.example.com/v1", "sk-openai")
    # an own base URL never receives the OpenAI key
    monkeypatch.setenv(llm.ENV_BASE_URL, "http://localhost:8000/v1/chat/completions")
    monkeypatch.setenv(llm.ENV_MODEL, "meta-llama/Meta-Llama-3-8B-Instruct")
    monkeypatch.setenv(llm.ENV_TIMEOUT, "12.5")
    s = LLMSettings.from_env(top_p=0.5)
    assert s.base_url == "http://localhost:8000/v1" and s.api_key is None
    assert s.endpoint == "http://localhost:8000/v1/chat/completions"
    assert (s.model, s.timeout, s.top_p) == ("meta-llama/Meta-Llama-3-8B-Instruct", 12.5, 0.5)
    monkeypatch.setenv(llm.ENV_API_KEY, "sk-own")
    s = LLMSettings.from_env()
    assert s.api_key == "sk-own" and "sk-own" not in repr(s)
    monkeypatch.setenv(llm.ENV_TIMEOUT, "soon")
    with pytest.raises(ValueError, match=llm.ENV_TIMEOUT):
        LLMSettings.from_env()


def test_settings_validation():
    with pytest.raises(ValueError, match="base_url"):
        LLMSettings(base_url="localhost:11434")
    with pytest.raises(ValueError, match="top_p"):
        LLMSettings(top_p=0)
    with pytest.raises(ValueError, match="kind"):
        generate_aux(["cat"], "haiku", LLMSettings())
    assert llm.build_messages("cat", "synonym")[-1]["content"] == "cat >="


def test_import_is_cheap():
    from _imports import loaded_by

    assert loaded_by("import napari_itaclip.llm", ("torch", "open_clip", "qtpy", "napari")) == []
