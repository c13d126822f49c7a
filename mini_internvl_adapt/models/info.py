"""What a checkpoint says about itself (ModelInfo), saved next to its weights as the sidecar file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

SIDECAR = "mini_internvl_adapt.json"


@dataclass
class ModelInfo:
    """What a checkpoint says about itself; saved next to the weights as ``mini_internvl_adapt.json``.

    Attributes:
        llm_family: "qwen2", "internlm2", "phi3" or "llama" (the LLM it was built on).
        template: Official chat template name.
        layout: The layout it was loaded from: "hf" or "original".
        image_size: Tile size in pixels.
        num_image_token: Image tokens per tile (256 for 448 px, patch 14, pixel shuffle 0.5).
        min_dynamic_patch: Minimum number of tiles.
        max_dynamic_patch: Maximum number of tiles.
        use_thumbnail: Whether a thumbnail tile follows multi-tile images.
        source: Where it came from (name, path or a description).
    """

    llm_family: str
    template: str
    layout: str
    image_size: int = 448
    num_image_token: int = 256
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    use_thumbnail: bool = True
    source: str = ""

    def to_json(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ModelInfo:
        """Build from a dict; unknown keys (written by newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        missing = {"llm_family", "template", "layout"} - set(d)
        if missing:
            raise ValueError(f"model info lacks {', '.join(sorted(missing))}: {d}")
        return cls(**{k: v for k, v in d.items() if k in known})
