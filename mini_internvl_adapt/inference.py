"""Evaluation: batched greedy generation on a converted test set, then the domain's own scoring.

The prompt template, tile settings and tokenizer always come from the checkpoint being evaluated
(the run's saved ProcessingConfig, an export's sidecar, or the ModelInfo of a base/published model),
never from library defaults, so inference matches training. Generation is greedy with the KV cache,
left padding and the template's end-of-turn token as the stop token.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mini_internvl_adapt import processing
from mini_internvl_adapt.data_format.samples import GPT, HUMAN, Sample, Turn
from mini_internvl_adapt.models.info import SIDECAR, ModelInfo
from mini_internvl_adapt.models.loading import (
    LoadedModel,
    load_model,
    load_published,
    looks_like_hub_id,
    resolve_model_path,
)
from mini_internvl_adapt.models.published import get_published
from mini_internvl_adapt.models.templates import get_template
from mini_internvl_adapt.models.variants import get_variant
from mini_internvl_adapt.processing.hf_files import stop_token_ids
from mini_internvl_adapt.runs import load_run_model, read_run


@dataclass
class EvalModel:
    """A model ready to answer: the network, its tokenizer and the processing it was trained with.

    Attributes:
        model: An InternVLForConditionalGeneration (or a peft wrapper of one), in eval mode.
        tokenizer: The checkpoint's tokenizer.
        processing: The checkpoint's template, tile and token settings.
        source: What was loaded (path or name), for reports.
    """

    model: Any
    tokenizer: Any
    processing: processing.ProcessingConfig
    source: str


def processing_from(info: ModelInfo, sidecar: Mapping[str, Any] | None = None) -> processing.ProcessingConfig:
    """The processing a checkpoint was trained with.

    Args:
        info: The checkpoint's ModelInfo (template, image_size, num_image_token, tiles, thumbnail).
        sidecar: The checkpoint's ``mini_internvl_adapt.json``; its ``processing`` block (written by runs
            and exports) wins over `info`, since it also records the system message and max tiles used.

    Returns:
        A ProcessingConfig; fields neither source gives keep the library defaults.
    """

    saved = (sidecar or {}).get("processing")
    if isinstance(saved, Mapping):
        return processing.ProcessingConfig.from_json(saved)
    return processing.ProcessingConfig.from_model_info(info)


def _sidecar(path: Path) -> dict[str, Any]:

    file = path / SIDECAR
    if not file.is_file():
        return {}
    data = json.loads(file.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _is_run_dir(path: Path) -> bool:

    return path.is_dir() and (path / "final").is_dir() and (path / SIDECAR).is_file()


def load_eval_model(
    model: str | Path | Any, *, dtype: torch.dtype = torch.float32, device: str | None = None
) -> EvalModel:
    """Load anything `--model` accepts, with the processing it was trained with.

    Args:
        model: A run folder (RUN/ with final/), an export folder (merged or adapter-only), a checkpoint
            folder of either layout,
            a variant name, a published checkpoint name (``mini-internvl2-2b-da-drivelm``), a hub id,
            or an already loaded `LoadedModel`.
        dtype: Weight dtype.
        device: Device to move the model to (default: CUDA when available, else CPU).

    Returns:
        The EvalModel.
    """

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = None if isinstance(model, LoadedModel) else _hub_folder(model)
    if isinstance(model, LoadedModel):
        loaded, source = model, str(model.path)
        config = processing_from(loaded.info, _sidecar(Path(loaded.path)))
        net = loaded.model
    elif _is_run_dir(Path(model)):
        # The run's own record (template, tiles, system message) decides the processing.
        source, config = str(model), read_run(model).processing
        loaded = load_run_model(Path(model), dtype=dtype)
        net = loaded.model
    elif ((folder or Path(model)) / "adapter_config.json").is_file():
        # An adapter-only export (or RUN/final, or one pushed to the hub): its sidecar names the base
        # model and the processing.
        adapter = folder or Path(model)
        loaded = load_run_model(adapter, dtype=dtype)
        source, net = str(model), loaded.model
        config = processing_from(loaded.info, _sidecar(adapter))
    elif get_published(str(model)) is not None and not Path(model).exists():
        loaded = load_published(str(model), dtype=dtype)
        source, net = str(model), loaded.model
        config = processing_from(loaded.info, _sidecar(Path(loaded.path)))
    else:
        loaded = load_model(str(model), dtype=dtype)
        source, net = str(model), loaded.model
        config = processing_from(loaded.info, _sidecar(Path(loaded.path)))
    if not _is_quantized(net):
        net = net.to(device)  # type: ignore[arg-type]  # transformers' .to decorator stubs take a model
    net.eval()
    return EvalModel(model=net, tokenizer=loaded.tokenizer, processing=config, source=source)


def _hub_folder(model: str | Path) -> Path | None:
    """The local snapshot of a hub id (downloaded or cached), so an adapter export pushed to the hub is
    recognised as one; None for anything else (a local path, a variant or published name)."""

    text = str(model)
    if Path(text).expanduser().exists() or get_variant(text) is not None or get_published(text) is not None:
        return None
    return resolve_model_path(text) if looks_like_hub_id(text) else None


def _is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _stop_ids(tokenizer: Any, template_name: str) -> list[int]:

    return stop_token_ids(tokenizer, get_template(template_name))


def _clean(text: str, sep: str) -> str:
    # Tokens the tokenizer does not mark special (a multi-token separator) can survive decoding.
    cut = sep.strip()
    if cut and cut in text:
        text = text.split(cut, 1)[0]
    return text.strip()


def generate_answers(
    eval_model: EvalModel,
    samples: Sequence[Sample],
    root: Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    show_progress: bool = True,
    on_batch: Callable[[list[str], list[str]], None] | None = None,
    min_new_tokens: int = 0,
    sampling: Mapping[str, Any] | None = None,
    prefixes: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Greedy answers to each sample's last question, in batches with left padding and the KV cache.

    Args:
        eval_model: The model and its processing.
        samples: Samples in the shared format (their last gpt turn is the reference, not shown).
        root: Dataset root the image paths are relative to.
        batch_size: Samples per generate call.
        max_new_tokens: Longest answer in tokens.
        show_progress: Show a tqdm bar with samples/s.
        on_batch: Called with (ids, answers) after each batch (for streaming writers).
        min_new_tokens: Shortest answer in tokens (the official evaluation scripts set 1); 0 sets none.
        sampling: Sample instead of decoding greedily, with these ``generate`` settings (``temperature``,
            ``top_k``, ``top_p``); None: greedy. Seed torch's RNG before the call for repeatable samples.
        prefixes: Sample id -> text the answer starts with (put after the assistant role, as if the model
            had written it); the returned answer is what the model adds after it.

    Returns:
        Sample id -> answer text.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tokenizer, config, model = eval_model.tokenizer, eval_model.processing, eval_model.model
    sample_processor = processing.SampleProcessor(tokenizer, config)
    stop = _stop_ids(tokenizer, config.template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    sep = get_template(config.template).sep
    device = next(model.parameters()).device
    pixel_dtype = _vision_dtype(model)
    answers: dict[str, str] = {}
    lengths = {
        "max_new_tokens": max_new_tokens,
        **({"min_new_tokens": min_new_tokens} if min_new_tokens else {}),
    }
    bar = tqdm(total=len(samples), desc="eval", unit="sample", disable=not show_progress, file=sys.stderr)
    rows = (
        _with_prefix(sample_processor.generation_inputs(s, root), (prefixes or {}).get(s.id), tokenizer)
        for s in samples
    )
    decoding: dict[str, Any] = {"do_sample": True, **sampling} if sampling else {"do_sample": False}
    try:
        for chunk in _rope_safe_batches(rows, batch_size, rope_switch(model), max_new_tokens):
            batch = processing.collate(chunk, pad_id, padding_side="left")
            inputs: dict[str, Any] = {
                "input_ids": batch["input_ids"].to(device),
                "attention_mask": batch["attention_mask"].to(device),
            }
            if batch["pixel_values"] is not None:
                inputs["pixel_values"] = batch["pixel_values"].to(device=device, dtype=pixel_dtype)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    **lengths,
                    **decoding,
                    num_beams=1,
                    use_cache=True,
                    eos_token_id=stop,
                    pad_token_id=pad_id,
                )
            new_tokens = out[:, inputs["input_ids"].shape[1] :]
            texts = [_clean(t, sep) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            ids = [row.id for row in chunk]
            answers.update(zip(ids, texts))
            if on_batch is not None:
                on_batch(ids, texts)
            bar.update(len(chunk))
    finally:
        bar.close()
    return answers


def _with_prefix(
    row: processing.ProcessedSample, prefix: str | None, tokenizer: Any
) -> processing.ProcessedSample:
    """A generation row whose answer starts with `prefix` (its tokens appended after the assistant role)."""
    if not prefix:
        return row
    ids = torch.tensor(tokenizer(prefix, add_special_tokens=False)["input_ids"], dtype=row.input_ids.dtype)
    return replace(
        row,
        input_ids=torch.cat([row.input_ids, ids]),
        labels=torch.cat([row.labels, row.labels.new_full((len(ids),), processing.IGNORE_INDEX)]),
    )


@dataclass(frozen=True)
class PromptRequest:
    """One question outside the shared format: an id, the user text and its images.

    Attributes:
        id: The answer's key.
        prompt: The user turn as the chat template receives it, one ``<image>`` per image where the
            image goes (e.g. ``"<image>\nWhat is shown?"``).
        images: Image paths (absolute, or relative to the working directory).
    """

    id: str
    prompt: str
    images: tuple[str, ...] = ()


def generate_prompt_answers(
    eval_model: EvalModel,
    requests: Sequence[PromptRequest],
    *,
    tiles: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    min_new_tokens: int = 0,
    show_progress: bool = True,
    on_batch: Callable[[list[str], list[str]], None] | None = None,
) -> dict[str, str]:
    """Greedy answers to raw prompts (one user turn each), with the model's template and chosen tile settings.

    The same batched generation as `generate_answers`; only the tiling may differ from the checkpoint's own
    (an official benchmark fixes ``max_num`` and the thumbnail whatever the model was trained with).

    Args:
        eval_model: The model and its processing.
        requests: The prompts with their images.
        tiles: ProcessingConfig fields replacing the checkpoint's for these prompts (``max_tiles``,
            ``min_tiles``, ``use_thumbnail``); None keeps the checkpoint's.
        batch_size: Prompts per generate call.
        max_new_tokens: Longest answer in tokens.
        min_new_tokens: Shortest answer in tokens; 0 sets none.
        show_progress: Show a tqdm bar.
        on_batch: Called with (ids, answers) after each batch.

    Returns:
        Request id -> answer text.
    """
    allowed = {"max_tiles", "min_tiles", "use_thumbnail"}
    unknown = sorted(set(tiles or {}) - allowed)
    if unknown:
        raise ValueError(f"tiles takes only {', '.join(sorted(allowed))}; got {', '.join(unknown)}")
    model = eval_model
    if tiles:
        model = replace(eval_model, processing=replace(eval_model.processing, **tiles))
    samples = [
        Sample(id=r.id, conversations=[Turn(HUMAN, r.prompt), Turn(GPT, "")], images=list(r.images))
        for r in requests
    ]
    return generate_answers(
        model,
        samples,
        Path(),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        show_progress=show_progress,
        on_batch=on_batch,
    )


def rope_switch(model: Any) -> tuple[str, int] | None:
    """("longrope" | "dynamic", length) when the LLM's RoPE frequencies follow the longest row of a batch.

    transformers picks Phi-3's long-context factors (longrope) for the whole batch once any position
    passes original_max_position_embeddings, and dynamic NTK RoPE (InternLM2) rescales for the whole batch
    past max_position_embeddings; a short row batched with a long one would then be answered with other
    frequencies than when run alone. None for plain RoPE.
    """
    for module in model.modules():
        rope_type = getattr(module, "rope_type", None)
        if not isinstance(rope_type, str) or not hasattr(module, "original_inv_freq"):
            continue
        if rope_type == "longrope":
            return rope_type, int(module.config.rope_parameters["original_max_position_embeddings"])
        if "dynamic" in rope_type:
            return "dynamic", int(module.original_max_seq_len)
    return None


def _rope_safe_batches(
    rows: Iterable[processing.ProcessedSample],
    batch_size: int,
    switch: tuple[str, int] | None,
    max_new_tokens: int,
) -> Iterator[list[processing.ProcessedSample]]:
    """Batches of up to `batch_size` rows in which every row gets the RoPE frequencies it gets alone.

    With a switch length L: rows that stay within L to their last generated token batch together;
    longrope rows whose prompt already exceeds L (long factors from the first step, alone or not)
    batch together; a row that would cross L while generating, and any row past L under dynamic
    RoPE, runs alone.
    """
    if switch is None:
        yield from _chunked(rows, batch_size)
        return
    kind, length = switch
    open_batches: dict[str, list[processing.ProcessedSample]] = {}
    for row in rows:
        prompt = len(row.input_ids)
        if prompt + max_new_tokens <= length:
            key = "short"
        elif kind == "longrope" and prompt > length:
            key = "long"
        else:
            yield [row]
            continue
        batch = open_batches.setdefault(key, [])
        batch.append(row)
        if len(batch) == batch_size:
            yield open_batches.pop(key)
    yield from open_batches.values()


def _chunked(
    rows: Iterable[processing.ProcessedSample], size: int
) -> Iterator[list[processing.ProcessedSample]]:
    batch: list[processing.ProcessedSample] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _vision_dtype(model: Any) -> torch.dtype:
    for name, param in model.named_parameters():
        if "vision_tower" in name and param.is_floating_point():
            return param.dtype
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


# --------------------------------------------------------------------------------------------------
# Command line: adapt eval
# --------------------------------------------------------------------------------------------------


def device_problem(device: str) -> str | None:
    """Why `device` cannot run the model here ("--device ..." message), or None when it can."""
    try:
        wanted = torch.device(device)
    except RuntimeError as e:
        return f"--device {device!r} is not a device: {str(e).splitlines()[0]}"
    if wanted.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {device}: no CUDA device is available here (use --device cpu)"
        if wanted.index is not None and wanted.index >= torch.cuda.device_count():
            return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    if wanted.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {device}: MPS is not available here (use --device cpu)"
    return None
