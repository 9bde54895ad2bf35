"""OpenAIJudge against a fake OpenAI-compatible server on 127.0.0.1: nothing leaves the machine, no real sleeps."""
from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

from neftlib.evaluation.judge import JUDGE_PROMPT
from neftlib.evaluation.judge_api import JudgeAPIError, OpenAIJudge, _retry_after, parse_verdict, prob_first_better

KEY = "sk-test-TOPSECRET-0123456789"
INS = ["Name a colour.", "Add 2 and 2.", "Say hi."]
OUTS = ["GOOD red", "GOOD 4", "hello"]
REFS = ["blue", "five", "GOOD hi"]


def reply(text: str | None, logprobs: list[dict] | None = None) -> dict:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


def top(token: str, **probs: float) -> dict:
    """One logprobs position: the sampled token and the alternatives with their probabilities."""
    alts = [{"token": t.replace("_", " "), "logprob": math.log(p), "bytes": None} for t, p in probs.items()]
    return {"token": token, "logprob": alts[0]["logprob"], "bytes": None, "top_logprobs": alts}


def answer_a(body: dict) -> str:
    """The text shown as Answer A in the judging prompt of a request."""
    content = body["messages"][0]["content"]
    return content.split("Answer A:\n", 1)[1].split("\n\nAnswer B:", 1)[0]


def prefers_good(body: dict) -> str:
    return "A" if "GOOD" in answer_a(body) else "B"


