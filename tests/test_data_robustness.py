"""`zreward data check` reports, never crashes or hangs: hostile JSONL lines, hostile image files, image
paths that leave the dataset folder, and a fuzz test over arbitrary lines (docs/data.md, "What `data
check` refuses")."""

import io
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zreward_deploy.cli import main
from zreward_deploy.config import ScoreScale
from zreward_deploy.data import DatasetError, Problem, load_split, read_dataset, validate_dataset
from zreward_deploy.data import parse as fmt  # the line parser

GOOD = {
    "id": "a",
    "prompt_id": "p",
    "prompt": "a red cube",
    "image": "images/ok.png",
    "scores": {"realism": 3.0},
}


def _line(**fields) -> str:
    return json.dumps({**GOOD, **fields})


def _dataset(root: Path, lines: list, split: str = "train") -> Path:
    """A dataset folder with one valid image (images/ok.png) and ``split``.jsonl holding ``lines`` (str
    lines are UTF-8 encoded, bytes written as they are), each followed by ``\\n``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 200, 10)).save(root / "images" / "ok.png")
    data = b"".join(
        (x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")) + b"\n" for x in lines
    )
    (root / f"{split}.jsonl").write_bytes(data)
    return root


def _where(problems: list[Problem]) -> list[tuple[int | None, str | None]]:
    return [(p.line, p.field) for p in problems]


def _truncated_png(path: Path) -> None:
    """A PNG whose header is intact but whose pixel data stops half-way."""
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, "PNG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------------ lines


def test_unicode_line_separators_inside_strings_do_not_split_lines(tmp_path):
    # str.splitlines() splits at all of these; JSON allows them inside strings (raw \x0b / \x0c too)
    odd = "a\u2028b\u2029c\x85d\x0be\x0cf"
    lines = [
        _line(id="a", prompt=odd, prompt_id="p1").replace(json.dumps(odd), '"' + odd + '"'),
        _line(id="b", prompt=odd, prompt_id="p1"),  # the same text, escaped
        _line(id="c", scores={"realism": 9.0}),  # a real problem after them keeps its line number
    ]
    assert odd in lines[0]
    root = _dataset(tmp_path, lines)
    raw = (root / "train.jsonl").read_bytes().replace(b"\n", b"\r\n")  # CRLF endings are fine as well
    (root / "train.jsonl").write_bytes(raw)
    data, problems = read_dataset(root)
    assert _where(problems) == [(3, "scores.realism")]
    assert [r.prompt for r in data["train"]] == [odd, odd]
    assert [r.line for r in data["train"]] == [1, 2]


def test_invalid_utf8_is_reported_on_its_line_and_other_lines_are_checked(tmp_path):
    bad = _line(id="b").encode().replace(b"a red cube", b"caf\xe9 cube")  # Latin-1, not UTF-8
    root = _dataset(tmp_path, [_line(), bad, _line(id="c", scores={"realism": 9.0})])
    problems = validate_dataset(root)
    assert _where(problems) == [(2, None), (3, "scores.realism")]
    assert "not valid UTF-8: byte 0xe9 at byte" in problems[0].reason
    assert str(problems[0]).startswith(f"{root / 'train.jsonl'}:2: not valid UTF-8")


# (name, line 2 of train.jsonl, expected field, words in the reason). Line 1 is valid.
HOSTILE = [
    (
        "int_too_large_for_float",
        _line(id="b").replace('"realism": 3.0', '"realism": ' + "9" * 400),
        "scores.realism",
        "within float range, got an integer of 400 digits",
    ),
    (
        "int_over_4300_digits",
        _line(id="b").replace('"realism": 3.0', '"realism": ' + "9" * 5000),
        "scores.realism",
        "integer of 5000 digits",
    ),
    (
        "annotation_int_too_large",
        _line(id="b", annotations={"realism": [3.0, 4.0]}).replace("4.0]", "1" + "0" * 400 + "]"),
        "annotations.realism[1]",
        "within float range",
    ),
    ("nested_too_deep_to_parse", "[" * 100_000 + "]" * 100_000, None, "nested too deeply"),
    (
        "nested_too_deep",
        _line(id="b", meta={"x": 1}).replace(": 1}", ": " + "[" * 70 + "]" * 70 + "}"),
        "meta.x" + "[0]" * 37 + "...",  # the path is cut at 120 characters
        "nested more than 64 levels deep",
    ),
    (
        "nan_in_meta",
        _line(id="b", meta={"x": 1}).replace('"x": 1', '"x": NaN'),
        "meta.x",
        "NaN is not valid JSON",
    ),
    (
        "infinity_in_meta",
        _line(id="b", meta={"y": [1]}).replace("[1]", "[-Infinity]"),
        "meta.y[0]",
        "-Infinity is not valid JSON",
    ),
    (
        "huge_int_in_meta",
        _line(id="b", meta={"n": 1}).replace(": 1}", ": 1" + "0" * 5000 + "}"),
        "meta.n",
        "integer of 5001 digits: longer than the 4300 allowed",
    ),
    (
        "lone_surrogate_in_prompt",
        _line(id="b", prompt="a \ud800 cube", prompt_id="q"),
        "prompt",
        "lone surrogate \\ud800 at character 3",
    ),
    (
        "lone_surrogate_in_key",
        _line(id="b", meta={"k\udfff": 1}),
        "meta.k\udfff",
        "the key has a lone surrogate",
    ),
    (
        "duplicate_top_level_key",
        _line(id="b").replace('"prompt": "a red cube"', '"prompt": "a red cube", "prompt": "a red cube"'),
        "prompt",
        "duplicate key 'prompt'",
    ),
    (
        "duplicate_nested_key",
        _line(id="b").replace('"realism": 3.0', '"realism": 3.0, "realism": 4.0'),
        "scores.realism",
        "duplicate key 'realism'",
    ),
    ("nul_in_image_path", _line(id="b", image="images/ok.png\x00.txt"), "image", "NUL character"),
]


@pytest.mark.parametrize("name, text, field, reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_json_becomes_one_problem_on_its_line(tmp_path, name, text, field, reason):
    root = _dataset(tmp_path, [_line(), text])
    data, problems = read_dataset(root)
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    assert (problem.file, problem.line, problem.field) == (str(root / "train.jsonl"), 2, field)
    assert reason in problem.reason
    assert [r.id for r in data["train"]] == ["a"]  # the valid line is kept
    assert len(str(problem)) < 400 and "\n" not in str(problem)  # short, one line
    with pytest.raises(DatasetError):
        load_split(root, "train")


def test_non_printable_field_names_print_on_one_line(tmp_path):
    root = _dataset(tmp_path, [_line(**{"sco\nres": 1})])
    (problem,) = validate_dataset(root)
    assert problem.field == "sco\nres"
    assert str(problem) == f"{root / 'train.jsonl'}:1: sco\\nres: unknown field; allowed: " + str(
        [*fmt.REQUIRED_FIELDS, *fmt.OPTIONAL_FIELDS]
    )


def test_an_unexpected_exception_becomes_that_lines_problem(tmp_path, monkeypatch):
    real = fmt._check_score

    def fragile(value, scale):
        if value == 4.5:
            raise RuntimeError("boom")
        return real(value, scale)

    monkeypatch.setattr(fmt, "_check_score", fragile)
    root = _dataset(tmp_path, [_line(), _line(id="b", scores={"realism": 4.5}), _line(id="c", prompt="")])
    data, problems = read_dataset(root)
    assert _where(problems) == [(2, None), (3, "prompt")]
    assert problems[0].reason == "internal error while checking this line: RuntimeError: boom"
    assert [r.id for r in data["train"]] == ["a"]


def test_parse_record_is_total_on_text_handed_in_directly(tmp_path):
    # a str from a caller (not decoded from a file) can hold a raw lone surrogate; it must still be found
    root = _dataset(tmp_path, [])
    kwargs = dict(root=root, file="f.jsonl", split="train", scale=ScoreScale(), rubric_names=["realism"])
    text = json.dumps({**GOOD, "prompt": "x"}).replace('"x"', '"x\ud800"')
    record, problems = fmt.parse_record(text, line=7, **kwargs)
    assert record is None and [(p.line, p.field) for p in problems] == [(7, "prompt")]
    record, problems = fmt.parse_record(_line(image="../ok.png"), line=8, allow_outside_paths=True, **kwargs)
    assert record is None and "missing image" in problems[0].reason  # the path rule lifted, the file absent


# ------------------------------------------------------------------------------------------------ files


def test_fifo_as_image_or_split_file_is_refused_without_hanging(tmp_path, time_limit):
    root = _dataset(tmp_path, [_line(), _line(id="b", image="images/pipe.png")])
    os.mkfifo(root / "images" / "pipe.png")
    os.mkfifo(root / "val.jsonl")
    with time_limit(10):
        problems = validate_dataset(root)
    assert [(Path(p.file).name, p.line, p.field) for p in problems] == [
        ("train.jsonl", 2, "image"),
        ("val.jsonl", None, None),
    ]
    assert "FIFO" in problems[0].reason and "FIFO" in problems[1].reason


def test_decompression_bomb_is_refused(tmp_path):
    root = _dataset(tmp_path, [_line(image="images/bomb.png")])
    Image.new("1", (20000, 20000)).save(root / "images" / "bomb.png")  # 400 M pixels in ~50 kB
    (problem,) = validate_dataset(root)
    assert (problem.line, problem.field) == (1, "image") and "decompression bomb" in problem.reason


def test_corrupt_dds_is_refused(tmp_path):
    # a DDS header promising 4x4 pixels in an unknown FourCC: PIL raises NotImplementedError
    header = struct.pack("<4s7I", b"DDS ", 124, 0x1007, 4, 4, 8, 0, 0) + bytes(44)
    header += struct.pack("<2I4s", 32, 4, b"XXXX") + bytes(40)
    root = _dataset(tmp_path, [_line(image="images/bad.dds")])
    (root / "images" / "bad.dds").write_bytes(header)
    (problem,) = validate_dataset(root)
    assert problem.field == "image" and "NotImplementedError" in problem.reason


def test_truncated_pixel_data_passes_the_cheap_check_and_fails_the_deep_one(tmp_path):
    root = _dataset(tmp_path, [_line(), _line(id="b", image="images/cut.png")])
    _truncated_png(root / "images" / "cut.png")
    assert validate_dataset(root) == []
    seen = []
    problems = validate_dataset(root, deep=True, progress=lambda done, total: seen.append((done, total)))
    assert _where(problems) == [(2, "image")] and "truncated" in problems[0].reason
    assert seen == [(1, 2), (2, 2)]
    with pytest.raises(DatasetError, match="truncated"):
        load_split(root, "train", deep=True)


# ------------------------------------------------------------------------------------------------ paths


@pytest.fixture
def outside_paths(tmp_path) -> Path:
    """A dataset whose lines 2-5 name the same valid image outside the folder four ways."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (4, 4)).save(elsewhere / "x.png")
    root = tmp_path / "data"
    _dataset(
        root,
        [
            _line(image="images/../images/ok.png"),  # '..' that stays inside is fine
            _line(id="b", image="../elsewhere/x.png"),
            _line(id="c", image=str(elsewhere / "x.png")),
            _line(id="d", image="images/link.png"),
            _line(id="e", image="shared/x.png"),
        ],
    )
    (root / "images" / "link.png").symlink_to(elsewhere / "x.png")
    (root / "shared").symlink_to(elsewhere, target_is_directory=True)
    return root


