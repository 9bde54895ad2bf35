"""Pairwise judging through an OpenAI-compatible chat-completions endpoint (GPT-4 as in the paper, or a
local vLLM / llama.cpp server), in both orders to cancel position bias.

Configuration comes from the environment:
  NEFTLIB_JUDGE_BASE_URL  endpoint root (default https://api.openai.com/v1)
  NEFTLIB_JUDGE_MODEL     model name (default gpt-4)
  NEFTLIB_JUDGE_API_KEY   API key, falling back to OPENAI_API_KEY; read only from the environment and
                          never written to the cache, results, logs, error messages or repr.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import random
import re
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable

from neftlib.base.io import read_json, write_json
from neftlib.base.progress import tqdm
from neftlib.evaluation.judge import JUDGE_PROMPT, Judgments, plan_both_orders

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4"
KEY_VARS = ("NEFTLIB_JUDGE_API_KEY", "OPENAI_API_KEY")
MISSING_KEY = ("set NEFTLIB_JUDGE_API_KEY (or OPENAI_API_KEY) to the judge endpoint's API key "
               "(any non-empty value for a local server that checks none)")

# A whole reply that is one verdict: optional "The better answer is" / "Answer:", then the letter, then
# only punctuation or markdown. Anything else (e.g. "A tie", "A is better than B") is not a judgment.
_VERDICT = re.compile(r"^[\W_]*(?:(?i:(?:the\s+)?(?:better\s+)?answer(?:\s+is)?)[\s:]*)?[\W_]*([AB])"
                      r"(?:\s+(?i:is\s+better))?[\W_]*$")
_HINTS = {
    401: "check NEFTLIB_JUDGE_API_KEY (or OPENAI_API_KEY)",
    403: "the key has no access to this model: check NEFTLIB_JUDGE_API_KEY and NEFTLIB_JUDGE_MODEL",
    404: "check NEFTLIB_JUDGE_BASE_URL and NEFTLIB_JUDGE_MODEL",
}


class JudgeAPIError(RuntimeError):
    """The judge endpoint failed for good, or replied with something that is not a judgment."""


class _Transient(Exception):
    """A failure worth retrying (timeout, dropped connection, HTTP 429 / 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _api_key() -> str:
    for var in KEY_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    raise JudgeAPIError(MISSING_KEY)


def _redact(text: str) -> str:
    """Remove the key from text that may echo it (a server's error body, a reply)."""
    for var in KEY_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            text = text.replace(value, "[redacted]")
    return text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def parse_verdict(text: str | None) -> str | None:
    """'A' or 'B' when the whole reply is one verdict ("A", "Answer B", "**B**", "B."), else None."""
    if not isinstance(text, str):  # null content (a refusal) or content parts: not a plain verdict
        return None
    match = _VERDICT.match(text.strip())
    return match.group(1) if match else None


def _letter(token: str) -> str:
    return token.strip().strip("*_.:()[]\"'")


def prob_first_better(reply: dict[str, Any]) -> float | None:
    """P(A) / (P(A) + P(B)) from the reply's logprobs at the verdict token, 1.0 / 0.0 from the text alone,
    None when the reply is not a judgment."""
    choice = (reply.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content")
    verdict = parse_verdict(text)
    if verdict is None:
        return None
    for pos in ((choice.get("logprobs") or {}).get("content") or []):
        if _letter(pos.get("token", "")) != verdict:
            continue
        mass = {"A": 0.0, "B": 0.0}
        for alt in pos.get("top_logprobs") or []:
            letter = _letter(alt.get("token", ""))
            if letter in mass and isinstance(alt.get("logprob"), (int, float)):
                mass[letter] += math.exp(alt["logprob"])
        if mass["A"] > 0 and mass["B"] > 0:
            return mass["A"] / (mass["A"] + mass["B"])
        break
    return 1.0 if verdict == "A" else 0.0


class OpenAIJudge:
    """Pairwise judge over an OpenAI-compatible /chat/completions endpoint; same interface as LocalJudge."""

    def __init__(self, model: str | None = None, base_url: str | None = None, *, max_tokens: int = 8,
                 logprobs: bool = True, timeout: float = 60.0, max_retries: int = 6, parse_retries: int = 2,
                 on_unparseable: str = "error", backoff: float = 1.0, max_backoff: float = 60.0,
                 seed: int = 0, sleep: Callable[[float], None] = time.sleep):
        if on_unparseable not in ("error", "draw"):
            raise ValueError(f"on_unparseable must be 'error' or 'draw', got {on_unparseable!r}")
        _api_key()  # refuse now, before anything is generated or sent
        self.model = model or os.environ.get("NEFTLIB_JUDGE_MODEL", "").strip() or DEFAULT_MODEL
        base = (base_url or os.environ.get("NEFTLIB_JUDGE_BASE_URL", "").strip() or DEFAULT_BASE_URL).rstrip("/")
        self.base_url = base
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.name = f"openai:{self.model}"
        self.max_tokens, self.logprobs, self.timeout = max_tokens, logprobs, timeout
        self.max_retries, self.parse_retries, self.on_unparseable = max_retries, parse_retries, on_unparseable
        self.backoff, self.max_backoff, self.sleep = backoff, max_backoff, sleep
        self._rng = random.Random(seed)  # seeded jitter: the same run waits the same way
        self.stats: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r})"

    def prompt(self, instruction: str, a: str, b: str) -> str:
        return JUDGE_PROMPT.format(instruction=instruction, a=a, b=b)

    def _body(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                                "temperature": 0, "max_tokens": self.max_tokens}
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=5)
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One HTTP request; transient failures raise _Transient, permanent ones JudgeAPIError."""
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {_api_key()}"})
        self.stats["requests"] = self.stats.get("requests", 0) + 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = self._server_message(err)
            if err.code == 429 or err.code >= 500:
                raise _Transient(f"HTTP {err.code}{detail}", _retry_after(err.headers.get("Retry-After"))) from None
            hint = _HINTS.get(err.code, "the request was refused")
            raise JudgeAPIError(f"judge endpoint {self.url} answered HTTP {err.code}{detail}: {hint}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise _Transient(f"{type(err).__name__}: {_redact(str(err))}") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, ConnectionError)):
                raise _Transient(f"{type(err.reason).__name__}: {_redact(str(err.reason))}") from None
            raise JudgeAPIError(f"cannot reach judge endpoint {self.url}: {_redact(str(err.reason))}; "
                                "check NEFTLIB_JUDGE_BASE_URL") from None
        try:
            reply = json.loads(raw)
        except ValueError:
            raise _Transient(f"reply is not JSON: {_redact(raw[:200].decode(errors='replace'))!r}") from None
        if not isinstance(reply, dict) or not isinstance((reply.get("choices") or [None])[0], dict):
            raise _Transient(f"reply has no choices: {_redact(json.dumps(reply)[:200])}")
        return reply

    @staticmethod
    def _server_message(err: urllib.error.HTTPError) -> str:
        try:
            text = err.read().decode(errors="replace")
        except OSError:
            return ""
        try:
            text = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        text = _redact(str(text)).strip()
        return f" ({text[:300]})" if text else ""

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:  # the server said how long to wait: do that
            return retry_after
        base = min(self.max_backoff, self.backoff * 2 ** attempt)
        return base * (0.5 + 0.5 * self._rng.random())  # jitter spreads out clients that failed together

    def _request(self, prompt: str) -> dict[str, Any]:
        """POST with retries and exponential backoff on transient failures."""
        body = self._body(prompt)
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body)
            except _Transient as err:
                if attempt == self.max_retries:
                    raise JudgeAPIError(f"judge endpoint {self.url} failed {attempt + 1} times in a row "
                                        f"(last: {err}); try again later or raise max_retries") from None
                self.stats["retries"] = self.stats.get("retries", 0) + 1
                self.sleep(self._delay(attempt, err.retry_after))
        raise AssertionError("unreachable")

    def _judge_one(self, prompt: str, index: int, order: str) -> float | None:
        """P(first answer better) for one prompt; None for a draw by on_unparseable="draw"."""
        text = None
        for _ in range(self.parse_retries + 1):
            reply = self._request(prompt)
            p = prob_first_better(reply)
            if p is not None:
                return p
            text = ((reply["choices"][0].get("message") or {}).get("content"))
        self.stats["unparseable"] = self.stats.get("unparseable", 0) + 1
        if self.on_unparseable == "draw":
            return None
        shown = _redact(str(text))
        shown = shown if len(shown) <= 200 else shown[:200] + "..."
        raise JudgeAPIError(f"judge reply for instruction {index} ({order}) is not a judgment (A or B) after "
                            f"{self.parse_retries + 1} tries: {shown!r}; pass on_unparseable='draw' to count it "
                            "as a draw")

    def judge_orders(self, instructions: list[str], outputs: list[str], references: list[str], *,
                     cache_path: Path | None = None, progress: bool = True) -> Judgments:
        """Each pair judged in both orders; whole answers are sent (an endpoint whose context cannot hold them
        refuses the request, and the error says so), so nothing is clipped.

        Judgments are cached by hash of (model, prompt) at `cache_path` after every request, so nothing is
        paid for twice and an interrupted run resumes. Unparseable replies counted as draws are not cached."""
        self.stats = {"requests": 0, "retries": 0, "cached": 0, "unparseable": 0}
        cache = read_json(cache_path) if cache_path and Path(cache_path).exists() else {}
        keys, jobs = plan_both_orders(instructions, outputs, references, self.prompt, self.name, cache)
        self.stats["cached"] = 2 * len(keys) - len(jobs)
        draws: dict[str, float] = {}
        for key, (text, i, order) in tqdm(jobs.items(), desc=self.name, disable=not progress):
            p = self._judge_one(text, i, order)
            if p is None:
                draws[key] = 0.5
                continue
            cache[key] = float(p)
            if cache_path:  # saved after every judgment: an interrupted run resumes where it stopped
                write_json(cache_path, cache)
        return Judgments.from_cache(keys, {**cache, **draws})

    def judge(self, instructions: list[str], outputs: list[str], references: list[str], *,
              cache_path: Path | None = None, progress: bool = True) -> list[float]:
        """alpaca_eval-style preferences in [1, 2] (2 = the model's output is better), averaged over both orders."""
        return self.judge_orders(instructions, outputs, references, cache_path=cache_path, progress=progress).soft()
