"""The GPT score's judge: an OpenAI-compatible chat endpoint, called with the official DriveLM prompt."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SYSTEM_MESSAGE = "an evaluator who rates my answer based on the correct answer"
PROMPT = (
    "Rate my answer based on the correct answer out of 100, with higher scores indicating that the answer is "
    "closer to the correct answer, and you should be accurate to single digits like 62, 78, 41,etc. "
    "Output the number only"
)
DEFAULT_MODEL = "gpt-3.5-turbo"  # the official judge
TEMPERATURE = 0.6
_THINK = re.compile(r"<think>[\s\S]*?</think>\s*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class JudgeError(RuntimeError):
    """The judge could not be reached or gave no number."""


def judge_prompt(answer: str, ground_truth: str) -> str:
    """The official user message: the instruction, then the correct answer, then the answer to rate."""
    return PROMPT + "This is the correct answer: " + ground_truth + "This is my answer: " + answer


class OpenAIJudge:
    """Rates answers 0-100 through an OpenAI-compatible ``/chat/completions`` endpoint (urllib only).

    Args:
        url: The endpoint's base URL (``http://host:8000/v1``) or the full ``.../chat/completions`` URL.
        model: Model name sent in the request.
        api_key: Bearer token (default: the OPENAI_API_KEY environment variable, when set).
        timeout: Seconds per request.
        retries: Attempts per answer on network errors and 5xx replies.
    """

    def __init__(
        self,
        url: str,
        model: str = DEFAULT_MODEL,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
    ) -> None:
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.retries = retries

    def rate(self, answer: str, ground_truth: str) -> float:
        """One judge score in [0, 100]; raises JudgeError when the reply holds no number."""
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_MESSAGE},
                {"role": "user", "content": judge_prompt(answer, ground_truth)},
            ],
            "temperature": TEMPERATURE,
            "max_tokens": 3000,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        reply = self._send(request)
        try:
            content = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge at {self.url} sent an unexpected reply: {str(reply)[:200]}") from None
        match = _NUMBER.search(_THINK.sub("", content))
        if match is None:
            raise JudgeError(f"judge at {self.url} replied without a number: '{content[:200]}'")
        return min(100.0, max(0.0, float(match.group(0))))

    def _send(self, request: urllib.request.Request) -> dict:
        for attempt in range(self.retries):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                if e.code < 500 or attempt == self.retries - 1:
                    raise JudgeError(f"judge at {self.url} answered HTTP {e.code}: {e.reason}") from None
            except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
                if attempt == self.retries - 1:
                    raise JudgeError(f"judge at {self.url} not reachable: {e}") from None
            time.sleep(0.5 * 2**attempt)
        raise JudgeError(f"judge at {self.url} not reachable")

    def rate_many(self, pairs: Sequence[tuple[str, str]], workers: int = 8) -> list[float]:
        """Scores of (answer, ground truth) pairs, requests sent in parallel, order kept."""
        if not pairs:
            return []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(lambda p: self.rate(*p), pairs))


def make_judge(spec: str, model: str | None = None) -> OpenAIJudge:
    """A judge from ``--judge``: an endpoint URL, or a model name served by OpenAI (OPENAI_BASE_URL).

    Raises:
        ValueError: `spec` is a local path: the domain never loads models; serve it with an
            OpenAI-compatible server (vLLM, ``transformers serve``) and pass that URL.
    """
    if spec.startswith(("http://", "https://")):
        return OpenAIJudge(spec, model or DEFAULT_MODEL)
    if Path(spec).exists():
        raise ValueError(
            f"--judge {spec}: a local model folder; serve it with an OpenAI-compatible server "
            "(e.g. `vllm serve` or `transformers serve`) and pass --judge http://127.0.0.1:8000/v1 --judge-model NAME"
        )
    base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    return OpenAIJudge(base, model or spec)
