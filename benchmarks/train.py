"""Training speed and memory: samples/s, tokens/s and peak memory for LoRA, QLoRA and full fine-tuning.

Each row is one `adapt train` run in its own process (so peak memory is that run's own), on a synthetic
dataset of solid-colour images with short driving-style answers. Models:

- ``tiny``: the tiny random model of the tests (Qwen2 family).
- ``real-1b`` / ``real-2b``: the real Mini-InternVL2-1B / -2B architectures (InternViT-300M + Qwen2-0.5B /
  InternLM2-1.8B as Llama) with random weights, built from config (no download), saved once in the cache.

Usage::

    python benchmarks/train.py                         # tiny + real-1b, lora/qlora/full, CPU
    python benchmarks/train.py --models tiny --steps 30
    python benchmarks/train.py --models real-1b,real-2b --methods lora,full --accelerator gpu \\
        --precision bf16-mixed --dtype auto --max-tiles 6 --max-length 4096 --peak-tflops 989

Writes benchmarks/results/train.json and benchmarks/results/train.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def make_dataset(root: Path, n: int, image_size: tuple[int, int]) -> Path:
    """A small dataset: n samples, one image each, answers of a few dozen tokens."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.new("RGB", image_size, (i * 37 % 255, 90, 160)).save(root / "images" / f"{i}.png")
        rows.append(
            {
                "id": f"bench{i}",
                "image": f"images/{i}.png",
                "width": image_size[0],
                "height": image_size[1],
                "conversations": [
                    {
                        "from": "human",
                        "value": "<image>\nWhat are the important objects in the current scene?",
                    },
                    {
                        "from": "gpt",
                        "value": "There is a car to the front of the ego vehicle. " * (1 + i % 3),
                    },
                ],
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


# The real LLM geometries (config facts of Qwen2-0.5B-Instruct and internlm2-chat-1.8b, the latter as Llama).
REAL_LLMS: dict[str, dict[str, Any]] = {
    "real-1b": {
        "family": "qwen2",
        "template": "Hermes-2",
        "config": dict(
            model_type="qwen2",
            vocab_size=151655,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
        ),
    },
    "real-2b": {
        "family": "internlm2",
        "template": "internlm2-chat",
        "config": dict(
            model_type="llama",
            vocab_size=92553,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=8,
            rope_theta=1000000.0,
            rms_norm_eps=1e-5,
        ),
    },
}


def build_real(name: str, out: Path) -> Path:
    """A real Mini-InternVL2 architecture (InternViT-300M + the real LLM) with random weights, HF-native."""
    if (out / "mini_internvl_adapt.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, InternVLConfig, InternVLForConditionalGeneration

    from mini_internvl_adapt.models.info import ModelInfo
    from mini_internvl_adapt.models.tokenizer import build_tiny_tokenizer

    spec = REAL_LLMS[name]
    tokenizer = build_tiny_tokenizer(spec["family"])
    llm = dict(spec["config"])
    text = AutoConfig.for_model(
        llm.pop("model_type"),
        **llm,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=[448, 448],
        patch_size=[14, 14],
        use_qk_norm=False,
        layer_norm_eps=1e-6,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=256,
        downsample_ratio=0.5,
    )
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = ModelInfo(
        llm_family=spec["family"],
        template=spec["template"],
        layout="hf",
        source=f"{name} architecture, random",
    )
    (tmp / "mini_internvl_adapt.json").write_text(json.dumps(info.to_json(), indent=2))
    os.replace(tmp, out)
    return out


def mfu(row: dict[str, Any], peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: k x params x tokens/s over the peak (k = 6 full, 4 with a frozen base).

    The usual approximation: a frozen base skips weight gradients (one of the three matmuls per layer).
    """
    if not peak_tflops or not row.get("tokens_per_second"):
        return None
    k = 6 if row["method"] == "full" else 4
    return k * row["total_params"] * row["tokens_per_second"] / (peak_tflops * 1e12)


def run_row(
    model: str,
    method: str,
    data: Path,
    out: Path,
    args: argparse.Namespace,
    steps: int,
    batch: int,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One training run in a fresh process; returns its summary plus the settings."""
    command = [
        sys.executable,
        "-m",
        "mini_internvl_adapt.cli",
        "train",
        "--config",
        str(REPO / "configs" / "tiny" / f"{method}.yaml"),
        "--model",
        model,
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--max-tiles",
        str(args.max_tiles),
        "--max-length",
        str(args.max_length),
        "--accelerator",
        args.accelerator,
        "--precision",
        args.precision,
        "--checkpoint-every",
        str(10**6),  # measure training, not checkpoint writes
        "train.progress_bar=false",
        "train.log_every_n_steps=1",
        "model.dtype=" + args.dtype,
        *extra,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        return {"model": model, "method": method, "error": result.stderr[-1500:]}
    summary = json.loads((out / "summary.json").read_text())
    params = json.loads((out / "parameters.json").read_text())
    return {
        "model": model,
        "method": method,
        "batch_size": batch,
        "steps": summary["steps"],
        "max_tiles": args.max_tiles,
        "samples_per_second": summary["steady_samples_per_second"],
        "tokens_per_second": summary["steady_tokens_per_second"],
        "samples_per_second_incl_first_step": summary["train_samples_per_second"],
        "peak_rss_gib": summary["peak_memory"]["cpu_max_rss_bytes"] / 2**30,
        "peak_gpu_gib": summary["peak_memory"].get("gpu_max_allocated_bytes", 0) / 2**30 or None,
        "trainable_params": params["total"]["trainable"],
        "total_params": params["total"]["total"],
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
        "process_wall_seconds": round(wall, 1),
    }


# Runs inside the ms-swift venv: gives the tiny model the InternVLProcessor files ms-swift loads (tiles fixed to 1..N).
_SWIFT_PROCESSOR = """
import sys
from transformers import AutoTokenizer, InternVLProcessor
from transformers.models.got_ocr2 import GotOcr2ImageProcessor
from transformers.models.internvl import InternVLVideoProcessor
folder, max_tiles = sys.argv[1], int(sys.argv[2])
names = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
         "video_token": "<IMG_CONTEXT>"}
tokenizer = AutoTokenizer.from_pretrained(folder, extra_special_tokens=names)
images = GotOcr2ImageProcessor(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1,
                               max_patches=max_tiles, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
InternVLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=InternVLVideoProcessor(),
                  image_seq_length=256).save_pretrained(folder)
"""


def run_swift(venv: Path, data: Path, work: Path, steps: int, batch: int, max_tiles: int) -> dict[str, Any]:
    """The same LoRA run (tiny model, data, batch, tiles, steps, r=8 on the LLM) under ms-swift's `swift sft`."""

    from mini_internvl_adapt.models.tiny import tiny_model_path

    python = venv / "bin" / "python"
    model = work / "swift-model"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(tiny_model_path("tiny"), model)
    subprocess.run(
        [str(python), "-c", _SWIFT_PROCESSOR, str(model), str(max_tiles)], check=True, capture_output=True
    )
    dataset = work / "swift-train.jsonl"
    with open(dataset, "w", encoding="utf-8") as out:
        for line in (data / "train.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            messages = [
                {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                for t in row["conversations"]
            ]
            out.write(json.dumps({"messages": messages, "images": [str(data / row["image"])]}) + "\n")
    command = [
        str(venv / "bin" / "swift"),
        "sft",
        "--model",
        str(model),
        "--model_type",
        "internvl",
        "--template",
        "internvl_hf",
        "--dataset",
        str(dataset),
        "--tuner_type",
        "lora",
        "--lora_rank",
        "8",
        "--lora_alpha",
        "16",
        "--target_modules",
        "all-linear",
        "--per_device_train_batch_size",
        str(batch),
        "--max_steps",
        str(steps),
        "--learning_rate",
        "1e-3",
        "--output_dir",
        str(work / "swift-out"),
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--dataloader_num_workers",
        "0",
        "--torch_dtype",
        "float32",
        "--use_hf",
        "true",
        "--split_dataset_ratio",
        "0",
        "--report_to",
        "none",
        "--max_length",
        "2048",
        "--gradient_checkpointing",
        "false",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    found = re.findall(r"'train_runtime': '([0-9.]+)'", result.stdout + result.stderr)
    if result.returncode != 0 or not found:
        return {"tool": "ms-swift", "error": (result.stdout + result.stderr)[-1500:]}
    runtime = float(found[-1])
    # HF Trainer's own train_samples_per_second counts whole epochs; samples really trained = steps x batch.
    return {
        "tool": "ms-swift",
        "steps": steps,
        "batch_size": batch,
        "train_runtime": runtime,
        "samples_per_second": steps * batch / runtime,
    }


def write_markdown(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    lines = [
        "# Training benchmark (`python benchmarks/train.py`)",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} threads; accelerator "
        f"{meta['accelerator']}, precision {meta['precision']}; max_tiles {meta['max_tiles']}. Samples/s and tokens/s "
        "are steady-state (after the first step); peak RSS is the whole process (model load included).",
        "",
        "| model | method | batch | steps | samples/s | tokens/s | peak RSS GiB | peak GPU GiB | MFU "
        "| trainable / total params | first -> last loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['method']} | failed: {r['error'].splitlines()[-1][:120]} |||||||"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['method']} | {r['batch_size']} | {r['steps']} | {r['samples_per_second']:.2f} | "
            f"{r['tokens_per_second']:.0f} | {r['peak_rss_gib']:.2f} | "
            f"{'-' if not r.get('peak_gpu_gib') else format(r['peak_gpu_gib'], '.2f')} | "
            f"{'-' if not r.get('mfu') else format(r['mfu'], '.1%')} | "
            f"{r['trainable_params']:,} / {r['total_params']:,} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |"
        )
    comparison = meta.get("comparison")
    if comparison:
        lines += [
            "",
            "## Against ms-swift (same tiny model, data, batch, tiles, steps; LoRA r=8 on the LLM)",
            "",
        ]
        if "error" in comparison["ms-swift"]:
            lines.append(f"ms-swift failed: {comparison['ms-swift']['error'].splitlines()[-1][:200]}")
        else:
            lines += [
                "| tool | samples/s (whole training loop) |",
                "|---|---|",
                f"| mini-internvl-adapt | {comparison['ours_samples_per_second']:.2f} |",
                f"| ms-swift {comparison.get('swift_version', '')} | {comparison['ms-swift']['samples_per_second']:.2f} |",
                "",
                f"Speed-up: {comparison['speedup']:.2f}x (goal: >= 1.5x).",
            ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,real-1b", help="comma list of tiny, real-1b, real-2b")
    parser.add_argument("--methods", default="lora,qlora,full", help="comma list of lora, qlora, full")
    parser.add_argument("--steps", type=int, default=0, help="steps per row (default: tiny 30, real sizes 4)")
    parser.add_argument("--max-tiles", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's dense peak (H100/H200 bf16: 989) for MFU"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch folder, kept (default: a temp folder, removed at the end); run folders are always removed",
    )
    parser.add_argument(
        "--swift-venv",
        type=Path,
        help="a separate venv with ms-swift installed: also time the same tiny LoRA run there",
    )
    args = parser.parse_args(argv)

    import torch

    from mini_internvl_adapt.models.tiny import cache_dir

    work = args.work or Path(tempfile.mkdtemp(prefix="mia-bench-"))
    data = make_dataset(work / "data", n=64, image_size=(448, 448))
    rows = []
    for model in args.models.split(","):
        if model in REAL_LLMS:
            name = str(build_real(model, cache_dir() / "models" / f"bench-{model}"))
            steps, batch = args.steps or 4, 1
        else:
            name, steps, batch = model, args.steps or 30, 2
        for method in args.methods.split(","):
            print(f"{model} {method} ...", file=sys.stderr, flush=True)
            # Full fine-tuning of the real size keeps the ViT frozen, as the official full scripts do (and it fits).
            extra = ("tuning.freeze_backbone=true",) if model in REAL_LLMS and method == "full" else ()
            out = work / f"{model}-{method}-{time.time_ns()}"
            row = run_row(name, method, data, out, args, steps, batch, extra)
            # A real-size full fine-tune checkpoint is GBs: only the timings are kept.
            shutil.rmtree(out, ignore_errors=True)
            row["overrides"] = list(extra)
            row["model"] = model
            row["mfu"] = mfu(row, args.peak_tflops) if "error" not in row else None
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "accelerator": args.accelerator,
        "precision": args.precision,
        "max_tiles": args.max_tiles,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    ours = next(
        (r for r in rows if r["model"] == "tiny" and r["method"] == "lora" and "error" not in r), None
    )
    if args.swift_venv is not None and ours is not None:
        print("ms-swift lora ...", file=sys.stderr, flush=True)
        swift = run_swift(args.swift_venv, data, work, ours["steps"], ours["batch_size"], args.max_tiles)
        version = subprocess.run(
            [str(args.swift_venv / "bin" / "python"), "-c", "import swift; print(swift.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        meta["comparison"] = {
            "ms-swift": swift,
            "swift_version": version,
            "ours_samples_per_second": ours["samples_per_second_incl_first_step"],
            "speedup": ours["samples_per_second_incl_first_step"] / swift["samples_per_second"]
            if "error" not in swift
            else None,
        }
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.accelerator == "cpu" else f".{args.accelerator}"
    (args.out / f"train{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_markdown(rows, meta, args.out / f"train{suffix}.md")
    print(f"results in {args.out}/train{suffix}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
