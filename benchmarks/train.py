"""Training speed and memory: samples/s, tokens/s and peak memory for LoRA, QLoRA and full fine-tuning, with
the SFT objective and with MPO (preference pairs: a sample is then a pair, chosen and rejected answer).

Each row is one `adapt train` run in its own process (so peak memory is that run's own), on a synthetic
dataset of solid-colour images with short driving-style answers. Models:

- ``tiny``: the tiny random model of the tests (Qwen2 family).
- ``real-1b`` / ``real-2b``: the real Mini-InternVL2-1B / -2B architectures (InternViT-300M + Qwen2-0.5B /
  InternLM2-1.8B as Llama) with random weights, built from config (no download), saved once in the cache.

Usage::

    python benchmarks/train.py                         # tiny + real-1b, lora/qlora/full, CPU
    python benchmarks/train.py --models tiny --steps 30
    python benchmarks/train.py --models tiny --methods lora,full --objectives sft,mpo
    python benchmarks/train.py --models real-1b,real-2b --methods lora,full --accelerator gpu \\
        --precision bf16-mixed --dtype auto --max-tiles 6 --max-length 4096 --peak-tflops 989

Writes benchmarks/results/train.json and benchmarks/results/train.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_model, load_average  # benchmarks/machine.py, beside this script

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


def make_pairs(root: Path) -> Path:
    """MPO pairs of the dataset's samples: its answer chosen, a shorter wrong one rejected (same images)."""
    pairs = []
    for line in (root / "train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        question, answer = (turn["value"] for turn in row["conversations"])
        pairs.append(
            {
                "id": row["id"],
                "image": row["image"],
                "width_list": [row["width"]],
                "height_list": [row["height"]],
                "question": question,
                "chosen": answer,
                "rejected": "There is nothing in front of the ego vehicle.",
            }
        )
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return path


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
    objective: str = "sft",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One training run in a fresh process; returns its summary plus the settings.

    With objective "mpo", `data` is a pair file and a sample is a pair (two sequences, plus the reference).
    `env` replaces the environment (``--before-src`` runs another copy of the package through PYTHONPATH); the
    process runs in the run's parent folder, so that no copy of the package in the working directory shadows it.
    """
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
        *((f"train.objective={objective}",) if objective != "sft" else ()),  # code before MPO knows no key
        *extra,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        return {"model": model, "method": method, "objective": objective, "error": result.stderr[-1500:]}
    summary = json.loads((out / "summary.json").read_text())
    params = json.loads((out / "parameters.json").read_text())
    return {
        "model": model,
        "method": method,
        "objective": objective,
        "mpo_reference": summary.get("mpo", {}).get("reference"),
        "mpo_reference_seconds": summary.get("mpo", {}).get("reference_seconds"),
        "batch_size": batch,
        "steps": summary["steps"],
        "max_tiles": args.max_tiles,
        "samples_per_second": summary["steady_samples_per_second"],
        "tokens_per_second": summary["steady_tokens_per_second"],
        "samples_per_second_incl_first_step": summary["train_samples_per_second"],
        "peak_rss_gib": summary["peak_memory"]["cpu_max_rss_bytes"] / 2**30,
        "peak_gpu_gib": summary["peak_memory"].get("gpu_max_allocated_bytes", 0) / 2**30 or None,
        "phases": phases_gib(summary.get("peak_memory_by_phase")),
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


def run_measured(
    command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, int]:
    """Run `command`: its exit status, its output (stdout and stderr) and its peak resident memory in bytes.

    The peak is Linux's ru_maxrss of the process and of the children it waited for (wait4), so a launcher that
    runs the training in a child reports the child's peak.
    """
    with tempfile.TemporaryFile("w+", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        return process.returncode, log.read(), usage.ru_maxrss * 1024


def run_swift(
    venv: Path, data: Path, work: Path, steps: int, batch: int, max_tiles: int, model_dir: Path | None = None
) -> dict[str, Any]:
    """The same LoRA run (model, data, batch, tiles, steps, r=8 on the LLM) under ms-swift's `swift sft`.

    `model_dir` is the model (default: the tiny one); its weights are linked into ms-swift's copy, not copied.
    """

    from mini_internvl_adapt.models.tiny import tiny_model_path

    python = venv / "bin" / "python"
    model = work / "swift-model"
    if model.exists():
        shutil.rmtree(model)
    model.mkdir(parents=True)
    for item in Path(model_dir or tiny_model_path("tiny")).iterdir():
        if item.suffix == ".safetensors":
            (model / item.name).symlink_to(item.resolve())
        elif item.is_file():
            shutil.copy2(item, model / item.name)
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
    started = time.perf_counter()
    code, output, peak = run_measured(command, env)
    wall = time.perf_counter() - started
    found = re.findall(r"'train_runtime': '([0-9.]+)'", output)
    if code != 0 or not found:
        return {"tool": "ms-swift", "error": output[-1500:]}
    runtime = float(found[-1])
    # HF Trainer's own train_samples_per_second counts whole epochs; samples really trained = steps x batch.
    return {
        "tool": "ms-swift",
        "steps": steps,
        "batch_size": batch,
        "train_runtime": runtime,
        "samples_per_second": steps * batch / runtime,
        "peak_rss_gib": peak / 2**30,
        "process_wall_seconds": round(wall, 1),
    }


def speed_ratio(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A current row's steady samples/s over its before row's in the same run ("-" without one)."""
    if row.get("code") != "current":
        return "-"
    key = (row["model"], row["method"], row.get("objective", "sft"))
    before = [
        r
        for r in rows
        if r.get("code") == "before" and (r["model"], r["method"], r.get("objective", "sft")) == key
    ]
    if not before or "error" in before[0]:
        return "-"
    return f"{row['samples_per_second'] / before[0]['samples_per_second']:.2f}"


def write_markdown(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    lines = [
        "# Training benchmark (`python benchmarks/train.py`)",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} threads; accelerator "
        f"{meta['accelerator']}, precision {meta['precision']}; max_tiles {meta['max_tiles']}. Samples/s and tokens/s "
        "are steady-state (after the first step); peak RSS is the whole process (model load included).",
        "",
        "| model | method | objective | code | batch | steps | samples/s | x before | tokens/s | peak RSS GiB | "
        "peak GPU GiB | MFU | trainable / total params | first -> last loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        objective, code = r.get("objective", "sft"), r.get("code", "current")
        shown = [o for o in r.get("overrides", []) if "freeze_backbone" not in o] if code == "current" else []
        if shown:  # --set overrides (freezing the real-size ViT for full is every row's)
            code += f" ({', '.join(shown)})"
        if objective == "mpo":  # a sample is a pair; the reference is the adapter-less policy or precomputed
            objective = f"mpo ({r.get('mpo_reference') or '?'} reference)"
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['method']} | {objective} | {r.get('code', 'current')} | "
                f"failed: {r['error'].splitlines()[-1][:120]} |||||||||"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['method']} | {objective} | {code} | {r['batch_size']} | {r['steps']} | "
            f"{r['samples_per_second']:.3g} | {speed_ratio(r, rows)} | {r['tokens_per_second']:.0f} | {r['peak_rss_gib']:.2f} | "
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


