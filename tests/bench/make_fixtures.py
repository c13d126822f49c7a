"""Write small files in exactly the official benchmark formats, tiny images, and answers to score.

Usage: ``python tests/bench/make_fixtures.py OUT``. The tests call `make_fixtures` into a temporary folder.
Everything is fixed by the seed: the official scoring numbers committed in tests/bench/test_bench_scoring.py
were computed on exactly these files and answers.

Layout (the official one):

    OUT/InternVL-Domain-Adaptation-Data/val/{drivelm_val.jsonl, rsvqa_l_test_instruct.json,
        rsvqa_h_test_1_instruct.json, rsvqa_h_test_2_instruct.json, dior_rsvg_test.json, MME_RealWorld.json}
    OUT/InternVL-Domain-Adaptation-Data/images/{drivelm/stitch, RSVQA_L/Images_LR, RSVQA-H/Data,
        DIOR-RSVG/JPEGImages, MME-RealWorld/data/AutonomousDriving}/...
    OUT/GMAI-MMBench_VAL.tsv               VLMEvalKit TSV with base64 images
    OUT/drivelm_challenge_tags.json        DriveLM challenge-format questions with their metric tags
    OUT/predictions/<benchmark>.json       {id: raw answer}
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import sys
from pathlib import Path

from PIL import Image

SEED = 1234
ROOT = "InternVL-Domain-Adaptation-Data"


def _image(path: Path, rng: random.Random, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = tuple(rng.randrange(256) for _ in range(len(mode)))
    Image.new(mode, size, color).save(path)


def _png_base64(rng: random.Random, mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, (6, 4), tuple(rng.randrange(256) for _ in range(len(mode)))).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")


def _rsvqa(root: Path, rng: random.Random, name: str, image_dir: str, types: list[str]) -> dict[str, str]:
    """One RSVQA file (and its images); returns the answers to score."""
    answers = {
        "presence": ["yes", "no"],
        "comp": ["yes", "no"],
        "rural_urban": ["rural", "urban"],
        "count": ["0", "3", "57", "250", "4000"],
        "area": ["0m2", "12m2", "850m2", "1200m2", "70000m2"],
    }
    entries, preds = [], {}
    for i in range(14):
        qtype = types[i % len(types)]
        truth = rng.choice(answers[qtype])
        qid = 1000 + 7 * i
        image = f"{i % 5}.tif" if "L" in image_dir else f"{i % 5}.png"
        _image(root / "images" / image_dir / image, rng)
        entries.append(
            {"id": qid, "image": image, "question": f"Is there a {qtype} thing {i}?", "gt_answer": truth,
             "type": qtype}
        )  # fmt: skip
        pick = rng.random()
        if pick < 0.35:
            preds[str(qid)] = truth
        elif pick < 0.5:
            preds[str(qid)] = truth.upper() if qtype not in ("count", "area") else truth.rstrip("m2") + " "
        elif pick < 0.6:
            preds[str(qid)] = truth + "."
        elif pick < 0.9:
            preds[str(qid)] = rng.choice(answers[qtype]).rstrip("m2" if rng.random() < 0.5 else "")
    # Quirks: "12m2" strips to "1" (rstrip of characters), a count answer that is no integer, a missing one.
    entries[0].update(type="area", gt_answer="12m2")
    preds[str(entries[0]["id"])] = "5"
    entries[1].update(type="count", gt_answer="0")
    preds[str(entries[1]["id"])] = "zero"
    preds.pop(str(entries[2]["id"]), None)
    _dump(root / "val" / name, entries)
    return preds


def _dior(root: Path, rng: random.Random) -> dict[str, str]:
    entries, preds = [], {}
    for i in range(12):
        width, height = rng.choice([(800, 800), (640, 480)])
        x1, y1 = rng.randrange(0, width // 2), rng.randrange(0, height // 2)
        box = [x1, y1, x1 + rng.randrange(20, width // 2), y1 + rng.randrange(20, height // 2)]
        image = f"DIOR-RSVG/JPEGImages/{i:05d}.jpg"
        _image(root / "images" / image, rng)
        entries.append(
            {"image": image, "prompt": f"the storage tank number {i}", "bbox": box, "size": [width, height]}
        )
        norm = [round(box[0] / width * 1000), round(box[1] / height * 1000), round(box[2] / width * 1000),
                round(box[3] / height * 1000)]  # fmt: skip
        jitter = [v + rng.randrange(-40, 41) for v in norm]
        preds[str(i)] = rng.choice(
            [f"<ref>tank</ref><box>[[{', '.join(map(str, norm))}]]</box>", f"[[{','.join(map(str, jitter))}]]",
             f"[[{norm[0]}, {norm[1]}, {norm[2] + 300}, {norm[3] + 300}]]"]
        )  # fmt: skip
    preds["3"] = "[[10, 20, 30, 40], [50, 60, 70, 80]]"  # two boxes: the official regex stops after the first
    preds["4"] = "no box here"
    preds["5"] = "[100, 100, 400, 400]"  # single brackets: json gives a number, the official code fails
    preds["6"] = "[[-50, -50, 1200, 1200]]"  # clipped to the image
    preds["7"] = "[[a, b, c, d]]"
    preds["8"] = "[[500.5, 300.25, 900, 950.0]]"
    preds.pop("9")
    _dump(root / "val" / "dior_rsvg_test.json", entries)
    return preds


def _mme(root: Path, rng: random.Random) -> dict[str, str]:
    entries, preds = [], {}
    outputs = ["D", "The best answer is B", "(C) many cars", "Based on the image, it is A.", "e",
               "there are many cars and one truck", "", "The answer C", "Best option: (E)",
               "I cannot see anything relevant in this picture at all so it is hard to say anything"]  # fmt: skip
    for i in range(13):
        subtask = "Autonomous_Driving" if i % 4 else "Monitoring"
        image = f"AutonomousDriving/nuScenes/frame_{i}.jpg"
        _image(root / "images" / "MME-RealWorld" / "data" / image, rng)
        task = rng.choice(["Perception", "Reasoning"])
        category = rng.choice(["Objects_Identify", "Intention", "Attention"])
        qid = f"{task}/{subtask}/{category}/{i:04d}"
        choices = [
            f"({c}) There are {n} cars and one truck."
            for c, n in zip("ABCDE", ["many", "two", "no", "5", "8"])
        ]
        entries.append({"Question_id": qid, "Question Type": "Multiple Choice", "Image": image,
                        "Text": f"What is in front of the ego car {i}?", "Answer choices": choices,
                        "Ground truth": rng.choice("ABCDE"), "Task": task, "Subtask": subtask, "Category": category})  # fmt: skip
        preds[qid] = outputs[i % len(outputs)]
    preds.pop(entries[1]["Question_id"])
    _dump(root / "val" / "MME_RealWorld.json", entries)
    return preds


_CAMS = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]


def _drivelm(root: Path, out: Path, rng: random.Random) -> dict[str, str]:
    lines, preds, challenge = [], {}, {}
    c1 = "<c1,CAM_BACK,1088.3,497.5>"
    questions = [
        ("What are the important objects in the current scene?", [2]),
        (
            f"What is the moving status of object {c1}? Please select the correct answer from the following options: A. Going ahead. B. Turn left.",
            [0],
        ),  # noqa: E501
        (
            "What object should the ego vehicle notice first when the ego vehicle is getting to the next possible location?",
            [3],
        ),  # noqa: E501
        (f"Would {c1} be in the moving direction of the ego vehicle?", [0]),
        (f"What actions could the ego vehicle take based on {c1}?", [1]),
    ]
    # Scene 0 writes its first answer in camera pixels (post-processing leaves it), scene 1 on the grid.
    first = [f"There is a brown SUV {c1} and a car <c4,CAM_FRONT,800.0,450.0>.",
             "There is a brown SUV <c1,CAM_BACK,[560.1,776.3]> and a car <c4,CAM_FRONT,[500.0,250.0]>."]  # fmt: skip
    for s in range(2):
        scene, frame = f"{s:02d}" * 16, f"{s + 5:02d}" * 16
        _image(root / "images" / "drivelm" / "stitch" / f"{scene}_{frame}.jpg", rng, (12, 4))
        truths = [first[s], "B", "Firstly notice that <c1,CAM_BACK,[560.0,776.0]>.", "No.", "Slow down."]
        qa = []
        for i, (question, tag) in enumerate(questions):
            qid = f"{scene}_{frame}_{i}"
            line = {"id": qid, "image": f"{scene}_{frame}.jpg", "question_old": question,
                    "conversations": [{"from": "human", "value": "<image>\n" + question + " "},
                                      {"from": "gpt", "value": truths[i] + " "}]}  # fmt: skip
            if s == 0:
                line["tag"] = tag
            lines.append(line)
            qa.append({"Q": question, "A": "", "tag": tag})
            preds[qid] = rng.choice([truths[i], "A", "Yes.", "Notice <c1,CAM_BACK,[561.5, 777]> first."])
        challenge[scene] = {"key_frames": {frame: {"QA": {"perception": qa[:2], "prediction": qa[2:4], "planning": qa[4:]}}}}  # fmt: skip
    preds[lines[0]["id"]] = (
        "Cars <c1,CAM_BACK,[560,776]> and <c2, CAM_FRONT, [10,20]> and <c3,CAM_FRONT_LEFT,[.5,3]> "
        "<c4,CAM_FRONT,[ 500 , 250.0 ]> <c5,CAM_BACK_RIGHT,[-20,1200]>."
    )
    preds[lines[1]["id"]] = "B "
    preds[lines[2]["id"]] = "Firstly notice that <c1,CAM_BACK,[560.4,776.1]>, then <c9,CAM_BACK,[100,100]>."
    preds[lines[5]["id"]] = "Cars <c1,CAM_BACK,[560.1,776.3]>."
    preds.pop(lines[6]["id"])
    path = root / "val" / "drivelm_val.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    _dump(out / "drivelm_challenge_tags.json", challenge)
    return preds


def _gmai(out: Path, rng: random.Random) -> dict[str, str]:
    header = ["index", "question", "hint", "A", "B", "C", "D", "E", "answer", "image", "category", "modality",
              "clinical VQA task", "department", "perceptual granularity"]  # fmt: skip
    rows, preds = [], {}
    answers = ["A", "The answer is B", "B. Pneumonia", "I think it's C because of the opacity in the lower lobe",
               "pneumonia", "Z", "Cannot determine the answer", "A B", "The correct answer is **d**", "c",
               "Answer: (D)", "normal and pneumonia"]  # fmt: skip
    for i in range(12):
        index = 100 + 3 * i
        options = ["Pneumonia", "Normal", "None" if i == 2 else "Tumor", "Fracture", "5" if i == 4 else ""]
        image = _png_base64(rng, "RGBA" if i == 1 else "RGB")
        if i == 6:
            image = str(100 + 3 * 5)  # VLMEvalKit: a short image cell names the row holding the image
        if i == 9:
            image = ""  # no image: VLMEvalKit drops the row; here it is skipped and counted wrong
        question = f"What does this chest X-ray show {i}?" if i != 7 else f"这张图显示了什么 {i}?"
        rows.append([str(index), question, "Look closely." if i == 3 else "", *options[:4], options[4],
                     rng.choice("ABCD"), image, rng.choice(["Disease Diagnosis", "Organ Recognition"]), "X-Ray",
                     rng.choice(["Disease Diagnosis", "Attribute Recognition"]), rng.choice(["Pulmonary", "Orthopedics"]),
                     rng.choice(["Image Level", "Box Level"])])  # fmt: skip
        preds[str(index)] = answers[i]
    preds.pop("133")
    with (out / "GMAI-MMBench_VAL.tsv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return preds


def make_fixtures(out: Path, seed: int = SEED) -> Path:
    """Write every fixture file under `out` and return `out`."""
    rng = random.Random(seed)
    out = Path(out)
    root = out / ROOT
    predictions = {
        "rsvqa-lr": _rsvqa(root, rng, "rsvqa_l_test_instruct.json", "RSVQA_L/Images_LR",
                           ["presence", "comp", "rural_urban", "count"]),
        "rsvqa-hr-test1": _rsvqa(root, rng, "rsvqa_h_test_1_instruct.json", "RSVQA-H/Data",
                                 ["presence", "comp", "count", "area"]),
        "rsvqa-hr-test2": _rsvqa(root, rng, "rsvqa_h_test_2_instruct.json", "RSVQA-H/Data",
                                 ["presence", "comp", "count", "area"]),
        "dior-rsvg": _dior(root, rng),
        "mme-realworld-ad": _mme(root, rng),
        "drivelm-val": _drivelm(root, out, rng),
        "gmai-mmbench": _gmai(out, rng),
    }  # fmt: skip
    for name, preds in predictions.items():
        _dump(out / "predictions" / f"{name}.json", preds)
    return out


if __name__ == "__main__":
    make_fixtures(Path(sys.argv[1]))