def test_paths_leaving_the_folder_are_refused_by_default(outside_paths):
    problems = validate_dataset(outside_paths)
    assert _where(problems) == [(2, "image"), (3, "image"), (4, "image"), (5, "image")]
    reasons = [p.reason for p in problems]
    assert "leaves the dataset folder through '..'" in reasons[0]
    assert reasons[1].startswith("absolute path")
    assert "through a symlink" in reasons[2] and "through a symlink" in reasons[3]
    assert all("--allow-outside-paths" in r for r in reasons)
    with pytest.raises(DatasetError):  # eval and training load with the default
        load_split(outside_paths, "train")


def test_paths_leaving_the_folder_are_accepted_with_the_option(outside_paths):
    assert validate_dataset(outside_paths, allow_outside_paths=True) == []
    records = load_split(outside_paths, "train", allow_outside_paths=True)
    target = (outside_paths.parent / "elsewhere" / "x.png").resolve()
    assert [r.image_path.resolve() for r in records[1:]] == [target] * 4


def test_refused_paths_are_not_opened(tmp_path, time_limit):
    # a FIFO outside the folder: refusing by path must come before any attempt to open it
    os.mkfifo(tmp_path / "pipe.png")
    root = _dataset(tmp_path / "data", [_line(image="../pipe.png")])
    with time_limit(10):
        (problem,) = validate_dataset(root)
    assert "leaves the dataset folder" in problem.reason