# summary.json's peak_memory_by_phase, in order (see training.callbacks.PhaseMemory).
PHASES = (
    "startup",
    "load",
    "wrap",
    "first_step",
    "steady_steps",
    "checkpoint_save",
    "end_of_training",
    "final_save",
)


def phases_gib(record: dict[str, Any] | None) -> dict[str, float] | None:
    """Each phase's own peak resident memory in GiB (None for a run that recorded none)."""
    if not record:
        return None
    return {p: record[p]["peak_rss_bytes"] / 2**30 for p in PHASES if isinstance(record.get(p), dict)}


def swift_memory_rows(
    args: argparse.Namespace, rows: list[dict[str, Any]], data: Path, work: Path
) -> list[dict[str, Any]]:
    """ms-swift's LoRA run of each --swift-memory-models model, with our rows' steps and batch: peak RSS, speed."""
    from mini_internvl_adapt.models.tiny import cache_dir

    out = []
    for model in args.swift_memory_models.split(","):
        ours = next(
            (r for r in rows if r["model"] == model and r["method"] == "lora" and "error" not in r), None
        )
        if ours is None:
            continue
        folder = cache_dir() / "models" / f"bench-{model}" if model in REAL_LLMS else None
        print(f"ms-swift {model} lora ...", file=sys.stderr, flush=True)
        swift = run_swift(
            args.swift_venv, data, work, ours["steps"], ours["batch_size"], args.max_tiles, folder
        )
        print(json.dumps(swift), file=sys.stderr, flush=True)
        out.append({"model": model, **swift})
    return out


