"""Peak resident memory of loading a model (what `adapt train` and `adapt eval` do first) and of
`adapt export --merge-lora`, on the real Mini-InternVL2-1B geometry (random weights, see train.py).

Each case runs in a fresh process and its peak is Linux's ru_maxrss of that process (wait4); with
``--before-src`` every case also runs with another copy of the package (PYTHONPATH) just before the current
code, so the two compare within one run. Cases:

- ``load``: `load_model` of the HF-layout checkpoint (stored float32) in float32, in bfloat16, and 4-bit (QLoRA),
  and of the same weights in the original layout stored in bfloat16 (as the published checkpoints are) in float32
  and in bfloat16; each also touches every weight once (a first forward would), so mapped files count.
- ``export``: `adapt export --merge-lora` (bf16) of a LoRA run of that model (one training step, made once).

Usage::

    python benchmarks/load_memory.py [--before-src DIR] [--cases load,export]

Writes benchmarks/results/load_memory.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_model, load_average  # benchmarks/machine.py, beside this script
from train import REPO, RESULTS, build_real, make_dataset, run_measured

# Loads one model and touches every weight; prints the resident memory (GiB) after the load.
_LOAD = """
import sys, torch
from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.tuning import quantization_config
dtype = getattr(torch, sys.argv[2])
loaded = load_model(sys.argv[1], dtype=dtype, quantization_config=quantization_config(dtype) if sys.argv[3] == "4bit" else None)
with torch.no_grad():
    total = sum(float(p.float().sum()) for p in loaded.model.parameters() if p.is_floating_point())
rss = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")][0]
print(f"RESIDENT {rss / 2**20:.3f}")
"""

LOADS = [
    ("hf", "float32", "-"),
    ("hf", "bfloat16", "-"),
    ("hf", "float32", "4bit"),
    ("original", "float32", "-"),
    ("original", "bfloat16", "-"),
]


def models(work: Path) -> dict[str, Path]:
    """The real-1b HF-layout folder (cached by train.py) and its original-layout copy in bfloat16 (cached here)."""
    from mini_internvl_adapt.models.tiny import cache_dir

    hf = build_real("real-1b", cache_dir() / "models" / "bench-real-1b")
    original = cache_dir() / "models" / "bench-real-1b-original"
    if not (original / "config.json").is_file():
        command = [sys.executable, "-m", "mini_internvl_adapt.cli", "convert-checkpoint", "--to", "original"]
        command += ["--model", str(hf), "--out", str(original), "--dtype", "bf16"]
        subprocess.run(command, check=True, capture_output=True)
    return {"hf": hf, "original": original}


def lora_run(work: Path, model: Path) -> Path:
    """A LoRA run of the model: one training step, its final/ adapter (made once per benchmark run)."""
    run = work / "lora-run"
    data = make_dataset(work / "data", n=4, image_size=(448, 448))
    command = [sys.executable, "-m", "mini_internvl_adapt.cli", "train", "--config"]
    command += [str(REPO / "configs" / "tiny" / "lora.yaml"), "--model", str(model), "--data", str(data)]
    command += ["--out", str(run), "--max-steps", "1", "--batch-size", "1", "--max-tiles", "1"]
    command += ["train.progress_bar=false", "model.dtype=float32"]
    subprocess.run(command, check=True, capture_output=True)
    return run


def measure(command: list[str], env: dict[str, str] | None, cwd: Path) -> dict[str, Any]:
    """Peak RSS (GiB), the resident memory a load printed, wall seconds, or the error."""
    started = time.perf_counter()
    code, output, peak = run_measured(command, env, cwd)  # not the repository: PYTHONPATH must win
    wall = time.perf_counter() - started
    if code != 0:
        return {"error": output[-800:]}
    resident = [float(line.split()[1]) for line in output.splitlines() if line.startswith("RESIDENT ")]
    return {
        "peak_gib": peak / 2**30,
        "resident_gib": resident[-1] if resident else None,
        "seconds": round(wall, 1),
    }


def run_cases(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every case, the before copy (if given) just before the current code."""
    variants: list[tuple[str, dict[str, str] | None]] = [("current", None)]
    if args.before_src is not None:
        variants.insert(0, ("before", {**os.environ, "PYTHONPATH": str(args.before_src.resolve())}))
    folders = models(work)
    cases: list[tuple[str, list[str]]] = []
    if "load" in args.cases:
        for layout, dtype, quant in LOADS:
            command = [sys.executable, "-c", _LOAD, str(folders[layout]), dtype, quant]
            cases.append(
                (
                    f"load {layout} ({'stored bf16' if layout == 'original' else 'stored fp32'}) as "
                    f"{'4-bit' if quant == '4bit' else dtype}",
                    command,
                )
            )
    if "export" in args.cases:
        run = lora_run(work, folders["hf"])
        command = [sys.executable, "-m", "mini_internvl_adapt.cli", "export", "--checkpoint", str(run)]
        # {code}: each variant writes its own folder (code before #16 has no --overwrite).
        cases.append(
            ("export --merge-lora (bf16)", [*command, "--out", str(work / "export-{code}"), "--merge-lora"])
        )
    rows = []
    for name, command in cases:
        for code, env in variants:
            print(f"{name} [{code}] ...", file=sys.stderr, flush=True)
            filled = [part.replace("{code}", code) for part in command]
            row = {"case": name, "code": code, **measure(filled, env, work)}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table."""
    lines = [
        "# Load and export memory (`python benchmarks/load_memory.py`)",
        "",
        f"Machine: {meta['machine']}; {meta['date']}, load average {meta['load_average']}. Real Mini-InternVL2-1B "
        "geometry, random weights. Peak: the process's ru_maxrss (imports included, about 1 GiB); resident: "
        "after the load with every weight touched once.",
        "",
        "| case | code | peak RSS GiB | resident after GiB | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['code']} | failed: {r['error'].splitlines()[-1][:100]} | | |")
            continue
        resident = "-" if r["resident_gib"] is None else f"{r['resident_gib']:.2f}"
        lines.append(f"| {r['case']} | {r['code']} | {r['peak_gib']:.2f} | {resident} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="load,export", help="comma list of load, export")
    parser.add_argument(
        "--before-src", type=Path, help="a copy of the package before a change (see train.py)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mia-load-"))
    try:
        rows = run_cases(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "machine": f"{cpu_model()}, {os.cpu_count()} CPU cores",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": load_average(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load_memory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    text = markdown(rows, meta)
    (args.out / "load_memory.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
