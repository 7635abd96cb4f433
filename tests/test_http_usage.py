"""The HTTP backend's reading of a server's answer: token counts from `usage`, finish reasons as
the server said them. A scripted OpenAI-compatible server on 127.0.0.1 (no model needed)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cai.config import EngineConfig
from cai.engine.base import Sampling


class WordTokenizer:
    """Whitespace tokens, so local counts are easy to tell from the server's."""

    chat_template = "words"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}

    def apply_chat_template(self, conversation, tokenize=False, add_generation_prompt=True):
        return " ".join(m["content"] for m in conversation)


class _Replies(list):
    seen: list[tuple[str, dict]]


@pytest.fixture
def server():
    """Answers /models, and /completions with the reply a test puts in `replies`; records each
    request (path, body) in `seen`."""
    replies: _Replies = _Replies()
    seen: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def _send(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._send({"data": [{"id": "m"}]})

        def do_POST(self):  # noqa: N802
            seen.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            reply = replies.pop(0)
            if isinstance(reply, tuple):  # (status, body): an error answer
                self.send_error(reply[0], explain=reply[1])
                return
            self._send(reply)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    replies.seen = seen
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", replies
    httpd.shutdown()


def engine(base_url):
    from cai.engine.http import HTTPEngine

    return HTTPEngine(EngineConfig(backend="http", model="m", base_url=base_url, max_retries=0), WordTokenizer())


def choice(text, finish, index=0):
    return {"index": index, "text": text, "finish_reason": finish}


# Already-rendered text (the word tokenizer has no chat template to render a conversation with).
PROMPT = ["one two three"]


def test_token_counts_come_from_the_servers_usage(server):
    url, replies = server
    replies.append({"choices": [choice("a b", "stop")], "usage": {"prompt_tokens": 11, "completion_tokens": 7}})
    (c,) = engine(url).generate(PROMPT, Sampling(max_tokens=8))
    assert (c.prompt_tokens, c.completion_tokens, c.finish_reason) == (11, 7, "stop")
    # The prompt went as token ids to /completions (never as text the server would tokenize).
    path, body = replies.seen[0]
    assert path.endswith("/completions") and "chat" not in path and body["prompt"] == [0, 1, 2]


def test_without_usage_the_counts_are_local(server):
    url, replies = server
    replies.append({"choices": [choice("a b", "length")]})
    (c,) = engine(url).generate(PROMPT, Sampling(max_tokens=2))
    assert (c.prompt_tokens, c.completion_tokens, c.finish_reason) == (3, 2, "length")


@pytest.mark.parametrize(("sent", "kept"), [("abort", "abort"), ("error", "error"), (None, "unknown"),
                                            ("content_filter", "content_filter")])
def test_other_finish_reasons_are_kept_never_mapped_to_stop(server, sent, kept):
    url, replies = server
    replies.append({"choices": [choice("a half", sent)], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    (c,) = engine(url).generate(PROMPT, Sampling(max_tokens=8))
    assert c.finish_reason == kept


def test_several_choices_keep_their_order_and_own_counts(server):
    url, replies = server
    replies.append({"choices": [choice("x y z", "stop", 1), choice("x", "abort", 0)],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    outs = engine(url).generate(PROMPT, Sampling(max_tokens=8, n=2))
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in outs] == [("x", 1, "abort"), ("x y z", 3, "stop")]


def test_a_server_that_refuses_token_id_prompts_gets_a_fix(server):
    """cai sends token ids, never text (content must stay text): a server that takes only text
    prompts answers 400, and the error says what to serve instead."""
    from cai.errors import EngineError

    url, replies = server
    replies.append((400, "prompt must be a string"))
    with pytest.raises(EngineError, match="token-id prompt") as e:
        engine(url).generate(PROMPT, Sampling(max_tokens=4))
    assert "vllm serve" in e.value.fix
