"""Reading the official benchmark files: settings, ids and prompts as the official readers make them, bad
entries named by file + entry + problem, missing images skipped.

The expected prompts and ids below were produced by the official readers themselves: the Dataset classes of
InternVL's internvl_chat/eval/domain_specific/*/evaluate.py (OpenGVLab/InternVL mirror, HEAD) executed with
stubbed torch/model imports on these fixture files, and VLMEvalKit's build_multi_choice_prompt +
reorganize_prompt + ImageBaseDataset's index/image handling (open-compass/VLMEvalKit mirror, commit e8e78f05)
on the GMAI-MMBench fixture TSV read by pandas 3.1.1. The temporary script that ran them lived outside the
repository and was deleted; only its outputs are committed here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BenchFiles

from mini_internvl_adapt.bench import (
    BENCHMARKS,
    BenchmarkDataError,
    GenerationSettings,
    UnknownBenchmarkError,
    get_benchmark,
    read_benchmark,
)
from mini_internvl_adapt.bench.tsv import iter_tsv, pandas_cells
from mini_internvl_adapt.errors import InputError

DRIVE0 = "00000000000000000000000000000000_05050505050505050505050505050505"
RS_SUFFIX = "\nAnswer the question using a single word or phrase."
MME_PROMPT = (
    "Select the best answer to the above multiple-choice question based on the image.             Respond with "
    "only the letter (A, B, C, D, or E) of the correct option. \nThe best answer is:"
)
MCQ = "\nAnswer with the option's letter from the given choices directly."


def test_the_table_has_the_official_generation_settings() -> None:
    # max_new_tokens / min_new_tokens: ds_collections of each evaluate.py; max_num 12 + dynamic: the InternVL
    # domain-adaptation evaluation commands (evaluate.sh ... --dynamic --max-num 12; DriveLM hard-codes it);
    # thumbnail: the model config (true for Mini-InternVL2). GMAI-MMBench: VLMEvalKit InternVLChat V2.0.
    expected = {
        "drivelm-val": GenerationSettings(max_new_tokens=200, max_num=12, min_new_tokens=1),
        "rsvqa-lr": GenerationSettings(max_new_tokens=50, max_num=12, min_new_tokens=1),
        "rsvqa-hr-test1": GenerationSettings(max_new_tokens=50, max_num=12, min_new_tokens=1),
        "rsvqa-hr-test2": GenerationSettings(max_new_tokens=50, max_num=12, min_new_tokens=1),
        "dior-rsvg": GenerationSettings(max_new_tokens=200, max_num=12, min_new_tokens=1),
        "gmai-mmbench": GenerationSettings(max_new_tokens=4096, max_num=6, min_new_tokens=0),
        "mme-realworld-ad": GenerationSettings(max_new_tokens=100, max_num=12, min_new_tokens=1),
    }
    assert {name: b.generation for name, b in BENCHMARKS.items()} == expected
    for settings in expected.values():
        assert (
            settings.use_thumbnail and settings.dynamic and not settings.do_sample and settings.num_beams == 1
        )
    assert expected["rsvqa-lr"].generate_kwargs() == {
        "max_new_tokens": 50, "do_sample": False, "num_beams": 1, "min_new_tokens": 1,
    }  # fmt: skip
    assert expected["gmai-mmbench"].generate_kwargs() == {
        "max_new_tokens": 4096,
        "do_sample": False,
        "num_beams": 1,
    }


def test_the_table_names_files_domains_and_paper_keys() -> None:
    files = {name: b.official_file for name, b in BENCHMARKS.items()}
    assert files == {
        "drivelm-val": "val/drivelm_val.jsonl",
        "rsvqa-lr": "val/rsvqa_l_test_instruct.json",
        "rsvqa-hr-test1": "val/rsvqa_h_test_1_instruct.json",
        "rsvqa-hr-test2": "val/rsvqa_h_test_2_instruct.json",
        "dior-rsvg": "val/dior_rsvg_test.json",
        "gmai-mmbench": "GMAI-MMBench_VAL.tsv",
        "mme-realworld-ad": "val/MME_RealWorld.json",
    }
    assert {n: b.domain for n, b in BENCHMARKS.items()} == {
        "drivelm-val": "driving", "rsvqa-lr": "remote-sensing", "rsvqa-hr-test1": "remote-sensing",
        "rsvqa-hr-test2": "remote-sensing", "dior-rsvg": "remote-sensing", "gmai-mmbench": "medical",
        "mme-realworld-ad": "driving",
    }  # fmt: skip
    paper = {n: [(p.key, p.metric, p.scale) for p in b.paper] for n, b in BENCHMARKS.items()}
    assert paper["rsvqa-lr"] == [("rsvqa_lr_avg", "accuracy_without_count_area", 100.0)]
    assert paper["rsvqa-hr-test2"] == [("rsvqa_hr_test2", "accuracy_without_count_area", 100.0)]
    assert paper["dior-rsvg"] == [("dior_rsvg_acc@0.5", "acc_at_0_5", 100.0)]
    assert paper["drivelm-val"][0] == ("final_score", "final", 1.0)
    from mini_internvl_adapt.models.published import list_published

    registry_keys = {k for m in list_published() for k in m.scores}
    assert {p.key for b in BENCHMARKS.values() for p in b.paper} <= registry_keys
    with pytest.raises(UnknownBenchmarkError, match="rsvqa-lr"):
        get_benchmark("rsvqa")


def test_rsvqa_ids_prompts_and_images_are_the_official_ones(bench_files: BenchFiles) -> None:
    read = read_benchmark("rsvqa-lr", bench_files.data("rsvqa-lr"))
    ids = ["1000", "1007", "1014", "1021", "1028", "1035", "1042", "1049", "1056", "1063", "1070", "1077",
           "1084", "1091"]  # fmt: skip
    assert [r.id for r in read.records] == ids
    first = read.records[0]
    assert first.question == "Is there a presence thing 0?" + RS_SUFFIX
    assert first.prompt == "<image>\n" + first.question  # model.chat prepends the placeholder
    assert first.images == (str(bench_files.root / "images/RSVQA_L/Images_LR/0.tif"),)
    assert (first.answer, first.fields["type"]) == ("12m2", "area")
    assert (first.max_num, first.use_thumbnail, first.max_new_tokens) == (12, True, 50)
    hr = read_benchmark("rsvqa-hr-test2", bench_files.data("rsvqa-hr-test2"))
    assert hr.records[0].images == (str(bench_files.root / "images/RSVQA-H/Data/0.png"),)


def test_dior_rsvg_ids_are_positions_and_the_prompt_is_detect(bench_files: BenchFiles) -> None:
    read = read_benchmark("dior-rsvg", bench_files.data("dior-rsvg"))
    assert [r.id for r in read.records] == [str(i) for i in range(12)]
    assert read.records[3].question == "Detect the storage tank number 3"
    assert read.records[3].images == (str(bench_files.root / "images/DIOR-RSVG/JPEGImages/00003.jpg"),)
    entries = json.loads(bench_files.data("dior-rsvg").read_text())
    assert read.records[3].answer == entries[3]["bbox"]
    assert read.records[3].fields["size"] == entries[3]["size"]


def test_mme_realworld_keeps_the_driving_subset_with_the_official_prompt(bench_files: BenchFiles) -> None:
    read = read_benchmark("mme-realworld-ad", bench_files.data("mme-realworld-ad"))
    assert [r.id for r in read.records] == [
        "Reasoning/Autonomous_Driving/Attention/0001", "Perception/Autonomous_Driving/Intention/0002",
        "Perception/Autonomous_Driving/Objects_Identify/0003", "Reasoning/Autonomous_Driving/Intention/0005",
        "Reasoning/Autonomous_Driving/Objects_Identify/0006", "Reasoning/Autonomous_Driving/Intention/0007",
        "Reasoning/Autonomous_Driving/Attention/0009", "Perception/Autonomous_Driving/Attention/0010",
        "Reasoning/Autonomous_Driving/Objects_Identify/0011",
    ]  # fmt: skip
    record = read.records[1]
    assert record.question == (
        "What is in front of the ego car 2?选项如下所示:\n(A) There are many cars and one truck.\n"
        "(B) There are two cars and one truck.\n(C) There are no cars and one truck.\n"
        "(D) There are 5 cars and one truck.\n(E) There are 8 cars and one truck.\n" + MME_PROMPT
    )
    assert record.images == (
        str(bench_files.root / "images/MME-RealWorld/data/AutonomousDriving/nuScenes/frame_2.jpg"),
    )
    assert (record.max_num, record.max_new_tokens) == (12, 100)


def test_drivelm_reads_the_stripped_conversation(bench_files: BenchFiles) -> None:
    read = read_benchmark("drivelm-val", bench_files.data("drivelm-val"))
    assert len(read.records) == 10
    record = read.records[1]
    assert record.id == f"{DRIVE0}_1"
    assert record.question == (
        "<image>\nWhat is the moving status of object <c1,CAM_BACK,1088.3,497.5>? Please select the correct "
        "answer from the following options: A. Going ahead. B. Turn left."
    )
    assert record.prompt == record.question  # it carries its own <image>
    assert read.records[0].answer == (
        "There is a brown SUV <c1,CAM_BACK,1088.3,497.5> and a car <c4,CAM_FRONT,800.0,450.0>."
    )
    assert record.images == (str(bench_files.root / f"images/drivelm/stitch/{DRIVE0}.jpg"),)
    assert (record.max_num, record.max_new_tokens, record.generation.min_new_tokens) == (12, 200, 1)


def test_gmai_prompts_ids_and_images_are_vlmevalkits(bench_files: BenchFiles) -> None:
    read = read_benchmark("gmai-mmbench", bench_files.data("gmai-mmbench"))
    prompts = {r.id: r.prompt for r in read.all_records()}
    q = "<image>\nWhat does this chest X-ray show {}?\nA. Pneumonia\nB. Normal\n"
    assert prompts["100"] == q.format(0) + "C. Tumor\nD. Fracture" + MCQ
    assert prompts["106"] == q.format(2) + "D. Fracture" + MCQ  # option "None" is NA for pandas
    assert prompts["109"] == "<image>\nLook closely.\n" + q.format(3)[8:] + "C. Tumor\nD. Fracture" + MCQ
    assert prompts["112"] == q.format(4) + "C. Tumor\nD. Fracture\nE. 5.0" + MCQ  # a float64 column
    assert prompts["121"] == (
        "<image>\n这张图显示了什么 7?\nA. Pneumonia\nB. Normal\nC. Tumor\nD. Fracture\n请直接回答选项字母。"
    )
    assert list(prompts) == [str(100 + 3 * i) for i in range(12)]
    assert [s.record.id for s in read.skipped] == ["127"]  # no image in the row
    images = bench_files.out / "images" / "GMAI-MMBench_VAL"
    by_id = {r.id: r for r in read.records}
    assert by_id["118"].images == (str(images / "118.png"),)  # the row refers to row 115's image
    from PIL import Image

    with Image.open(images / "118.png") as ref, Image.open(images / "115.png") as own:
        assert ref.tobytes() == own.tobytes()
    with Image.open(images / "103.png") as rgba:  # VLMEvalKit converts RGBA to RGB when it decodes
        assert rgba.mode == "RGB"
    assert by_id["100"].max_num == 6 and by_id["100"].max_new_tokens == 4096


def test_limit_reads_the_first_entries(bench_files: BenchFiles) -> None:
    assert [r.id for r in read_benchmark("dior-rsvg", bench_files.data("dior-rsvg"), limit=3).records] == [
        "0", "1", "2",
    ]  # fmt: skip
    mme = read_benchmark("mme-realworld-ad", bench_files.data("mme-realworld-ad"), limit=2)
    assert [r.entry for r in mme.records] == [1, 2]
    with pytest.raises(InputError, match="limit"):
        read_benchmark("dior-rsvg", bench_files.data("dior-rsvg"), limit=-1)


def test_a_missing_image_is_a_skipped_entry(bench_files: BenchFiles) -> None:
    (bench_files.root / "images/DIOR-RSVG/JPEGImages/00004.jpg").unlink()
    read = read_benchmark("dior-rsvg", bench_files.data("dior-rsvg"))
    assert len(read.records) == 11 and read.total == 12
    assert [s.record.id for s in read.skipped] == ["4"]
    assert "00004.jpg" in read.skipped[0].reason
    elsewhere = read_benchmark(
        "dior-rsvg", bench_files.data("dior-rsvg"), images_dir=bench_files.out / "none"
    )
    assert len(elsewhere.skipped) == 12
    text_only = read_benchmark("dior-rsvg", bench_files.data("dior-rsvg"), check_images=False)
    assert (len(text_only.records), text_only.skipped, text_only.images_dir) == (12, [], None)


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_bad_rsvqa_entries_name_file_entry_and_problem(tmp_path: Path) -> None:
    good = {"id": 1, "image": "a.tif", "question": "q", "gt_answer": "yes", "type": "presence"}
    path = _write(
        tmp_path / "rs.json",
        [good, {**good, "id": "x1"}, {k: v for k, v in good.items() if k != "question"}, "text", {**good, "type": 3},
         {**good, "gt_answer": 5}, {**good, "id": 1}],
    )  # fmt: skip
    with pytest.raises(BenchmarkDataError) as caught:
        read_benchmark("rsvqa-lr", path)
    message = str(caught.value)
    assert str(path) in message
    assert (
        f"{path}: entry 1: 'id' must be an integer (the official script writes int(id)), got \"x1\""
        in message
    )
    assert "entry 2 (id '1'): missing 'question'" in message
    assert "entry 3: must be a JSON object, got str" in message
    assert "entry 4 (id '1'): 'type' must be a string, got 3" in message
    assert "entry 5 (id '1'): 'gt_answer' must be a string for type 'presence', got 5" in message
    assert "entry 6 (id '1'): duplicate id (entry 0 has it too)" in message
    assert [p.entry for p in caught.value.problems] == [1, 2, 3, 4, 5, 6]
    assert isinstance(caught.value, InputError)


def test_bad_files_of_each_reader_are_named(tmp_path: Path) -> None:
    dior = _write(tmp_path / "d.json", [{"image": "a.jpg", "prompt": "p", "bbox": [1, 2, 3], "size": [8, 8]}])
    with pytest.raises(BenchmarkDataError, match=r"entry 0: 'bbox' must be a list of 4 numbers"):
        read_benchmark("dior-rsvg", dior)
    mme = _write(
        tmp_path / "m.json",
        [{"Question_id": "q", "Subtask": "Autonomous_Driving", "Question Type": "Open", "Image": "i.jpg",
          "Text": "t", "Answer choices": ["(A) a"], "Ground truth": "A", "Task": "Planning", "Category": "c"},
         {"Question_id": "r", "Subtask": "Monitoring"}, {"Question_id": "s"}],
    )  # fmt: skip
    with pytest.raises(BenchmarkDataError) as caught:
        read_benchmark("mme-realworld-ad", mme)
    assert [str(p).split(": ", 1)[1] for p in caught.value.problems] == [
        "entry 0 (id 'q'): 'Question Type' must be \"Multiple Choice\", got \"Open\"",
        "entry 0 (id 'q'): 'Task' must be Perception or Reasoning, got \"Planning\"",
        "entry 2 (id 's'): missing 'Subtask'",
        "entry 2 (id 's'): missing 'Question Type'",
        "entry 2 (id 's'): missing 'Image'",
        "entry 2 (id 's'): missing 'Text'",
        "entry 2 (id 's'): missing 'Answer choices'",
        "entry 2 (id 's'): missing 'Ground truth'",
        "entry 2 (id 's'): missing 'Category'",
        "entry 2 (id 's'): missing 'Task'",
    ]
    line = {"id": "a_b_0", "image": "x.jpg", "question_old": "q", "conversations": [{"value": "<image>\nq"}]}
    drive = tmp_path / "v.jsonl"
    drive.write_text(json.dumps(line) + "\n\n" + json.dumps({**line, "tag": [7]}) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkDataError) as caught:
        read_benchmark("drivelm-val", drive)
    assert [str(p).split(": ", 1)[1] for p in caught.value.problems] == [
        "entry 0 (line 1) (id 'a_b_0'): 'conversations' must be a list of at least 2 turns with a string 'value', "
        'got [{"value": "<image>\\nq"}]',
        "entry 1 (line 2): not a JSON object: Expecting value",
        "entry 2 (line 3) (id 'a_b_0'): 'conversations' must be a list of at least 2 turns with a string "
        '\'value\', got [{"value": "<image>\\nq"}]',
        "entry 2 (line 3) (id 'a_b_0'): 'tag' must be a list of metric tags 0-3, got [7]",
    ]
    (tmp_path / "bad.json").write_text("[\n{bad", encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=r"bad.json: not valid JSON \(line 2\)"):
        read_benchmark("rsvqa-lr", tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="the top level must be a list, got dict"):
        read_benchmark("rsvqa-lr", tmp_path / "obj.json")
    with pytest.raises(BenchmarkDataError, match="no such file"):
        read_benchmark("rsvqa-lr", tmp_path / "absent.json")


def test_bad_gmai_rows_are_named(tmp_path: Path) -> None:
    header = "index\tquestion\tA\tB\tanswer\timage\n"
    tsv = tmp_path / "g.tsv"
    tsv.write_text(header + "1\tq\ta\tb\tA\t77\n2\t\ta\tb\tA\t1\n1\tq\ta\tb\t\t\n", encoding="utf-8")
    with pytest.raises(BenchmarkDataError) as caught:
        read_benchmark("gmai-mmbench", tsv, check_images=False)
    assert [str(p).split(": ", 1)[1] for p in caught.value.problems] == [
        "entry 0 (id '1'): 'image' refers to row index '77', which holds no image",
        "entry 1 (id '2'): 'question' is empty",
        "entry 1 (id '2'): 'image' refers to row index '1', which holds no image",
        "entry 2 (id '1'): 'answer' is empty",
    ]
    (tmp_path / "h.tsv").write_text("index\tquestion\n1\tq\n", encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="the TSV has no 'answer' column"):
        read_benchmark("gmai-mmbench", tmp_path / "h.tsv")


def test_tsv_cells_are_what_pandas_reads(tmp_path: Path) -> None:
    # Expected values: pandas 3.1.1 ``pd.read_csv(path, sep="\t")`` on this file, each cell as str() (None
    # for NaN), computed once outside the repository.
    rows = [
        ["index", "question", "A", "B", "C", "D", "E", "F", "G"],
        ["0012", "q with\ttab", "None", "1", "1.5", "True", "NA", " 7", "1e3"],
        ["13", 'q2 "quoted"', "n/a", "2", "", "False", "", "", " 8 "],
        ["14", "multi\nline", "null", "3", "2", "true", "#N/A", "-3", "inf"],
        ["15", "plain", "text", "4", "3.25", "False", "nan", "+4", "5"],
    ]
    import csv

    with (tmp_path / "adv.tsv").open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, delimiter="\t", lineterminator="\n").writerows(rows)
    data = [row for _, row in iter_tsv(tmp_path / "adv.tsv")]
    cells = {c: pandas_cells([r[c] for r in data]) for c in rows[0]}
    assert cells == {
        "index": ["12", "13", "14", "15"],
        "question": ["q with\ttab", 'q2 "quoted"', "multi\nline", "plain"],
        "A": [None, None, None, "text"],
        "B": ["1", "2", "3", "4"],
        "C": ["1.5", None, "2.0", "3.25"],
        "D": ["True", "False", "True", "False"],
        "E": [None, None, None, None],
        "F": ["7.0", None, "-3.0", "4.0"],
        "G": ["1000.0", "8.0", "inf", "5.0"],
    }


def test_importing_bench_keeps_torch_out() -> None:
    code = "import sys, mini_internvl_adapt.bench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_gmai_images_that_cannot_be_decoded_are_skipped(tmp_path: Path, bench_files: BenchFiles) -> None:
    tsv = tmp_path / "g.tsv"
    tsv.write_text(
        "index\tquestion\tA\tB\tanswer\timage\n1\tq\ta\tb\tA\t" + "QUJD" * 30 + "\n", encoding="utf-8"
    )
    read = read_benchmark("gmai-mmbench", tsv)
    assert [(s.record.id, s.reason.split(":")[0]) for s in read.skipped] == [("1", "image cannot be decoded")]
    from mini_internvl_adapt.bench import score_benchmark

    name = "gmai-mmbench"
    score_benchmark(name, bench_files.data(name), {}, images_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()  # scoring reads the TSV's text only


def test_drivelm_challenge_tags_follow_the_challenge_numbering(bench_files: BenchFiles) -> None:
    from mini_internvl_adapt.bench.drivelm import load_challenge_tags

    tags = load_challenge_tags(bench_files.drivelm_tags)
    assert [tags[f"{'01' * 16}_{'06' * 16}_{i}"] for i in range(5)] == [[2], [0], [3], [0], [1]]
    (bench_files.out / "x.json").write_text('{"s": {"frames": 1}}', encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="not a DriveLM challenge file"):
        load_challenge_tags(bench_files.out / "x.json")
