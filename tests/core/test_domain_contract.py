"""Every shipped domain honours the plugin contract. Adding a domain adds one row to DOMAINS."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import read_samples
from mini_internvl_adapt.registry import Domain, available_domains, get_domain, register_domain

REPO = Path(__file__).resolve().parents[2]

# One row per shipped domain: (entry-point name, package folder under domains/, doc page).
DOMAINS = [
    ("driving", "driving", "docs/domains/driving.md"),
    ("medical", "medical", "docs/domains/medical.md"),
    ("remote-sensing", "remote_sensing", "docs/domains/remote-sensing.md"),
]


@pytest.mark.parametrize(("name", "folder", "doc"), DOMAINS)
def test_domain_is_registered_and_documented(name: str, folder: str, doc: str) -> None:
    assert name in available_domains()
    domain = get_domain(name)
    assert isinstance(domain, Domain)
    assert domain.name == name and domain.tasks
    assert (REPO / "domains" / folder / "__init__.py").is_file()
    assert (REPO / doc).is_file(), f"{doc} is missing"
    for hook in ("add_convert_arguments", "add_score_arguments"):
        parser = argparse.ArgumentParser()
        getattr(domain, hook)(parser)  # must add options without clashing with the CLI's own
        clashing = {"--source", "--out", "--data", "--predictions", "--domain"} & set(
            parser._option_string_actions
        )
        assert not clashing


@pytest.mark.parametrize(("name", "folder", "doc"), DOMAINS)
def test_demo_converts_to_train_and_test(name: str, folder: str, doc: str, tmp_path: Path) -> None:
    domain = get_domain(name)
    source = domain.demo_source()
    assert source.exists()
    report = domain.convert(source, tmp_path / "ds", **domain.demo_convert_options())
    assert isinstance(report, ConversionReport)
    assert report.read == report.converted + len(report.skipped)
    for split in ("train", "test"):
        samples = read_samples(tmp_path / "ds" / f"{split}.jsonl")
        assert samples, f"the {name} demo gives no {split} samples"
        assert all(s.domain == name and s.task in domain.tasks for s in samples)
    # Scoring the references against themselves is the best possible result for every metric.
    test = read_samples(tmp_path / "ds" / "test.jsonl")
    scores = domain.score(test, {s.id: s.answer for s in test})
    assert isinstance(scores, dict) and scores


def test_runtime_registration_and_unknown_domain_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from mini_internvl_adapt import registry

    monkeypatch.setattr(registry, "_registered", {})

    class Toy:
        name = "toy"
        tasks = ("toy-qa",)

        def convert(self, source: Path, out: Path, **options: object) -> ConversionReport:
            return ConversionReport(domain="toy", source=str(source))

        def score(self, samples: object, predictions: object, **options: object) -> dict[str, float]:
            return {}

    register_domain("toy", Toy)
    assert "toy" in available_domains() and get_domain("toy").tasks == ("toy-qa",)
    with pytest.raises(KeyError, match="unknown domain 'nope'; installed domains: .*driving"):
        get_domain("nope")
