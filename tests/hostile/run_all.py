"""Run every command on every hostile input of make_inputs.py in this one process, and check each status.

    python tests/hostile/run_all.py WORK [--big-mb 50] [--memory-gb 3]

With --memory-gb N the process limits its own address space (RLIMIT_AS), once torch, Lightning and
transformers are imported, to what they map plus N GB: no input may make a command use more than that.
(Importing torch alone maps over 3 GB of address space for its CUDA libraries, little of it memory; the
limit counts what the commands add.) Prints one JSON object: each case, the status it gave and the status it
should give (-1: out of memory); exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import resource
import shutil
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401 - mapped before the limit is set, as a command would map it
import torch
import transformers  # noqa: F401
from make_inputs import make_inputs

from mini_internvl_adapt.cli import main


def _bin_only_model(out: Path) -> Path:
    """A copy of the tiny model whose weights are only a pickled pytorch_model.bin."""
    from safetensors.torch import load_file

    from mini_internvl_adapt.models.tiny import tiny_model_path

    model = Path(shutil.copytree(tiny_model_path("tiny"), out))
    for weights in model.glob("*.safetensors"):
        torch.save(load_file(str(weights)), model / "pytorch_model.bin")
        weights.unlink()
    return model


def mapped_bytes() -> int:
    """The address space this process has mapped (VmSize)."""
    with open("/proc/self/status", encoding="ascii") as f:
        found = re.search(r"VmSize:\s+(\d+) kB", f.read())
    assert found is not None
    return int(found.group(1)) * 1024


def cases(paths: dict[str, Path], work: Path) -> list[tuple[str, list[str], int]]:
    """(name, argv, expected status) of every hostile case, in the order they run."""
    data, test, preds = paths["data"], str(paths["data"] / "test.jsonl"), str(paths["other_ids_predictions"])
    score = ["score", "--domain", "medical", "--data"]
    train = ["train", "--model", "tiny", "--max-steps", "1", "--batch-size", "2", "train.progress_bar=false"]
    evaluate = ["eval", "--domain", "medical", "--model", "tiny", "--max-new-tokens", "2"]
    run = work / "run"
    return [
        ("score into the test set", [*score, test, "--predictions", preds, "--out", test], 2),
        (
            "score over a user's file",
            [*score, test, "--predictions", preds, "--out", str(paths["user_file"])],
            2,
        ),
        (
            "score ids shared with no sample",
            [*score, test, "--predictions", preds, "--out", str(work / "m.json")],
            0,
        ),
        ("score latin-1 predictions", [*score, test, "--predictions", str(paths["latin1_predictions"])], 2),
        ("score nested predictions", [*score, test, "--predictions", str(paths["nested_predictions"])], 2),
        ("score a nested JSONL line", [*score, str(paths["nested_jsonl"]), "--predictions", preds], 2),
        (
            "convert nothing",
            [
                "convert",
                "--domain",
                "medical",
                "--source",
                str(paths["nothing_manifest"]),
                "--out",
                str(work / "nothing"),
                "--workers",
                "0",
            ],
            2,
        ),  # fmt: skip
        (
            "convert special strings",
            [
                "convert",
                "--domain",
                "medical",
                "--source",
                str(paths["special_medical"]),
                "--out",
                str(work / "special"),
                "--workers",
                "0",
            ],
            0,
        ),  # fmt: skip
        (
            "preview a 50 MB word",
            ["preview", "--data", str(paths["huge_train"]), "--out", str(work / "p.png")],
            0,
        ),
        ("preview a bomb", ["preview", "--data", str(paths["bomb_train"]), "--out", str(work / "b.png")], 2),
        (
            "preview a symlink out",
            ["preview", "--data", str(paths["symlink_test"]), "--out", str(work / "s.png")],
            2,
        ),
        (
            "train on 50 MB words and 3000 images",
            [*train, "--data", str(paths["huge"]), "--out", str(run), "--checkpoint-every", "1"],
            0,
        ),  # fmt: skip
        ("train on a bomb", [*train, "--data", str(paths["bomb_train"]), "--out", str(work / "r1")], 2),
        (
            "train on a bomb of small sizes",
            [*train, "--data", str(paths["bomb_sized"]), "--out", str(work / "r2")],
            2,
        ),
        (
            "train through a symlink out",
            [*train, "--data", str(paths["symlink_test"]), "--out", str(work / "r3")],
            2,
        ),
        (
            "train on a nested meta file",
            [*train, "--data", str(paths["nested_meta"]), "--out", str(work / "r4")],
            2,
        ),
        ("train into a user's folder", [*train, "--data", str(data), "--out", str(paths["user_folder"])], 2),
        (
            "eval a 50 MB question and 3000 images",
            [*evaluate, "--data", str(paths["huge_test"]), "--out", str(work / "e1")],
            0,
        ),  # fmt: skip
        ("eval a bomb", [*evaluate, "--data", str(paths["bomb_test"]), "--out", str(work / "e2")], 2),
        (
            "eval a symlink out",
            [*evaluate, "--data", str(paths["symlink_test"]), "--out", str(work / "e3")],
            2,
        ),
        (
            "eval a model of pickled weights",
            [
                "eval",
                "--domain",
                "medical",
                "--data",
                test,
                "--model",
                str(work / "binonly"),
                "--out",
                str(work / "e4"),
            ],
            2,
        ),  # fmt: skip
        (
            "resume from a pickle of os.system",
            ["train", "--resume", str(work / "evil"), "--max-steps", "2"],
            2,
        ),
    ]


def run_all(work: Path, big_mb: int = 50) -> dict[str, dict[str, int]]:
    """Make the inputs under `work` and run every case; returns name -> {status, expected}."""
    paths = make_inputs(work / "inputs", seed=0, big_mb=big_mb)
    _bin_only_model(work / "binonly")
    results: dict[str, dict[str, int]] = {}
    for name, argv, expected in cases(paths, work):
        if name.startswith("resume") and (work / "run" / "checkpoints").is_dir():
            # The run trained above, its checkpoint replaced by the pickle.
            shutil.copytree(work / "run", work / "evil")
            shutil.copyfile(paths["evil_checkpoint"], work / "evil" / "checkpoints" / "last.ckpt")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                status = main(argv)
            except MemoryError:
                status = -1
        results[name] = {"status": status, "expected": expected}
        if status != expected:
            results[name]["stderr"] = err.getvalue()[-2000:]  # type: ignore[assignment]
    results["os.system never ran"] = {"status": int(not paths["evil_marker"].exists()), "expected": 1}
    return results


def main_() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--memory-gb", type=float, help="address space the commands may add, in GB")
    args = parser.parse_args()
    if args.memory_gb is not None:
        limit = mapped_bytes() + int(args.memory_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = run_all(args.work, args.big_mb)
    print(json.dumps(results, indent=1))
    return int(any(r["status"] != r["expected"] for r in results.values()))


if __name__ == "__main__":
    sys.exit(main_())
