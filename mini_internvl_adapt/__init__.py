"""mini-internvl-adapt: adapt Mini-InternVL vision-language models to new domains."""

__version__ = "0.1.0"
