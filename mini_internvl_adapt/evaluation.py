"""Evaluation: batched greedy generation on a converted test set, then the domain's own scoring.

The prompt template, tile settings and tokenizer always come from the checkpoint being evaluated
(the run's saved ProcessingConfig, an export's sidecar, or the ModelInfo of a base/published model),
never from library defaults, so inference matches training. Generation is greedy with the KV cache,
left padding and the template's end-of-turn token as the stop token.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mini_internvl_adapt import processing
from mini_internvl_adapt.schema import (
    Sample,
    atomic_write_json,
    atomic_write_text,
    check_unique_ids,
    read_samples,
)

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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


def processing_from(info: Any, sidecar: Mapping[str, Any] | None = None) -> processing.ProcessingConfig:
    """The processing a checkpoint was trained with.

    Args:
        info: The checkpoint's ModelInfo (template, image_size, num_image_token, tiles, thumbnail).
        sidecar: The checkpoint's ``mini_internvl_adapt.json``; its ``processing`` block (written by runs
            and exports) wins over `info`, since it also records the system message and max tiles used.

    Returns:
        A ProcessingConfig; fields neither source gives keep the library defaults.
    """
    from mini_internvl_adapt.checkpoints import processing_config_from

    saved = (sidecar or {}).get("processing")
    if isinstance(saved, Mapping):
        return processing_config_from(saved)
    return processing_config_from(
        {
            "template": info.template,
            "tile_size": info.image_size,
            "num_image_token": info.num_image_token,
            "min_tiles": info.min_dynamic_patch,
            "max_tiles": info.max_dynamic_patch,
            "use_thumbnail": info.use_thumbnail,
        }
    )


def _sidecar(path: Path) -> dict[str, Any]:
    from mini_internvl_adapt.checkpoints import RUN_INFO_FILE

    file = path / RUN_INFO_FILE
    if not file.is_file():
        return {}
    data = json.loads(file.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _is_run_dir(path: Path) -> bool:
    from mini_internvl_adapt.checkpoints import RUN_INFO_FILE

    return path.is_dir() and (path / "final").is_dir() and (path / RUN_INFO_FILE).is_file()


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
    from mini_internvl_adapt.checkpoints import get_published, load_published, read_run
    from mini_internvl_adapt.models.loading import LoadedModel, load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = None if isinstance(model, LoadedModel) else _hub_folder(model)
    if isinstance(model, LoadedModel):
        loaded, source = model, str(model.path)
        config = processing_from(loaded.info, _sidecar(Path(loaded.path)))
        net = loaded.model
    elif _is_run_dir(Path(model)):
        from mini_internvl_adapt.training import load_run_model

        # The run's own record (template, tiles, system message) decides the processing.
        source, config = str(model), read_run(model).processing
        loaded = load_run_model(Path(model), dtype=dtype)
        net = loaded.model
    elif ((folder or Path(model)) / "adapter_config.json").is_file():
        from mini_internvl_adapt.training import load_run_model

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
    from mini_internvl_adapt.checkpoints import get_published
    from mini_internvl_adapt.models.loading import looks_like_hub_id, resolve_model_path
    from mini_internvl_adapt.models.variants import get_variant

    text = str(model)
    if Path(text).expanduser().exists() or get_variant(text) is not None or get_published(text) is not None:
        return None
    return resolve_model_path(text) if looks_like_hub_id(text) else None


def _is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _stop_ids(tokenizer: Any, template_name: str) -> list[int]:
    from mini_internvl_adapt.checkpoints import stop_token_ids
    from mini_internvl_adapt.models.templates import get_template

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

    Returns:
        Sample id -> answer text.
    """
    from tqdm import tqdm

    from mini_internvl_adapt.models.templates import get_template

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
    bar = tqdm(total=len(samples), desc="eval", unit="sample", disable=not show_progress, file=sys.stderr)
    rows = (sample_processor.generation_inputs(s, root) for s in samples)
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
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
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


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A two-column text table of metrics (nested dicts shown with dotted names)."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.4f}"))
        elif value is None:
            rows.append((prefix, "n/a"))
        else:
            rows.append((prefix, str(value)))

    walk("", metrics)
    width = max([len("metric"), *(len(k) for k, _ in rows)])
    lines = [f"{'metric':{width}s}  value", f"{'-' * width}  -----"]
    lines += [f"{k:{width}s}  {v}" for k, v in rows]
    return "\n".join(lines)


