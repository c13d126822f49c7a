"""Built-in domain plugins, installed as ``mini_internvl_adapt.domains`` (see pyproject.toml's package-dir)."""