# ------------------------------------------------------------------------------------------------ CLI


def test_data_check_cli_exit_codes(tmp_path, capsys):
    root = _dataset(tmp_path / "d", [_line(), _line(id="b", image="images/cut.png")])
    _truncated_png(root / "images" / "cut.png")
    assert main(["data", "check", str(root)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {root}: 2 train records")
    assert main(["data", "check", str(root), "--deep"]) == 1
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith(f"{root / 'train.jsonl'}:2: image: cannot be decoded (OSError: image file")
    assert out[1:] == [f"1 problem(s) in {root}"]
    assert "deep check: 2/2 lines (100%)" in captured.err  # progress goes to stderr, not the report
    assert main(["data", "check", str(root), "--deep", "--skip-images"]) == 2

    (root / "images" / "cut.png").unlink()
    (root / "train.jsonl").write_text(
        _line() + "\n" + _line(id="b").replace('"realism": 3.0', '"realism": ' + "9" * 5000) + "\n"
    )
    assert main(["data", "check", str(root)]) == 1  # used to be a traceback (ValueError)
    assert capsys.readouterr().out.splitlines()[-1] == f"1 problem(s) in {root}"

    (root / "train.jsonl").write_text(_line(image="../outside.png") + "\n")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    assert main(["data", "check", str(root)]) == 1
    assert main(["data", "check", str(root), "--allow-outside-paths"]) == 0


def test_synth_refuses_a_file_as_output_folder(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["data", "synth", "--out", str(target), "--prompts", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file, not a folder" in err and "Traceback" not in err


def test_interrupted_synth_leaves_no_half_dataset(tmp_path, monkeypatch):
    from zreward_deploy.data import synth

    real, calls = synth.render_image, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_image", dies_on_the_third)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        synth.generate_dataset(out, synth.SynthConfig(prompts=3, images_per_prompt=2))
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half dataset, no temporary left


# ------------------------------------------------------------------------------------------------ fuzz

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_odd_text = st.text(
    alphabet=st.sampled_from(
        list('ab "\\{}[]:,\t\r\x00\x0b\x0c\x85\u2028\u2029\ud800\udfff\ufeff\U0001f600é')
    ),
    max_size=30,
)
_mutations = st.one_of(
    st.builds(
        lambda k, v: {**GOOD, k: v}, st.sampled_from([*GOOD, "meta", "annotations", "x"]), _json_values
    ),
    st.builds(
        lambda n: {**GOOD, "scores": {"realism": n}}, st.integers(min_value=-(10**400), max_value=10**400)
    ),
    st.builds(lambda s: {**GOOD, "prompt": s}, _odd_text),
    st.builds(lambda s: {**GOOD, "image": s}, _odd_text | st.sampled_from(["..", "/", "../x.png", "images"])),
)


def _render(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


_lines = st.one_of(
    _odd_text,  # arbitrary text
    _json_values.map(_render),  # arbitrary JSON values
    _mutations.map(_render),  # a valid record with one field changed
    st.just(_line()),
    st.builds(
        lambda depth: "[" * depth + "]" * depth, st.integers(min_value=60, max_value=5000)
    ),  # deep nesting
    st.builds(lambda n: _line().replace("3.0", "1" * n), st.integers(min_value=300, max_value=6000)),
)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(_lines, min_size=1, max_size=6))
def test_fuzz_jsonl_lines_never_crash_data_check(tmp_path_factory, time_limit, lines):
    root = _dataset(tmp_path_factory.mktemp("fuzz"), lines)
    n_lines = (root / "train.jsonl").read_bytes().count(b"\n")
    with time_limit(10):
        problems = validate_dataset(root)
    assert isinstance(problems, list) and all(isinstance(p, Problem) for p in problems)
    for problem in problems:
        assert problem.line is not None and 1 <= problem.line <= n_lines, str(problem)
        assert "\n" not in str(problem)
        assert "internal error" not in problem.reason, str(problem)  # every case is handled on purpose
