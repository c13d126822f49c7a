"""The Domain plugin contract and the registry that finds plugins through entry points.

A domain knows its raw data and its metrics; it never touches tokens, templates or the model.
Built-in and third-party domains register the same way, through the entry-point group
``mini_internvl_adapt.domains``; `register_domain` also registers one at run time (tests, notebooks).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.errors import UnknownDomainError

ENTRY_POINT_GROUP = "mini_internvl_adapt.domains"


@runtime_checkable
class Domain(Protocol):
    """What every domain plugin provides.

    Optional hooks (looked up with getattr, so a minimal plugin needs none of them):
        ``add_convert_arguments(parser)`` / ``add_score_arguments(parser)``: domain-specific CLI options,
        passed to `convert` / `score` as keyword arguments.
        ``demo_source() -> Path``: the bundled synthetic raw sample used by ``adapt --domain D --demo``.
        ``demo_convert_options() -> dict``: options `convert` needs for the demo sample.
    """

    name: str
    tasks: tuple[str, ...]

    def convert(self, source: Path, out: Path, **options: Any) -> ConversionReport:
        """Convert raw domain data under `source` into a shared-format dataset folder `out`."""
        ...

    def score(
        self, samples: Iterable[Sample], predictions: Mapping[str, str], **options: Any
    ) -> dict[str, Any]:
        """Score predicted answers (sample id -> text) against the samples' references."""
        ...


_registered: dict[str, Callable[[], Domain]] = {}


def register_domain(name: str, factory: Callable[[], Domain]) -> None:
    """Register a domain at run time (entry points are the normal way for installed plugins)."""
    _registered[name] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_domains() -> list[str]:
    """Names of every domain registered at run time or through an entry point."""
    return sorted(set(_registered) | set(_entry_points()))


def get_domain(name: str) -> Domain:
    """Instantiate the domain called `name`.

    Raises:
        UnknownDomainError: No such domain; the message lists the installed ones.
        MissingDependencyError: The domain's optional dependency is missing.
    """
    if name in _registered:
        return _registered[name]()
    eps = _entry_points()
    if name not in eps:
        raise UnknownDomainError(
            f"unknown domain '{name}'; installed domains: {', '.join(available_domains()) or 'none'}"
        )
    factory = eps[name].load()
    domain = factory()
    if not isinstance(domain, Domain):
        raise TypeError(f"entry point '{name}' did not produce a Domain (needs name, tasks, convert, score)")
    return domain


def add_domain_arguments(domain: Domain, parser: argparse._ActionsContainer, hook: str) -> None:
    """Let a domain add its own options to a subcommand's parser, when it has the hook."""
    add = getattr(domain, hook, None)
    if add is not None:
        add(parser)