def evaluate(
    model_dir_or_run: str | Path | Any,
    samples: Sequence[Sample] | str | Path,
    root: str | Path | None,
    domain: str | Any | None,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    score_options: Mapping[str, Any] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Generate answers for a test set, score them with the domain, write predictions and metrics.

    Args:
        model_dir_or_run: Anything `load_eval_model` accepts (run folder, export, checkpoint, name, EvalModel).
        samples: The samples, or a JSONL file of them.
        root: Dataset root for image paths (default: the JSONL file's folder).
        domain: Domain name or object whose ``score`` gives the metrics; None only writes predictions.
        out_dir: Folder for predictions.jsonl and metrics.json.
        batch_size: Samples per generate call.
        max_new_tokens: Longest answer in tokens.
        dtype: Weight dtype when loading.
        device: Device (default: CUDA when available).
        score_options: Extra keyword options for the domain's ``score``.
        show_progress: Show the progress bar.

    Returns:
        The metrics (with ``samples``, ``samples_per_second`` and ``model`` added).
    """
    from mini_internvl_adapt.registry import get_domain

    where: str | Path = "the samples given"
    if isinstance(samples, (str, Path)):
        where = data_file = Path(samples)
        root = Path(root) if root is not None else data_file.parent
        samples = read_samples(data_file, root)
    if root is None:
        raise ValueError("root is needed when samples are given as objects")
    root = Path(root)
    samples = list(samples)
    if not samples:
        raise ValueError("no samples to evaluate")
    check_unique_ids(samples, where)
    scorer = get_domain(domain) if isinstance(domain, str) else domain
    eval_model = (
        model_dir_or_run
        if isinstance(model_dir_or_run, EvalModel)
        else load_eval_model(model_dir_or_run, dtype=dtype, device=device)
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    predictions = generate_answers(
        eval_model,
        samples,
        root,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        show_progress=show_progress,
    )
    elapsed = time.perf_counter() - started
    lines = [json.dumps({"id": s.id, "answer": predictions[s.id]}, ensure_ascii=False) for s in samples]
    atomic_write_text(out / PREDICTIONS_FILE, "".join(line + "\n" for line in lines))
    metrics: dict[str, Any] = {}
    if scorer is not None:
        from mini_internvl_adapt.registry import DomainError

        try:
            metrics = dict(scorer.score(samples, predictions, **dict(score_options or {})))
        except DomainError as e:  # the generation is not lost with the scoring
            raise DomainError(
                f"{e}; the predictions are kept in {out / PREDICTIONS_FILE} (score them with `adapt score`)"
            ) from e
    metrics.update(
        {
            "samples": len(samples),
            "samples_per_second": round(len(samples) / elapsed, 3) if elapsed > 0 else None,
            "model": eval_model.source,
            "processing": asdict(eval_model.processing),
        }
    )
    atomic_write_json(out / METRICS_FILE, metrics)
    return metrics


# --------------------------------------------------------------------------------------------------
# Command line: adapt eval
# --------------------------------------------------------------------------------------------------


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``adapt eval`` (except --domain and the domain's own score options)."""
    parser.add_argument("--data", required=True, type=Path, help="DATASET/test.jsonl")
    parser.add_argument(
        "--model",
        required=True,
        help="run folder, export folder, checkpoint folder, variant, published checkpoint name or hub id",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="results folder (predictions.jsonl, metrics.json)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="samples per generate call (default 8)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(_DTYPES), default="fp32", help="weights dtype (default fp32)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples")


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


def eval_main(argv: Sequence[str]) -> int:
    """``adapt eval``: generate answers for a test set and score them; returns the exit status."""
    from mini_internvl_adapt.registry import add_domain_arguments, available_domains, get_domain

    argv = list(argv)
    parser = argparse.ArgumentParser(
        prog="adapt eval", description="Generate answers for a test set and score them."
    )
    parser.add_argument("--domain", required=True, help=f"one of: {', '.join(available_domains())}")
    add_eval_arguments(parser)
    # The domain's own options join the parser before --help is handled, so the help lists them.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--domain")
    known, _ = first.parse_known_args(argv)
    if known.domain is not None:
        group = parser.add_argument_group(f"options of the '{known.domain}' domain")
        add_domain_arguments(get_domain(known.domain), group, "add_score_arguments")  # type: ignore[arg-type]
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")  # a negative slice would drop samples
    if args.device is not None:
        problem = device_problem(args.device)
        if problem is not None:
            parser.error(problem)  # before the model loads, not a traceback after it
    domain = get_domain(args.domain)
    own = {"domain", "data", "model", "out", "batch_size", "max_new_tokens", "dtype", "device", "limit"}
    score_options = {k: v for k, v in vars(args).items() if k not in own and v is not None}
    samples = read_samples(args.data)
    check_unique_ids(samples, args.data)
    if args.limit is not None:
        samples = samples[: args.limit]
    metrics = evaluate(
        args.model,
        samples,
        args.data.parent,
        domain,
        args.out,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        dtype=_DTYPES[args.dtype],
        device=args.device,
        score_options=score_options,
    )
    print(format_metrics_table({k: v for k, v in metrics.items() if k != "processing"}), file=sys.stderr)
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    print(f"predictions and metrics written to {args.out}", file=sys.stderr)
    return 0