class FakeServer:
    """Chat-completions stand-in: `script(n, body)` -> (status, headers, payload) for the n-th request."""

    def __init__(self, script: Callable[[int, dict], tuple[int, dict, Any]]):
        self.script, self.requests = script, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, headers, payload = server.script(len(server.requests) - 1, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left: expected in the timeout test

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        # a short poll interval so that shutdown() at teardown returns at once
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("NEFTLIB_JUDGE_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("NEFTLIB_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("NEFTLIB_JUDGE_MODEL", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def serve(env):
    servers = []

    def start(script: Callable[[int, dict], tuple[int, dict, Any]]) -> FakeServer:
        servers.append(FakeServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def make_judge(server: FakeServer, sleeps: list | None = None, **kw: Any) -> OpenAIJudge:
    sink = sleeps if sleeps is not None else []
    return OpenAIJudge(base_url=server.url, timeout=5, sleep=sink.append, **kw)


def ok(text_of: Callable[[dict], str]) -> Callable[[int, dict], tuple[int, dict, Any]]:
    return lambda n, body: (200, {}, reply(text_of(body)))


@pytest.mark.parametrize("text, verdict", [
    ("A", "A"), ("Answer A", "A"), ("**B**", "B"), ("B.", "B"), ("The better answer is A.", "A"),
    ("Answer: B", "B"), (" B\n", "B"), ("A tie", None), ("A is better than B", None), ("a", None),
    ("Neither", None), ("AB", None), ("I think A", None), ("", None), (None, None)])
def test_parse_verdict_is_strict(text, verdict):
    assert parse_verdict(text) == verdict


def test_request_shape_and_position_bias_cancels(serve):
    server = serve(ok(lambda body: "A"))
    judge = make_judge(server, model="gpt-4-test")
    prefs = judge.judge(INS[:1], OUTS[:1], REFS[:1], progress=False)
    assert prefs == [1.5]  # always "A": first-position preference cancels out exactly
    assert len(server.requests) == 2
    first, second = server.requests
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == f"Bearer {KEY}"
    body = first["body"]
    assert body["model"] == "gpt-4-test" and body["temperature"] == 0 and 0 < body["max_tokens"] <= 16
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["messages"] == [{"role": "user", "content": JUDGE_PROMPT.format(
        instruction=INS[0], a=OUTS[0], b=REFS[0])}]
    assert second["body"]["messages"][0]["content"] == JUDGE_PROMPT.format(instruction=INS[0], a=REFS[0], b=OUTS[0])
    assert judge.name == "openai:gpt-4-test"


def test_both_orders_averaged(serve):
    server = serve(ok(prefers_good))
    prefs = make_judge(server).judge(INS, OUTS, REFS, progress=False)
    assert prefs == [2.0, 2.0, 1.0]
    assert len(server.requests) == 6


def test_discrete_votes_per_order_and_soft_probabilities(serve):
    # confident about the GOOD answer in both orders, except that the second prompt's reference-first order
    # leans to A (the reference) at 0.7: a draw by votes, a soft preference of 1 + (0.9 + 0.3) / 2 = 1.6
    def script(n, body):
        content = body["messages"][0]["content"]
        leaning = "Add 2 and 2." in content and answer_a(body) == REFS[1]
        if leaning:
            return 200, {}, reply("A", [top("A", A=0.7, B=0.3)])
        good = prefers_good(body)
        return 200, {}, reply(good, [top(good, **{good: 0.9, "AB".replace(good, ""): 0.1})])

    judged = make_judge(serve(script)).judge_orders(INS, OUTS, REFS, progress=False)
    assert [p for pair in judged.p_model for p in pair] == pytest.approx([0.9, 0.9, 0.9, 0.3, 0.1, 0.1])
    assert judged.discrete() == [2.0, 1.5, 1.0] and judged.soft() == pytest.approx([1.9, 1.6, 1.1])
    assert judged.clipped_output == [False] * 3  # whole answers are sent


def test_config_from_environment(serve, monkeypatch):
    server = serve(ok(lambda body: "B"))
    monkeypatch.setenv("NEFTLIB_JUDGE_BASE_URL", server.url + "/")
    monkeypatch.setenv("NEFTLIB_JUDGE_MODEL", "local-llama")
    monkeypatch.delenv("NEFTLIB_JUDGE_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback")
    judge = OpenAIJudge(sleep=lambda s: None)
    assert judge.name == "openai:local-llama" and judge.url == server.url + "/chat/completions"
    assert judge.judge(INS[:1], OUTS[:1], REFS[:1], progress=False) == [1.5]
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-fallback"
    assert server.requests[0]["body"]["model"] == "local-llama"
    assert OpenAIJudge(model="m2", base_url="http://127.0.0.1:9/v1").name == "openai:m2"
    monkeypatch.delenv("NEFTLIB_JUDGE_BASE_URL")
    monkeypatch.delenv("NEFTLIB_JUDGE_MODEL")
    default = OpenAIJudge()  # nothing is sent at construction
    assert default.url == "https://api.openai.com/v1/chat/completions" and default.name == "openai:gpt-4"


def test_missing_key_refused_before_any_request(serve, monkeypatch):
    server = serve(ok(lambda body: "A"))
    monkeypatch.delenv("NEFTLIB_JUDGE_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "  ")
    with pytest.raises(JudgeAPIError, match=r"set NEFTLIB_JUDGE_API_KEY \(or OPENAI_API_KEY\)"):
        OpenAIJudge(base_url=server.url)
    assert server.requests == []


def test_logprobs_give_soft_preferences(serve):
    def script(n: int, body: dict):
        if answer_a(body) == OUTS[0]:  # model first: "A" with P(A) = 0.9, P(B) = 0.1
            return 200, {}, reply("A", [top("A", A=0.6, B=0.0666667 * 1, _A=0.3, C=0.0333333)])
        # reference first: "**B**", verdict token at position 1, P(A) = 0.3, P(B) = 0.7
        return 200, {}, reply("**B**", [top("**", **{"**": 0.9}), top("B", B=0.7, _A=0.3), top("**", **{"**": 1.0})])

    server = serve(script)
    (pref,) = make_judge(server).judge(INS[:1], OUTS[:1], REFS[:1], progress=False)
    p_model_first = 0.9 / (0.9 + 0.0666667)
    assert pref == pytest.approx(1 + 0.5 * (p_model_first + (1 - 0.3)), abs=1e-6)


def test_logprobs_without_both_letters_fall_back_to_text():
    only_a = reply("A", [top("A", A=0.99, C=0.01)])
    assert prob_first_better(only_a) == 1.0
    assert prob_first_better(reply("B")) == 0.0
    assert prob_first_better(reply("B", [])) == 0.0
    assert prob_first_better(reply(None)) is None


def test_429_then_success_respects_retry_after(serve):
    script = lambda n, body: ((429, {"Retry-After": "7"}, {"error": {"message": "slow down"}}) if n == 0
                              else (200, {}, reply("A")))
    server, sleeps = serve(script), []
    judge = make_judge(server, sleeps)
    assert judge.judge(INS[:1], OUTS[:1], REFS[:1], progress=False) == [1.5]
    assert len(server.requests) == 3 and sleeps == [7.0]
    assert judge.stats["retries"] == 1


def test_retry_after_http_date_and_garbage():
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    assert _retry_after("soon") is None and _retry_after(None) is None and _retry_after("2.5") == 2.5


def test_5xx_until_max_retries_gives_clear_error(serve):
    server, sleeps = serve(lambda n, body: (503, {}, {"error": {"message": "overloaded"}})), []
    with pytest.raises(JudgeAPIError, match=r"failed 4 times in a row \(last: HTTP 503 \(overloaded\)\)"):
        make_judge(server, sleeps, max_retries=3).judge(INS[:1], OUTS[:1], REFS[:1], progress=False)
    assert len(server.requests) == 4 and len(sleeps) == 3
    for attempt, s in enumerate(sleeps):  # exponential backoff, jitter within [0.5, 1] of the step
        assert 0.5 * 2 ** attempt <= s <= 2 ** attempt
    again = []
    with pytest.raises(JudgeAPIError):
        make_judge(server, again, max_retries=3).judge(INS[:1], OUTS[:1], REFS[:1], progress=False)
    assert again == sleeps  # seeded jitter


def test_timeout_is_retried(serve):
    def script(n: int, body: dict):
        if n == 0:
            time.sleep(1.0)  # longer than the client's timeout below
        return 200, {}, reply("A")

    server, sleeps = serve(script), []
    judge = OpenAIJudge(base_url=server.url, timeout=0.3, sleep=sleeps.append)
    assert judge.judge(INS[:1], OUTS[:1], REFS[:1], progress=False) == [1.5]
    assert len(sleeps) == 1


def test_401_fails_at_once_without_the_key(serve):
    # a hostile or verbose server echoing the key back must not put it in our error
    server, sleeps = serve(lambda n, body: (401, {}, {"error": {"message": f"Incorrect API key provided: {KEY}"}})), []
    with pytest.raises(JudgeAPIError, match="HTTP 401.*check NEFTLIB_JUDGE_API_KEY") as info:
        make_judge(server, sleeps).judge(INS[:1], OUTS[:1], REFS[:1], progress=False)
    assert len(server.requests) == 1 and sleeps == []
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert "[redacted]" in str(info.value)


def test_400_fails_at_once(serve):
    server = serve(lambda n, body: (400, {}, b"bad request"))
    with pytest.raises(JudgeAPIError, match=r"HTTP 400 \(bad request\)"):
        make_judge(server).judge(INS[:1], OUTS[:1], REFS[:1], progress=False)
    assert len(server.requests) == 1


def test_unparseable_reply_names_instruction_and_reply(serve):
    long = "I cannot decide between them. " * 20
    server = serve(lambda n, body: (200, {}, reply(long if INS[2] in body["messages"][0]["content"] else "A")))
    with pytest.raises(JudgeAPIError, match=r"instruction 2 \(model first\).*'I cannot decide") as info:
        make_judge(server).judge(INS, OUTS, REFS, progress=False)
    assert "..." in str(info.value) and len(str(info.value)) < 500  # the reply is truncated
    assert len(server.requests) == 4 + 3  # two full pairs, then three tries of the bad one


def test_unparseable_as_draw_is_counted_not_cached(serve, tmp_path):
    def script(n: int, body: dict):
        return 200, {}, reply("A" if answer_a(body) == OUTS[0] else "Both are fine.")

    server = serve(script)
    judge = make_judge(server, on_unparseable="draw", parse_retries=0)
    cache = tmp_path / "cache.json"
    assert judge.judge(INS[:1], OUTS[:1], REFS[:1], cache_path=cache, progress=False) == [1.75]
    assert judge.stats["unparseable"] == 1
    assert list(json.loads(cache.read_text()).values()) == [1.0]  # the draw is asked again next time
    with pytest.raises(ValueError, match="on_unparseable"):
        make_judge(server, on_unparseable="skip")


def test_cache_second_run_makes_no_requests(serve, tmp_path):
    server = serve(ok(prefers_good))
    cache = tmp_path / "judge_cache.json"
    first = make_judge(server).judge(INS, OUTS, REFS, cache_path=cache, progress=False)
    assert len(server.requests) == 6
    again = make_judge(server)
    assert again.judge(INS, OUTS, REFS, cache_path=cache, progress=False) == first
    assert len(server.requests) == 6 and again.stats["cached"] == 6
    stored = json.loads(cache.read_text())
    assert len(stored) == 6 and all(type(v) is float for v in stored.values())
    assert KEY not in cache.read_text()


def test_interrupted_run_resumes_with_the_rest(serve, tmp_path):
    healthy = {"up": True}

    def script(n: int, body: dict):
        if n >= 4 and not healthy["up"]:
            return 500, {}, {"error": {"message": "boom"}}
        return 200, {}, reply(prefers_good(body))

    healthy["up"] = False
    server, cache = serve(script), tmp_path / "judge_cache.json"
    with pytest.raises(JudgeAPIError, match="failed 2 times"):
        make_judge(server, max_retries=1).judge(INS, OUTS, REFS, cache_path=cache, progress=False)
    assert len(json.loads(cache.read_text())) == 4 and len(server.requests) == 6
    healthy["up"] = True
    prefs = make_judge(server).judge(INS, OUTS, REFS, cache_path=cache, progress=False)
    assert prefs == [2.0, 2.0, 1.0]
    assert len(server.requests) == 6 + 2  # only the two judgments the first run never got


def test_key_never_in_repr_or_attributes(serve):
    judge = make_judge(serve(ok(lambda body: "A")))
    assert KEY not in repr(judge) and KEY not in str(judge)
    assert all(KEY not in repr(v) for v in vars(judge).values())


def test_reply_echoing_the_key_is_redacted(serve):
    server = serve(lambda n, body: (200, {}, reply(f"my key is {KEY}")))
    with pytest.raises(JudgeAPIError, match="not a judgment") as info:
        make_judge(server, parse_retries=0).judge(INS[:1], OUTS[:1], REFS[:1], progress=False)
    assert KEY not in str(info.value) and "[redacted]" in str(info.value)


def test_malformed_reply_is_retried_then_reported(serve):
    server = serve(lambda n, body: (200, {}, b"<html>proxy error</html>") if n == 0 else (200, {}, {"choices": []}))
    with pytest.raises(JudgeAPIError, match="failed 3 times.*no choices"):
        make_judge(server, max_retries=2).judge(INS[:1], OUTS[:1], REFS[:1], progress=False)
    assert len(server.requests) == 3