def memory_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """The phase table (each phase's own peak RSS) and the peak against ms-swift, as Markdown lines."""
    lines = [
        "## Peak resident memory by phase (GiB)",
        "",
        "Each phase's own peak (the high-water mark is reset between phases); `code` before/current: the package "
        "before the change and now, run one after the other in this run.",
        "",
        "| model | method | code | "
        + " | ".join(p.replace("_", " ") for p in PHASES)
        + " | peak | samples/s |",
        "|---|---|---|" + "---|" * (len(PHASES) + 2),
    ]
    for r in rows:
        if "error" in r or not r.get("phases") or r.get("objective", "sft") != "sft":
            continue
        cells = [f"{r['phases'][p]:.2f}" if p in r["phases"] else "-" for p in PHASES]
        lines.append(
            f"| {r['model']} | {r['method']} | {r.get('code', 'current')} | {' | '.join(cells)} | "
            f"**{r['peak_rss_gib']:.2f}** | {r['samples_per_second']:.3f} |"
        )
    for swift in meta.get("swift_memory", []):
        lines += [
            "",
            f"## {swift['model']} LoRA against ms-swift {meta.get('comparison', {}).get('swift_version', '')}",
            "",
        ]
        if "error" in swift:
            lines.append(f"ms-swift failed: {swift['error'].splitlines()[-1][:200]}")
            continue
        lines += ["| run | peak RSS GiB | x ms-swift | samples/s (whole loop) |", "|---|---|---|---|"]
        for r in rows:
            same = (
                r["model"] == swift["model"] and r["method"] == "lora" and r.get("objective", "sft") == "sft"
            )
            if same and "error" not in r:
                lines.append(
                    f"| mini-internvl-adapt ({r.get('code', 'current')}) | {r['peak_rss_gib']:.2f} | "
                    f"{r['peak_rss_gib'] / swift['peak_rss_gib']:.2f} | {r['samples_per_second_incl_first_step']:.3f} |"
                )
        lines.append(f"| ms-swift | {swift['peak_rss_gib']:.2f} | 1.00 | {swift['samples_per_second']:.4f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,real-1b", help="comma list of tiny, real-1b, real-2b")
    parser.add_argument("--methods", default="lora,qlora,full", help="comma list of lora, qlora, full")
    parser.add_argument(
        "--objectives",
        default="sft,mpo",
        help="comma list of sft, mpo (MPO rows train on pairs of the same samples; samples/s counts pairs)",
    )
    parser.add_argument("--steps", type=int, default=0, help="steps per row (default: tiny 30, real sizes 8)")
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
    parser.add_argument(
        "--swift-memory-models",
        default="",
        help="with --swift-venv: comma list of models (e.g. real-1b) whose LoRA run ms-swift also makes, for peak RSS",
    )
    parser.add_argument(
        "--before-src",
        type=Path,
        help="a copy of the package before a change (the folder holding mini_internvl_adapt/): every row also runs "
        "with it (PYTHONPATH), just before the current code, so the two compare within one run",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for the current code's rows (repeatable), e.g. train.return_freed_memory=false",
    )
    parser.add_argument("--name", default="train", help="results file stem (default: train)")
    args = parser.parse_args(argv)

    import torch

    from mini_internvl_adapt.models.tiny import cache_dir

    work = args.work or Path(tempfile.mkdtemp(prefix="mia-bench-"))
    data = make_dataset(work / "data", n=64, image_size=(448, 448))
    pairs = make_pairs(data)
    variants: list[tuple[str, dict[str, str] | None]] = [("current", None)]
    if args.before_src is not None:
        variants.insert(0, ("before", {**os.environ, "PYTHONPATH": str(args.before_src.resolve())}))
    rows = []
    for model in args.models.split(","):
        if model in REAL_LLMS:
            name = str(build_real(model, cache_dir() / "models" / f"bench-{model}"))
            steps, batch = args.steps or 8, 1
        else:
            name, steps, batch = model, args.steps or 30, 2
        for method in args.methods.split(","):
            for objective in args.objectives.split(","):
                print(f"{model} {method} {objective} ...", file=sys.stderr, flush=True)
                # Full fine-tuning of the real size keeps the ViT frozen, as the official full scripts do (and it fits).
                extra = ("tuning.freeze_backbone=true",) if model in REAL_LLMS and method == "full" else ()
                source = pairs if objective == "mpo" else data
                for code, env in variants:
                    out = work / f"{model}-{method}-{objective}-{time.time_ns()}"
                    overrides = (*extra, *args.set) if code == "current" else extra  # keys the old code lacks
                    row = run_row(
                        name, method, source, out, args, steps, batch, overrides, objective=objective, env=env
                    )
                    # A real-size full fine-tune checkpoint is GBs: only the timings are kept.
                    shutil.rmtree(out, ignore_errors=True)
                    row["overrides"] = list(overrides)
                    row["model"] = model
                    row["code"] = code
                    row["mfu"] = mfu(row, args.peak_tflops) if "error" not in row else None
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    meta = {
        "machine": f"{cpu_model()}, {os.cpu_count()} CPU cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
        "load_average_end": load_average(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "accelerator": args.accelerator,
        "precision": args.precision,
        "max_tiles": args.max_tiles,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    ours = next(
        (
            r
            for r in rows
            if r["model"] == "tiny"
            and r["method"] == "lora"
            and r["objective"] == "sft"
            and r["code"] == "current"
            and "error" not in r
        ),
        None,
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
    if args.swift_venv is not None and args.swift_memory_models:
        meta["swift_memory"] = swift_memory_rows(args, rows, data, work)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.accelerator == "cpu" else f".{args.accelerator}"
    (args.out / f"{args.name}{suffix}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    write_markdown(rows, meta, args.out / f"{args.name}{suffix}.md")
    memory = memory_markdown(rows, meta)
    with open(args.out / f"{args.name}{suffix}.md", "a", encoding="utf-8") as f:
        f.write("\n" + "\n".join(memory) + "\n")
    print("\n".join(memory), file=sys.stderr)
    print(f"results in {args.out}/{args.name}{suffix}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
