"""The GPT score's judge: an OpenAI-compatible chat endpoint or a local transformers model, with the official prompt."""

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

from mini_internvl_adapt.errors import DomainError

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


class JudgeError(DomainError):
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


class LocalJudge:
    """Rates answers 0-100 with a local transformers chat model (a folder; never remote code).

    Generation is greedy, so scores are reproducible (the official judge samples at temperature 0.6).

    Args:
        path: A local causal-LM folder (config.json, safetensors weights, tokenizer).
        max_new_tokens: Longest reply; a score needs only a few tokens.
        batch_size: Answers rated per generate call.
    """

    def __init__(self, path: str | Path, max_new_tokens: int = 8, batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = str(path)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                self.path, local_files_only=True, use_safetensors=True
            )
        except ValueError as e:  # transformers lists every causal-LM config class: one line is enough
            if "Unrecognized configuration class" not in str(e):
                raise
            raise JudgeError(
                f"local judge {self.path}: not a causal language model folder (a chat LLM such as "
                "Qwen2.5-Instruct; a vision-language checkpoint is not one)"
            ) from None
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)  # type: ignore[arg-type]  # transformers' .to decorator stubs take a model
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def _prompt(self, answer: str, ground_truth: str) -> str:
        messages = [
            {"role": "system", "content": SYSTEM_MESSAGE},
            {"role": "user", "content": judge_prompt(answer, ground_truth)},
        ]
        if getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        return f"{SYSTEM_MESSAGE}\n{messages[1]['content']}\n"

    def rate_many(self, pairs: Sequence[tuple[str, str]], workers: int = 1) -> list[float]:
        """Scores of (answer, ground truth) pairs in order; raises JudgeError for a reply without a number."""
        import torch

        scores: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            prompts = [self._prompt(a, g) for a, g in pairs[start : start + self.batch_size]]
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
            with torch.inference_mode():
                out = self.model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            replies = self.tokenizer.batch_decode(
                out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for reply in replies:
                match = _NUMBER.search(_THINK.sub("", reply))
                if match is None:
                    raise JudgeError(f"local judge {self.path} replied without a number: '{reply[:200]}'")
                scores.append(min(100.0, max(0.0, float(match.group(0)))))
        return scores

    def rate(self, answer: str, ground_truth: str) -> float:
        """One judge score in [0, 100]."""
        return self.rate_many([(answer, ground_truth)])[0]


def make_judge(spec: str, model: str | None = None) -> OpenAIJudge | LocalJudge:
    """A judge from ``--judge``: an endpoint URL, a local model folder, or a model name served by OpenAI.

    A model name (not a URL, not a folder) is sent to OPENAI_BASE_URL (default: OpenAI's API).
    """
    if spec.startswith(("http://", "https://")):
        return OpenAIJudge(spec, model or DEFAULT_MODEL)
    if Path(spec).is_dir():
        return LocalJudge(spec)
    base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    return OpenAIJudge(base, model or spec)
