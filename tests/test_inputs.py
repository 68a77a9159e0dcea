"""The shared input rules: the strict number parser, whole-string identifiers, bounded JSON, the file rules
of a workflow, and where a ComfyUI's folders are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_saas import inputs
from comfy_saas.errors import InvalidInput, MalformedBody
from comfy_saas.runner.comfy_files import ComfyFolders
from comfy_saas.workflows import files


@pytest.mark.parametrize("raw", ["²", "٣", "-1", "+1", " 1", "1 ", "1.0", "0x1", "1e3", "9" * 19, "101"])
def test_whole_number_takes_plain_ascii_digits_in_range_only(raw: str):
    with pytest.raises(InvalidInput, match="limit must be a whole number from 1 to 100") as info:
        inputs.whole_number(raw, "limit", 1, 100)
    assert info.value.field == "limit"


def test_whole_number_reads_good_values_and_defaults():
    assert inputs.whole_number("007", "n", 0, 10) == 7 and inputs.whole_number(None, "n", 0, 10, default=3) == 3


@pytest.mark.parametrize("value", ["alice\n", "alice\r", "al ice", "", "-x", "a" * 129, "é"])
def test_identifiers_match_the_whole_string(value: str):
    assert not inputs.matches(inputs.IDENTIFIER, value)


@pytest.mark.parametrize(("text", "depth"), [
    ('{"a": [1, {"b": []}]}', 4), ('"[[[[["', 0), ('{"a": "]]]] [[[ \\" [[["}', 1), ("[[[]]]", 3), ("1", 0),
])
def test_nesting_depth_ignores_brackets_in_strings(text: str, depth: int):
    assert inputs.nesting_depth(text.encode()) == depth


def test_loads_refuses_depth_before_parsing_and_names_the_limit():
    with pytest.raises(InvalidInput, match="nested 1000000 levels deep; the limit is 64"):
        inputs.loads(b"[" * 1_000_000 + b"]" * 1_000_000, 64)
    assert inputs.loads(json.dumps({"a": [[1.5]]}), 64) == {"a": [[1.5]]}
    with pytest.raises(MalformedBody):
        inputs.loads(b'{"a": ', 64)


def test_check_plain_walks_without_recursion():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidInput, match="deeper than 64"):
        inputs.check_plain({"x": deep}, 64)
    for bad in [{"x": float("inf")}, {"x": {1: "a"}}, {"x": object()}]:
        with pytest.raises(InvalidInput):
            inputs.check_plain(bad, 64)


@pytest.mark.parametrize("name", ["x.png [output]", "x.png [temp]", "x.png  [output] ", "../x", "/abs", "a/b",
                                  "a\\b", "", " x", "x\x01", ["1", 0], 3])
def test_file_inputs_must_be_plain_names(name):
    assert files.file_name_problem(name) is not None


@pytest.mark.parametrize("name", ["x.png", "x.png [input]", "photo (1).jpg", "b.png"])
def test_plain_names_pass(name: str):
    assert files.file_name_problem(name) is None


def test_isolate_puts_every_save_under_the_tag():
    workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "audio/x"}},
                "2": {"class_type": "SaveText", "inputs": {"filename_prefix": "y/"}},
                "3": {"class_type": "SaveText", "inputs": {"filename_prefix": ""}}}
    out = files.isolate(workflow, "job-1")
    assert [n["inputs"]["filename_prefix"] for n in out.values()] == ["job-1/audio/x", "job-1/y", "job-1/ComfyUI"]
    assert workflow["1"]["inputs"]["filename_prefix"] == "audio/x"  # a copy


def test_folders_follow_comfyuis_flags(tmp_path: Path):
    assert ComfyFolders.from_command(tmp_path, []) == ComfyFolders.under(tmp_path)
    args = ["--cpu", "--output-directory", "out", "--input-directory=/data/in", "--temp-directory", str(tmp_path)]
    folders = ComfyFolders.from_command(tmp_path / "comfy", args)
    assert folders == ComfyFolders(input=Path("/data/in"), output=tmp_path / "comfy" / "out", temp=tmp_path / "temp")


def test_removing_job_files_never_leaves_the_folders(tmp_path: Path):
    folders = ComfyFolders.under(tmp_path / "comfy")
    for sub in ("input/job-1", "output/job-1", "output/other", "temp"):
        (folders.input.parent / sub).mkdir(parents=True)
    (folders.output / "job-1" / "a.png").write_bytes(b"a")
    (folders.output / "other" / "keep.png").write_bytes(b"k")
    (folders.temp / "preview.png").write_bytes(b"p")
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    refs = [{"filename": "preview.png", "subfolder": "", "type": "temp"},
            {"filename": "outside.txt", "subfolder": "../..", "type": "output"},
            {"filename": "", "subfolder": "", "type": "output"}, {"filename": "x", "type": "models"}]
    assert folders.remove_job_files("job-1", refs) == 3
    assert outside.exists() and folders.output.is_dir() and (folders.output / "other" / "keep.png").exists()
    assert not (folders.output / "job-1").exists() and not (folders.temp / "preview.png").exists()
