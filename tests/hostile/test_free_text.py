"""Converters escape the template's special strings in free text (one rule in data_format), report each
rewrite in report.json, and write datasets their own reader accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mini_internvl_adapt.cli import main
from mini_internvl_adapt.data_format import (
    SPECIAL_STRINGS,
    ConversionReport,
    clean_free_text,
    special_strings,
)
from mini_internvl_adapt.data_format.samples import IMAGE_PLACEHOLDER, read_samples
from mini_internvl_adapt.models.templates import IMG_CONTEXT, IMG_END, IMG_START, TEMPLATES
from mini_internvl_adapt.models.tokenizer import INTERNVL_SPECIAL_TOKENS


def test_the_rule_covers_every_special_string_of_the_models() -> None:
    chat = set()
    for template in TEMPLATES.values():
        chat |= set(special_strings(f"{template.user_role}{template.assistant_role}{template.sep}"))
    assert {"<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|end|>"} <= chat
    for token in [
        IMAGE_PLACEHOLDER,
        IMG_START,
        IMG_END,
        IMG_CONTEXT,
        *INTERNVL_SPECIAL_TOKENS,
        *chat,
        "<|endoftext|>",
    ]:
        cleaned, changed = clean_free_text(f"a {token} b")
        assert changed and token not in cleaned and special_strings(cleaned) == [], token
    assert set(SPECIAL_STRINGS) >= {
        "<image>",
        "<ref>",
        "</ref>",
        "<box>",
        "</box>",
        "<quad>",
        "<IMG_CONTEXT>",
    }


def test_the_rule_keeps_everything_else() -> None:
    text = "a<b and c>d, <c1,CAM_FRONT,714.2,500.0>, x < y, <|not a token|>, <<image>image>"
    cleaned, changed = clean_free_text(text)
    assert (
        changed
        and cleaned == "a<b and c>d, <c1,CAM_FRONT,714.2,500.0>, x < y, <|not a token|>, << image>image>"
    )
    assert clean_free_text("nothing special") == ("nothing special", False)
    report = ConversionReport("d", "s")
    assert report.free_text("<box>x</box>", "src:3", "id7") == "< box>x< /box>"
    assert report.to_json()["rewritten"] == 1
    assert report.to_json()["rewrites"] == [
        {"source": "src:3", "id": "id7", "reason": "special string(s) <box>, </box> escaped as '< ...>'"}
    ]


def _converted(argv: list[str], out: Path) -> tuple[dict, list]:
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    samples = [s for split in report["samples"] for s in read_samples(out / f"{split}.jsonl")]
    return report, samples


@pytest.mark.parametrize("domain", ["medical", "driving", "remote-sensing"])
def test_converters_escape_free_text(domain: str, hostile: dict[str, Path], tmp_path: Path) -> None:
    demos = Path(__file__).resolve().parents[2] / "domains"
    argv = {
        "medical": ["--source", str(hostile["special_medical"]), "--workers", "0"],
        "driving": [
            "--source",
            str(hostile["special_driving"]),
            "--image-root",
            str(demos / "driving/demo/QA"),
        ]
        + ["--tasks", "qa,grounding"],
        "remote-sensing": ["--source", str(hostile["special_remote_sensing"]), "--format", "scene"]
        + ["--bands", "3,2,1", "--chip-size", "128", "--count-questions"],
    }[domain]
    report, samples = _converted(["convert", "--domain", domain, *argv], tmp_path / "ds")
    assert samples and report["rewritten"] > 0
    assert all("escaped as" in r["reason"] for r in report["rewrites"])
    texts = ["".join(t.value for t in sample.conversations) for sample in samples]
    for sample, text in zip(samples, texts):  # read back: one placeholder per image, no stray special string
        assert text.count(IMAGE_PLACEHOLDER) == len(sample.images)
        leftover = set(special_strings(text)) - {IMAGE_PLACEHOLDER, "<ref>", "</ref>", "<box>", "</box>"}
        assert not leftover, (sample.id, leftover)
    assert any("< image>" in text for text in texts)
