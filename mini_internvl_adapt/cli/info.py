"""`adapt domains` and `adapt models`: what is installed and which models are known."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mini_internvl_adapt.errors import MissingDependencyError
from mini_internvl_adapt.registry import available_domains, get_domain


def cmd_domains(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(prog="adapt domains", description="List installed domains.").parse_args(argv)
    for name in available_domains():
        try:
            domain = get_domain(name)
            print(f"{name:16s} tasks: {', '.join(domain.tasks)}")
        except MissingDependencyError as e:
            print(f"{name:16s} unavailable: {e}")
    return 0


def cmd_models(argv: Sequence[str]) -> int:
    from mini_internvl_adapt.models.variants import VARIANTS

    parser = argparse.ArgumentParser(prog="adapt models", description="List known model variants.")
    parser.add_argument(
        "--published", action="store_true", help="list the published domain-adapted checkpoints"
    )
    args = parser.parse_args(argv)
    if args.published:
        from mini_internvl_adapt.models.published import format_published_table

        print(format_published_table())
        return 0
    print(f"{'name':24s} {'llm family':10s} {'template':16s} hub id")
    for v in VARIANTS.values():
        print(f"{v.name:24s} {v.llm_family:10s} {v.template:16s} {v.hub_id or '(built locally)'}")
    return 0
