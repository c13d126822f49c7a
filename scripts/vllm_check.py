"""vLLM serves our transformers-native export as transformers runs it: the same greedy tokens (issue #18).

For the tiny Qwen2 model and a real-size random Mini-InternVL2-1B (InternViT-300M + Qwen2-0.5B geometry, see
benchmarks/train.py), the hf export (written by `adapt convert-checkpoint --to hf`, the writer `adapt export` uses)
answers a few prompts (text only, one tile, several tiles) greedily in vLLM and in transformers (bf16, on the GPU).
Every answer must have the same token ids. Random weights make near-ties likely, where bf16 rounding in two
different kernels may pick either token: a divergence counts as a near-tie, not a failure, when transformers'
own top-2 logit gap at that step is below --tie-margin; the report says how many answers matched whole.

Run only where a GPU and vLLM are present: otherwise it says so and exits 0 (skipped). Writes vllm_check.json
to --out. Exit status 1 when an answer differs at a step with a clear margin, or a model fails to load or run.

    python scripts/vllm_check.py --out "$OUT" [--models tiny,real-1b] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ("Describe the image.", "What is the weather like?", "Is there a car in front of the vehicle?")


def available() -> str | None:
    """Why the check cannot run here (None: a GPU and vLLM are present)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed"
    return None


def make_exports(root: Path, models: list[str]) -> dict[str, Path]:
    """The hf exports to check: the tiny Qwen2 and a real-size random 1B, both in bf16."""
    from mini_internvl_adapt.export.converter import convert_checkpoint

    exports = {}
    for name in models:
        if name == "tiny":
            source: str | Path = "tiny-qwen2"
        elif name == "real-1b":
            sys.path.insert(0, str(REPO))
            from benchmarks.train import build_real

            source = build_real("real-1b", root / "real-1b-source")
        else:
            raise SystemExit(f"unknown model {name}; choose tiny, real-1b")
        exports[name] = convert_checkpoint(source, root / f"{name}-hf", to="hf", dtype="bf16")
    return exports


def prompts(export: Path) -> list[dict[str, Any]]:
    """(prompt text, image or None) per case, rendered by the export's own processor chat template."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(export))
    cases = [(QUESTIONS[1], None), (QUESTIONS[0], (448, 448)), (QUESTIONS[2], (896, 448))]
    out = []
    for question, size in cases:
        content: list[dict[str, str]] = [{"type": "text", "text": question}]
        image = None
        if size is not None:
            content.insert(0, {"type": "image"})
            image = Image.effect_mandelbrot(size, (-2.0, -1.2, 1.0, 1.2), 50).convert("RGB")
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        out.append({"prompt": text, "image": image})
    return out


def run_vllm(export: Path, cases: list[dict[str, Any]], max_new_tokens: int) -> list[list[int]]:
    """Greedy token ids from vLLM (bf16); min_tokens keeps the answers full length as in transformers."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(export),
        dtype="bfloat16",
        max_model_len=4096,
        limit_mm_per_prompt={"image": 1},
        gpu_memory_utilization=0.4,
        enforce_eager=True,
        seed=0,
    )
    params = SamplingParams(
        temperature=0.0, max_tokens=max_new_tokens, min_tokens=max_new_tokens, detokenize=False
    )
    requests = []
    for case in cases:
        request: dict[str, Any] = {"prompt": case["prompt"]}
        if case["image"] is not None:
            request["multi_modal_data"] = {"image": case["image"]}
        requests.append(request)
    outputs = llm.generate(requests, params)
    ids = [list(o.outputs[0].token_ids) for o in outputs]
    del llm
    gc.collect()
    return ids


def run_transformers(
    export: Path, cases: list[dict[str, Any]], max_new_tokens: int, device: str = "cuda"
) -> list[dict[str, Any]]:
    """Greedy token ids from transformers (bf16, on `device`) and the top-2 logit gap at every step."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(export), dtype=torch.bfloat16).to(device).eval()
    processor = AutoProcessor.from_pretrained(
        str(export), image_processor=AutoImageProcessor.from_pretrained(str(export), backend="pil")
    )
    results = []
    for case in cases:
        images = [case["image"]] if case["image"] is not None else None
        inputs = processor(text=case["prompt"], images=images, return_tensors="pt").to(device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
        with torch.no_grad():
            out = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                output_scores=True,
                return_dict_in_generate=True,
            )
        new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        gaps = []
        for scores in out.scores:
            top = torch.topk(scores[0].float(), 2).values
            gaps.append(float(top[0] - top[1]))
        results.append({"ids": new, "gaps": gaps})
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return results


def compare(vllm_ids: list[int], ours: dict[str, Any], margin: float) -> dict[str, Any]:
    """Same tokens, or the first divergence and whether it is a near-tie in transformers' logits."""
    for step, (a, b) in enumerate(zip(vllm_ids, ours["ids"], strict=False)):
        if a != b:
            gap = ours["gaps"][step]
            return {
                "match": False,
                "step": step,
                "vllm": a,
                "transformers": b,
                "gap": gap,
                "near_tie": gap < margin,
            }
    same_length = len(vllm_ids) == len(ours["ids"])
    return {"match": same_length, "near_tie": False, "lengths": [len(vllm_ids), len(ours["ids"])]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for vllm_check.json")
    parser.add_argument("--models", default="tiny,real-1b", help="comma list of tiny, real-1b")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument(
        "--tie-margin", type=float, default=0.05, help="top-2 logit gap counted as a near-tie"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    reason = available()
    if reason is not None:
        print(f"vLLM check skipped: {reason}")
        (args.out / "vllm_check.json").write_text(json.dumps({"skipped": reason}, indent=2))
        return 0
    report: dict[str, Any] = {"models": {}}
    failed = False
    with tempfile.TemporaryDirectory(prefix="vllm-check-") as tmp:
        exports = make_exports(Path(tmp), [m.strip() for m in args.models.split(",") if m.strip()])
        for name, export in exports.items():
            try:
                cases = prompts(export)
                vllm_ids = run_vllm(export, cases, args.max_new_tokens)
                ours = run_transformers(export, cases, args.max_new_tokens)
            except Exception as exc:  # noqa: BLE001 - a model vLLM cannot load or run is a failed check
                report["models"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                failed = True
                print(f"{name}: FAILED to run: {type(exc).__name__}: {exc}")
                continue
            rows = [compare(v, o, args.tie_margin) for v, o in zip(vllm_ids, ours, strict=True)]
            bad = [r for r in rows if not r["match"] and not r["near_tie"]]
            failed |= bool(bad)
            report["models"][name] = {
                "cases": rows,
                "vllm": vllm_ids,
                "transformers": [o["ids"] for o in ours],
            }
            whole = sum(r["match"] for r in rows)
            ties = sum(r["near_tie"] for r in rows)
            print(
                f"{name}: {whole}/{len(rows)} answers token-identical, {ties} near-tie divergences, {len(bad)} real"
            )
    (args.out / "vllm_check.json").write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
