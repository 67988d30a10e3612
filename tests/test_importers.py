"""``zreward data import``: one test per public set, each writing a small file exactly as the set's own
documentation gives it (cited in the test), importing it and checking the mapped scores against values
computed by hand, the originals kept in ``meta``, the judgements, and that ``validate_dataset`` (what
``zreward data check`` runs, preference files included) accepts the result; malformed rows are reported
with their file and row number and skipped. Then the writer's promises: images once by content, resume
after an interruption gives the same dataset as one run, parquet read in batches, HF ``save_to_disk``
folders, the CLI.

The importers themselves load neither torch nor transformers (checked in a fresh process below); these
tests do, through ``validate_dataset`` (the package's config classes import transformers). The
tf.train.Example payloads are built here with google.protobuf from the proto definitions, an encoder
independent of the importer's hand-written decoder, and the TFRecord checksums with a bitwise CRC-32C.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zreward_deploy.cli import main
from zreward_deploy.config import ScoreScale
from zreward_deploy.data import validate_dataset
from zreward_deploy.data.importers import import_dataset
from zreward_deploy.data.importers.mapping import Target, resolve_fields
from zreward_deploy.data.importers.sources import (
    SourceProblem,
    TableFile,
    iter_json_elements,
    iter_table_batches,
    iter_tfrecord,
    split_of_path,
)
from zreward_deploy.data.importers.writer import ImportProgress
from zreward_deploy.errors import ZRewardInputError

# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _image(seed: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 37 % 256, seed * 91 % 256, 200)).save(buf, fmt)
    return buf.getvalue()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in _lines(path)}


def _problems(report) -> list[tuple[str, str, str, str | None]]:
    return [(p["kind"], p["file"], p["row"], p["field"]) for p in report.problems]


def _crc32c_bitwise(data: bytes) -> int:
    # written independently of the importer's table-driven CRC: one bit at a time
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c_bitwise(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _write_tfrecord(path: Path, payloads: list[bytes]) -> None:
    with open(path, "wb") as f:
        for data in payloads:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data)))


def _example_class():
    """tf.train.Example built from its .proto definition (tensorflow/core/example/{example,feature}.proto)
    with google.protobuf's descriptor pool: BytesList/FloatList/Int64List, Feature (oneof), Features
    (map<string, Feature>), Example."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="zr_test_example.proto", package="zrtest", syntax="proto3")
    for name, ftype in (
        ("BytesList", F.TYPE_BYTES),
        ("FloatList", F.TYPE_FLOAT),
        ("Int64List", F.TYPE_INT64),
    ):
        fdp.message_type.add(name=name).field.add(name="value", number=1, type=ftype, label=F.LABEL_REPEATED)
    feature = fdp.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, type_name) in enumerate(
        (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")), start=1
    ):
        feature.field.add(
            name=name, number=number, type=F.TYPE_MESSAGE, type_name=f".zrtest.{type_name}",
            label=F.LABEL_OPTIONAL, oneof_index=0,
        )  # fmt: skip
    features = fdp.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, type_name=".zrtest.Feature", label=F.LABEL_OPTIONAL
    )
    features.field.add(
        name="feature", number=1, type=F.TYPE_MESSAGE, type_name=".zrtest.Features.FeatureEntry",
        label=F.LABEL_REPEATED,
    )  # fmt: skip
    example = fdp.message_type.add(name="Example")
    example.field.add(
        name="features", number=1, type=F.TYPE_MESSAGE, type_name=".zrtest.Features", label=F.LABEL_OPTIONAL
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("zrtest.Example"))


PICKAPIC_SCHEMA = pa.schema(
    [  # the features of the yuvalkirstain/pickapic_v2 dataset card, in its order and types
        ("are_different", pa.bool_()),
        ("best_image_uid", pa.string()),
        ("caption", pa.string()),
        ("created_at", pa.timestamp("ns")),
        ("has_label", pa.bool_()),
        ("image_0_uid", pa.string()),
        ("image_0_url", pa.string()),
        ("image_1_uid", pa.string()),
        ("image_1_url", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
        ("ranking_id", pa.int64()),
        ("user_id", pa.int64()),
        ("num_example_per_prompt", pa.int64()),
        ("__index_level_0__", pa.int64()),
    ]
)


def _pickapic_row(
    n: int, caption: str, label_0: float, uid0: str, uid1: str, *, seed0=None, seed1=None, has_label=True
):
    seed0 = int(uid0[1:]) if seed0 is None else seed0
    seed1 = int(uid1[1:]) if seed1 is None else seed1
    return {
        "are_different": True, "best_image_uid": uid0 if label_0 >= 0.5 else uid1, "caption": caption,
        "created_at": 1_680_000_000_000_000_000 + n, "has_label": has_label, "image_0_uid": uid0,
        "image_0_url": f"https://example.invalid/{uid0}.png", "image_1_uid": uid1,
        "image_1_url": f"https://example.invalid/{uid1}.png", "jpg_0": _image(seed0), "jpg_1": _image(seed1),
        "label_0": label_0, "label_1": 1.0 - label_0, "model_0": "sd-1.5", "model_1": "sdxl", "ranking_id": n,
        "user_id": 7, "num_example_per_prompt": 1, "__index_level_0__": n,
    }  # fmt: skip


def _pickapic_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PICKAPIC_SCHEMA)


def _pickapic_folder(root: Path) -> Path:
    """A Pick-a-Pic v2 copy as the HF hub ships it: data/{split}-NNNNN-of-NNNNN.parquet."""
    train = [
        _pickapic_row(0, "a cat", 1.0, "u1", "u2"),
        _pickapic_row(1, "a cat", 0.5, "u1", "u3"),  # u1 again: one record
        _pickapic_row(2, "a dog", 0.0, "u4", "u5", seed1=4),  # u5 has u4's bytes: one image file
        _pickapic_row(3, "a fox", 1.0, "u6", "u7", has_label=False),
        _pickapic_row(4, "a test prompt", 1.0, "u8", "u9"),  # its prompt is in test
        _pickapic_row(5, "a bird", 0.3, "u12", "u13"),  # not 0, 0.5 or 1
    ]
    (root / "data").mkdir(parents=True)
    pq.write_table(_pickapic_table(train), root / "data/train-00000-of-00001.parquet", row_group_size=2)
    test = [_pickapic_row(6, "a test prompt", 0.0, "u10", "u11")]
    pq.write_table(_pickapic_table(test), root / "data/test-00000-of-00001.parquet")
    pq.write_table(_pickapic_table(test), root / "data/test_unique-00000-of-00001.parquet")
    return root


# --------------------------------------------------------------------------------------------------
# One test per set
# --------------------------------------------------------------------------------------------------

AGIQA_CSV = """name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align
AttnGAN_normal_000.jpg,statue of a man,,,,0.965602553,0.223270101,0.40889324,0.615607722
AttnGAN_normal_060.jpg,"artwork with only triangles, anime style",,,anime style,2.5,0.5,5,1
sd1.5_lowstep_000.jpg,a tray of sushi,warm color,,,x,0.3,4.180579424,0.381638488
sd1.5_lowstep_001.jpg,a cosmic universe,,,,6.1,0.3,1.0,0.2
sd1.5_lowstep_002.jpg,man lost in space,,,,1.0,0.3,1.0,0.2
sd1.5_lowstep_003.jpg,a river in a forest,,,,5,,0,
"""


def _agiqa(root: Path) -> Path:
    (root / "file").mkdir(parents=True)
    (root / "data.csv").write_text(AGIQA_CSV)
    for name, seed in (("AttnGAN_normal_000", 1), ("AttnGAN_normal_060", 2), ("sd1.5_lowstep_000", 3)):
        (root / "file" / f"{name}.jpg").write_bytes(_image(seed))
    (root / "file" / "sd1.5_lowstep_001.jpg").write_bytes(_image(4))
    (root / "file" / "sd1.5_lowstep_003.jpg").write_bytes(_image(1))  # the same bytes as _000
    return root  # sd1.5_lowstep_002.jpg is missing


def test_agiqa3k(tmp_path):
    """AGIQA-3K: data.csv as in github.com/lcysyzxdxc/AGIQA-3k-Database (header
    ``name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align``; the first row is the
    repository's own first row), MOS and STD normalised on [0, 5] (its README: "Normalized MOS and STD");
    images in file/ (file.zip)."""
    report = import_dataset(
        "agiqa-3k",
        _agiqa(tmp_path / "agiqa"),
        tmp_path / "out",
        val_fraction=0,
        test_fraction=0,
        progress=False,
    )
    assert validate_dataset(tmp_path / "out") == []
    records = _by_id(tmp_path / "out/train.jsonl")
    assert sorted(records) == [
        "agiqa3k-AttnGAN_normal_000",
        "agiqa3k-AttnGAN_normal_060",
        "agiqa3k-sd1.5_lowstep_003",
    ]
    first = records["agiqa3k-AttnGAN_normal_000"]
    # [0, 5] -> [1, 5]: 1 + x * 4/5; a spread scales by 4/5 without the offset
    assert first["scores"] == pytest.approx(
        {"realism": 1 + 0.965602553 * 0.8, "alignment": 1 + 0.40889324 * 0.8}
    )
    assert first["meta"]["std"] == pytest.approx(
        {"realism": 0.223270101 * 0.8, "alignment": 0.615607722 * 0.8}
    )
    assert first["meta"]["original"] == {
        "mos_quality": 0.965602553, "mos_align": 0.40889324, "std_quality": 0.223270101,
        "std_align": 0.615607722, "name": "AttnGAN_normal_000.jpg",
    }  # fmt: skip
    assert first["meta"]["source"] == "agiqa-3k" and first["meta"]["source_row"] == 2
    second = records["agiqa3k-AttnGAN_normal_060"]
    assert second["prompt"] == "artwork with only triangles, anime style"
    assert second["scores"] == {"realism": 3.0, "alignment": 5.0}
    assert second["meta"]["original"]["style"] == "anime style"
    assert records["agiqa3k-sd1.5_lowstep_003"]["scores"] == {"realism": 5.0, "alignment": 1.0}
    assert "std" not in records["agiqa3k-sd1.5_lowstep_003"]["meta"]  # empty std cells
    # the same bytes under two names: one file, two records
    assert first["image"] == records["agiqa3k-sd1.5_lowstep_003"]["image"]
    assert len(list((tmp_path / "out/images").rglob("*.jpg"))) == 2
    assert (report.images_written, report.images_reused) == (2, 1)
    # malformed rows: reported by file and line, skipped, never silently dropped
    assert _problems(report) == [
        ("malformed", "data.csv", "4", "mos_quality"),
        ("malformed", "data.csv", "5", "mos_quality"),
        ("image", "data.csv", "6", "image"),
    ]
    assert "outside the set's scale [0, 5]" in report.problems[1]["reason"]
    assert (report.rows_read, report.rows_imported, report.skipped) == (6, 3, {"malformed": 2, "image": 1})
    saved = json.loads((tmp_path / "out/import_report.json").read_text())
    assert saved["problems_total"] == 3 and saved["problems"] == report.problems


def test_agiqa3k_default_split_is_by_prompt_hash(tmp_path):
    src = tmp_path / "agiqa"
    (src / "file").mkdir(parents=True)
    rows = ["name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align"]
    for i in range(40):  # 20 prompts, two images each
        (src / "file" / f"m_{i:03d}.jpg").write_bytes(_image(i))
        rows.append(f"m_{i:03d}.jpg,prompt number {i // 2},,,,2.5,0.1,2.5,0.1")
    (src / "data.csv").write_text("\n".join(rows) + "\n")
    first = import_dataset("agiqa-3k", src, tmp_path / "a", progress=False)
    again = import_dataset("agiqa-3k", src, tmp_path / "b", progress=False)
    assert validate_dataset(tmp_path / "a") == []  # a prompt in one split only
    assert first.records == again.records and len(first.records) == 3
    for split in first.records:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "b" / f"{split}.jsonl"
        ).read_bytes()


def _richhf(root: Path) -> tuple[Path, Path]:
    """RichHF-18K tfrecords (features as richhf_18k/parse_tfrecord_file.py reads them) and the Pick-a-Pic
    copy holding their images and prompts."""
    Example = _example_class()

    def example(filename: str, scores: dict[str, float], tokens: str = "0 1 1") -> bytes:
        ex = Example()
        ex.features.feature["filename"].bytes_list.value.append(filename.encode())
        for name, value in scores.items():
            ex.features.feature[name].float_list.value.append(value)
        ex.features.feature["artifact_map"].bytes_list.value.append(_image(9, "PNG"))
        ex.features.feature["misalignment_map"].bytes_list.value.append(_image(9, "PNG"))
        ex.features.feature["prompt_misalignment_label"].bytes_list.value.append(tokens.encode())
        return ex.SerializeToString()

    full = {"aesthetics_score": 0.25, "artifact_score": 0.75, "misalignment_score": 0.5, "overall_score": 1.0}
    root.mkdir()
    _write_tfrecord(
        root / "train.tfrecord",
        [
            example("u1.png", full),
            example("u3.png", {**full, "overall_score": 0.0, "aesthetics_score": 1.0}),
            example("u99.png", full),  # not in the Pick-a-Pic copy
            example("u4.png", {**full, "artifact_score": 1.5}),  # outside [0, 1]
            example("u5.png", {k: v for k, v in full.items() if k != "aesthetics_score"}),
        ],
    )
    _write_tfrecord(root / "dev.tfrecord", [example("u2.png", full)])
    copy = root.parent / "pickapic_v1"
    copy.mkdir()
    rows = [
        _pickapic_row(0, "a cat", 1.0, "u1", "u6"),
        _pickapic_row(1, "a dog", 1.0, "u7", "u3"),
        _pickapic_row(2, "a fox", 1.0, "u4", "u5"),
        _pickapic_row(3, "a bird", 1.0, "u8", "u2"),
    ]
    pq.write_table(_pickapic_table(rows), copy / "train-00000-of-00001.parquet")
    return root, copy


def test_richhf18k(tmp_path):
    """RichHF-18K: train/dev/test .tfrecord of tf.train.Example with ``filename`` (bytes), the float
    features ``aesthetics_score``, ``artifact_score``, ``misalignment_score``, ``overall_score``, the PNG
    heatmaps ``artifact_map``/``misalignment_map`` and ``prompt_misalignment_label`` (github.com/
    google-research/google-research richhf_18k/parse_tfrecord_file.py; github.com/
    google-research-datasets/richhf-18k README: no images or prompts, file names of Pick-a-Pic images);
    scores averaged Likert ratings normalised to [0, 1] (the paper)."""
    src, copy = _richhf(tmp_path / "richhf")
    report = import_dataset("richhf-18k", src, tmp_path / "out", images=copy, progress=False)
    assert validate_dataset(tmp_path / "out") == []
    train, val = _by_id(tmp_path / "out/train.jsonl"), _by_id(tmp_path / "out/val.jsonl")
    assert sorted(train) == ["richhf-u1", "richhf-u3"] and sorted(val) == ["richhf-u2"]
    u1 = train["richhf-u1"]
    # [0, 1] -> [1, 5]: 1 + 4x
    assert u1["scores"] == {"plausibility": 4.0, "alignment": 3.0, "aesthetics": 2.0}
    assert u1["prompt"] == "a cat" and val["richhf-u2"]["prompt"] == "a bird"
    assert u1["meta"]["original"] == {
        "aesthetics_score": 0.25, "artifact_score": 0.75, "misalignment_score": 0.5, "overall_score": 1.0,
        "filename": "u1.png", "prompt_misalignment_label": "0 1 1",
    }  # fmt: skip
    assert train["richhf-u3"]["scores"]["aesthetics"] == 5.0 and train["richhf-u3"]["prompt"] == "a dog"
    # the image is the copy's jpg_1 of the row where u3 is image_1
    image = (tmp_path / "out" / train["richhf-u3"]["image"]).read_bytes()
    assert image == _image(3)
    assert sorted(_problems(report)) == [
        ("malformed", "train.tfrecord", "3", "filename"),  # not in the Pick-a-Pic copy
        ("malformed", "train.tfrecord", "4", "artifact_score"),  # 1.5 is outside [0, 1]
        ("malformed", "train.tfrecord", "5", "aesthetics_score"),  # missing
    ]


def _irdb_entry(
    folder: str, name: str, prompt_id: str, prompt: str, rank: int, ratings: tuple[int, int, int]
) -> dict:
    """One element of an ImageRewardDB JSON file, with the card's field names."""
    overall, alignment, fidelity = ratings
    return {
        "image_path": f"images/{folder}/{name}.webp",
        "prompt_id": prompt_id,
        "prompt": prompt,
        "classification": "People",
        "image_amount_in_total": 3,
        "rank": rank,
        "overall_rating": overall,
        "image_text_alignment_rating": alignment,
        "fidelity_rating": fidelity,
    }


def _irdb(root: Path) -> Path:
    woman = "painting of a holy woman, decorated, intricate"
    files = {
        "train/train_1": [
            _irdb_entry("train/train_1", "img-a0", "000864-0061", woman, 1, (4, 4, 7)),
            _irdb_entry("train/train_1", "img-a1", "000864-0061", woman, 2, (1, 7, 1)),
            _irdb_entry("train/train_1", "img-a2", "000864-0061", woman, 2, (7, 1, 4)),
            _irdb_entry("train/train_1", "img-b0", "000001-0002", "a castle", 2, (5, 5, 5)),
            _irdb_entry("train/train_1", "img-b1", "000001-0002", "a castle", 1, (5, 5, 5)),
            _irdb_entry("train/train_1", "img-b2", "000001-0002", "a castle", 3, (5, 8, 5)),  # 8 > 7
        ],
        "validation/validation_1": [
            _irdb_entry("validation/validation_1", "img-c0", "000002-0001", "a boat", 1, (2, 2, 2)),
            _irdb_entry("validation/validation_1", "img-c1", "000002-0001", "a boat", 1, (3, 3, 3)),
        ],
    }
    seed = 0
    for folder, entries in files.items():
        (root / "images" / folder).mkdir(parents=True)
        for entry in entries:
            seed += 1
            (root / entry["image_path"]).write_bytes(_image(seed, "WEBP"))
        (root / "images" / f"{folder}.json").write_text(json.dumps(entries, indent=4))
    return root


def test_imagerewarddb(tmp_path):
    """ImageRewardDB: images/{split}/{split}_N/*.webp beside a JSON array per folder, elements
    ``{image_path, prompt_id, prompt, classification, image_amount_in_total, rank, overall_rating,
    image_text_alignment_rating, fidelity_rating}`` with 1-7 ratings and rank 1 = best (the THUDM/
    ImageRewardDB dataset card's "Data Instances" and ImageRewardDB.py's int8 features)."""
    report = import_dataset("imagerewarddb", _irdb(tmp_path / "irdb"), tmp_path / "out", progress=False)
    assert validate_dataset(tmp_path / "out") == []
    train = _by_id(tmp_path / "out/train.jsonl")
    assert sorted(train) == ["irdb-img-a0", "irdb-img-a1", "irdb-img-a2", "irdb-img-b0", "irdb-img-b1"]
    # [1, 7] -> [1, 5]: 1 + (x - 1) * 4/6
    assert train["irdb-img-a0"]["scores"] == pytest.approx({"alignment": 3.0, "plausibility": 5.0})
    assert train["irdb-img-a1"]["scores"] == pytest.approx({"alignment": 5.0, "plausibility": 1.0})
    assert train["irdb-img-a2"]["scores"] == pytest.approx({"alignment": 1.0, "plausibility": 3.0})
    assert train["irdb-img-a0"]["prompt_id"] == "irdb-000864-0061"
    original = train["irdb-img-a0"]["meta"]["original"]
    assert (
        original["overall_rating"] == 4 and original["rank"] == 1 and original["classification"] == "People"
    )
    prefs = [
        (p["a"], p["b"], p["dimension"], p["preferred"])
        for p in _lines(tmp_path / "out/train.preferences.jsonl")
    ]
    assert prefs == [
        ("irdb-img-a0", "irdb-img-a1", "overall", "a"),
        ("irdb-img-a0", "irdb-img-a2", "overall", "a"),
        ("irdb-img-a1", "irdb-img-a2", "overall", "tie"),  # equal ranks
        ("irdb-img-b0", "irdb-img-b1", "overall", "b"),  # rank 2 vs rank 1
    ]  # b2 (alignment rating 8 > 7) is skipped, and its two pairs with it
    assert _problems(report) == [
        ("malformed", "images/train/train_1.json", "6", "image_text_alignment_rating")
    ]
    assert report.pairs_dropped == 2
    val_prefs = _lines(tmp_path / "out/val.preferences.jsonl")
    assert [(p["a"], p["b"], p["preferred"]) for p in val_prefs] == [("irdb-img-c0", "irdb-img-c1", "tie")]


def test_imagerewarddb_from_its_metadata_parquet(tmp_path):
    """The same elements in ``metadata-{split}.parquet`` (the card's "Dataset Metadata": the tables share
    the JSON files' fields) import to the same records and judgements."""
    src = _irdb(tmp_path / "irdb")
    from_json = import_dataset("imagerewarddb", src, tmp_path / "a", progress=False)
    for split in ("train", "validation"):
        (path,) = (src / "images" / split).glob("*.json")
        pq.write_table(pa.Table.from_pylist(json.loads(path.read_text())), src / f"metadata-{split}.parquet")
        path.unlink()
    from_parquet = import_dataset("imagerewarddb", src, tmp_path / "b", progress=False)
    assert validate_dataset(tmp_path / "b") == []
    assert from_parquet.records == from_json.records and from_parquet.preferences == from_json.preferences
    for name in ("train.jsonl", "val.jsonl", "train.preferences.jsonl", "val.preferences.jsonl"):
        a, b = _lines(tmp_path / "a" / name), _lines(tmp_path / "b" / name)
        for line in a + b:  # the same element numbers, another file name
            line["meta"].pop("source_file")
        assert a == b, name
    assert _problems(from_parquet) == [
        ("malformed", "metadata-train.parquet", "6", "image_text_alignment_rating")
    ]


def test_evalmuse40k_on_a_custom_scale(tmp_path):
    """EvalMuse-40K: train_list.json, a JSON array of ``{prompt_id, prompt, type, img_path, total_score
    (list of 1-5 ratings, one per annotator), element_score, promt_meaningless, split_confidence,
    attribute_confidence, fidelity_label}`` (the DY-Evalab/EvalMuse dataset card and its dataset_info
    features); images from images.zip."""
    src = tmp_path / "evalmuse"
    (src / "images").mkdir(parents=True)
    entries = [
        {"prompt_id": "p1", "prompt": "a red cube on a table", "type": "real", "img_path": "images/a.png",
         "total_score": [1, 2, 4, 5], "element_score": {"cube (object)": [1, 1, 0, 1]}, "promt_meaningless": [0, 0, 0, 0],
         "split_confidence": [0, 0, 0, 0], "attribute_confidence": [1, 1, 1, 1], "fidelity_label": ["normal"] * 4},
        {"prompt_id": "p2", "prompt": "two birds", "type": "synthetic", "img_path": "images/b.png",
         "total_score": [3, 6], "element_score": {}, "promt_meaningless": [0, 0]},
        {"prompt_id": "p3", "prompt": "a lamp", "type": "real", "img_path": "images/c.png", "total_score": [3]},
    ]  # fmt: skip
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        (src / "images" / f"{name}.png").write_bytes(_image(seed, "PNG"))
    (src / "train_list.json").write_text(json.dumps(entries))
    report = import_dataset(
        "evalmuse-40k",
        src,
        tmp_path / "out",
        scale=(0.0, 1.0),
        val_fraction=0,
        test_fraction=0,
        progress=False,
    )
    scale = ScoreScale(values=(0.0, 1.0), tokens=("0", "1"))
    assert validate_dataset(tmp_path / "out", scale=scale) == []
    records = _by_id(tmp_path / "out/train.jsonl")
    first = records["evalmuse-images-a"]
    # [1, 5] -> [0, 1]: (x - 1) / 4; the score drops the highest and the lowest rating, then the mean
    assert first["annotations"] == {"alignment": [0.0, 0.25, 0.75, 1.0]}
    assert first["scores"] == {"alignment": 0.5}
    assert first["prompt_id"] == "evalmuse-p1"
    assert first["meta"]["original"]["total_score"] == [1, 2, 4, 5]
    assert first["meta"]["original"]["element_score"] == {"cube (object)": [1, 1, 0, 1]}
    assert records["evalmuse-images-c"]["scores"] == {"alignment": 0.5}
    assert _problems(report) == [("malformed", "train_list.json", "2", "total_score")]


def test_pickapic_v2(tmp_path):
    """Pick-a-Pic v2: data/{split}-NNNNN-of-NNNNN.parquet with the columns and types of the
    yuvalkirstain/pickapic_v2 dataset card (jpg_0/jpg_1 JPEG bytes, label_0/label_1 1/0, 0/1 or 0.5/0.5
    for a tie as PickScore's eval_preference_predictor.py reads them, has_label, are_different, uids);
    validation_unique/test_unique repeat rows of validation/test."""
    report = import_dataset(
        "pickapic-v2", _pickapic_folder(tmp_path / "pap"), tmp_path / "out", progress=False
    )
    assert validate_dataset(tmp_path / "out") == []
    train, test = _by_id(tmp_path / "out/train.jsonl"), _by_id(tmp_path / "out/test.jsonl")
    assert sorted(train) == ["pickapic-u1", "pickapic-u2", "pickapic-u3", "pickapic-u4", "pickapic-u5"]
    assert sorted(test) == ["pickapic-u10", "pickapic-u11"]
    assert "scores" not in train["pickapic-u1"]
    assert train["pickapic-u1"]["meta"]["original"] == {"image_uid": "u1", "model": "sd-1.5"}
    prefs = _lines(tmp_path / "out/train.preferences.jsonl")
    assert [(p["a"], p["b"], p["dimension"], p["preferred"]) for p in prefs] == [
        ("pickapic-u1", "pickapic-u2", "overall", "a"),
        ("pickapic-u1", "pickapic-u3", "overall", "tie"),
        ("pickapic-u4", "pickapic-u5", "overall", "b"),
    ]
    assert prefs[1]["meta"]["original"]["label_0"] == 0.5 and prefs[0]["meta"]["source_row"] == 1
    (test_pref,) = _lines(tmp_path / "out/test.preferences.jsonl")
    assert (test_pref["a"], test_pref["b"], test_pref["preferred"]) == ("pickapic-u10", "pickapic-u11", "b")
    # u5 holds u4's bytes: one file for two records; u1 shown twice: one record
    assert train["pickapic-u4"]["image"] == train["pickapic-u5"]["image"]
    assert (report.images_written, report.images_reused) == (6, 1)
    assert (tmp_path / "out" / train["pickapic-u2"]["image"]).read_bytes() == _image(2)
    assert report.extra["notes"] == [
        "not read: data/test_unique-00000-of-00001.parquet (test_unique repeats rows of another split)"
    ]
    train_file = "data/train-00000-of-00001.parquet"
    assert _problems(report) == [
        ("unlabelled", train_file, "4", None),
        ("cross-split", train_file, "5", None),  # the test split was read first
        ("malformed", train_file, "6", "label_0"),
    ]


def test_pickapic_from_a_save_to_disk_folder(tmp_path):
    """An HF ``DatasetDict.save_to_disk`` copy: dataset_dict.json ({"splits": [...]}), one folder per
    split with dataset_info.json, state.json (``_data_files``, ``_split``) and data-NNNNN-of-NNNNN.arrow
    files in the Arrow IPC stream format, as ``datasets`` writes them (read without ``datasets``)."""
    src = tmp_path / "pickapic_disk"
    rows = {
        "train": [_pickapic_row(0, "a cat", 1.0, "u1", "u2"), _pickapic_row(1, "a cat", 0.0, "u1", "u3")],
        "test": [_pickapic_row(2, "a dog", 0.5, "u4", "u5")],
    }
    src.mkdir()
    (src / "dataset_dict.json").write_text(json.dumps({"splits": list(rows)}))
    for split, split_rows in rows.items():
        folder = src / split
        folder.mkdir()
        (folder / "dataset_info.json").write_text(json.dumps({"features": {}, "splits": {}}))
        name = "data-00000-of-00001.arrow"
        (folder / "state.json").write_text(
            json.dumps({"_data_files": [{"filename": name}], "_fingerprint": "0", "_split": split})
        )
        table = _pickapic_table(split_rows)
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=1):
                writer.write_batch(batch)
    report = import_dataset("pickapic-v2", src, tmp_path / "out", progress=False)
    assert validate_dataset(tmp_path / "out") == []
    assert report.records == {"test": 2, "train": 3} and report.preferences == {"test": 1, "train": 2}
    prefs = _lines(tmp_path / "out/train.preferences.jsonl")
    assert [(p["a"], p["b"], p["preferred"]) for p in prefs] == [
        ("pickapic-u1", "pickapic-u2", "a"),
        ("pickapic-u1", "pickapic-u3", "b"),
    ]
    assert prefs[1]["meta"]["source_file"] == "train/data-00000-of-00001.arrow"


def test_hpdv2(tmp_path):
    """HPDv2: train.json ``{human_preference: list[int] (1 = preferred), prompt, file_path: list[str],
    user_hash}`` and test.json ``{prompt, image_path: list[str], rank: list[int] (1 = best), raw_annotations:
    list[{rank, user_hash}]}`` beside train/ and test/ (github.com/tgxs002/HPSv2 README; ymhao/HPDv2 card)."""
    src = tmp_path / "hpd"
    (src / "train").mkdir(parents=True)
    (src / "test").mkdir()
    for i in range(6):
        (src / "train" / f"{i:08d}.jpg").write_bytes(_image(i))
    for i in range(3):
        (src / "test" / f"{i:08d}.jpg").write_bytes(_image(20 + i))
    train = [
        {"human_preference": [1, 0], "prompt": "a red car", "file_path": ["00000000.jpg", "00000001.jpg"], "user_hash": "x"},
        {"human_preference": [0, 1], "prompt": "a red car", "file_path": ["00000000.jpg", "00000002.jpg"], "user_hash": "y"},
        {"human_preference": [1, 1], "prompt": "a tree", "file_path": ["00000003.jpg", "00000004.jpg"], "user_hash": "x"},
        {"human_preference": [1, 0], "prompt": "a lighthouse", "file_path": ["00000004.jpg", "00000005.jpg"]},
    ]  # fmt: skip
    test = [
        {"prompt": "a lighthouse", "image_path": ["00000000.jpg", "00000001.jpg", "00000002.jpg"], "rank": [2, 1, 2],
         "raw_annotations": [{"rank": [2, 1, 3], "user_hash": "a"}, {"rank": [1, 2, 3], "user_hash": "b"}]},
    ]  # fmt: skip
    (src / "train.json").write_text(json.dumps(train))
    (src / "test.json").write_text(json.dumps(test))
    report = import_dataset("hpdv2", src, tmp_path / "out", progress=False)
    assert validate_dataset(tmp_path / "out") == []
    train_prefs = _lines(tmp_path / "out/train.preferences.jsonl")
    assert [(p["a"], p["b"], p["preferred"]) for p in train_prefs] == [
        ("hpdv2-train-00000000", "hpdv2-train-00000001", "a"),
        ("hpdv2-train-00000000", "hpdv2-train-00000002", "b"),
    ]
    test_prefs = _lines(tmp_path / "out/test.preferences.jsonl")
    assert [(p["a"][-1], p["b"][-1], p["preferred"], p["meta"]["original"]["votes"]) for p in test_prefs] == [
        ("0", "1", "b", {"a": 1, "b": 1, "tie": 0}),
        ("0", "2", "tie", {"a": 2, "b": 0, "tie": 0}),
        ("1", "2", "a", {"a": 2, "b": 0, "tie": 0}),
    ]
    assert len(_lines(tmp_path / "out/train.jsonl")) == 3  # image 0 is in two pairs: one record
    assert _problems(report) == [
        ("malformed", "train.json", "3", "human_preference"),
        ("cross-split", "train.json", "4", None),  # "a lighthouse" is a test prompt
    ]


# --------------------------------------------------------------------------------------------------
# The writer: resume, batches, mapping, progress
# --------------------------------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_dataset(tmp_path):
    src = tmp_path / "pap"
    (src / "data").mkdir(parents=True)
    rows = [
        _pickapic_row(i, f"prompt {i // 2}", [1.0, 0.0, 0.5][i % 3], f"u{2 * i}", f"u{2 * i + 1}")
        for i in range(11)
    ]
    pq.write_table(_pickapic_table(rows[:9]), src / "data/train-00000-of-00001.parquet", row_group_size=3)
    pq.write_table(_pickapic_table(rows[9:]), src / "data/test-00000-of-00001.parquet", row_group_size=1)
    import_dataset("pickapic-v2", src, tmp_path / "once", progress=False)

    def stop_at_8(done, total):
        if done == 8:
            raise _Interrupt

    out = tmp_path / "resumed"
    with pytest.raises(_Interrupt):
        import_dataset("pickapic-v2", src, out, progress=stop_at_8, checkpoint_rows=3)
    partial = tmp_path / ".resumed.import-partial"
    assert not out.exists() and partial.is_dir()  # the dataset appears only when complete
    with open(partial / "train.jsonl", "ab") as f:  # a kill in the middle of a line
        f.write(b'{"id": "half-writ')
    with pytest.raises(ZRewardInputError, match="--resume"):
        import_dataset("pickapic-v2", src, out, progress=False)
    with pytest.raises(ZRewardInputError, match="other settings"):
        import_dataset(
            "pickapic-v2", src, out, progress=False, resume=True, mapping={"preference": "aesthetics"}
        )
    report = import_dataset("pickapic-v2", src, out, progress=False, resume=True, checkpoint_rows=3)
    assert report.resumed and not partial.exists()
    for name in ("train.jsonl", "test.jsonl", "train.preferences.jsonl", "test.preferences.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "once" / name).read_bytes(), name
    images = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file())
    assert images == sorted(
        p.relative_to(tmp_path / "once").as_posix()
        for p in (tmp_path / "once/images").rglob("*")
        if p.is_file()
    )
    once = json.loads((tmp_path / "once/import_report.json").read_text())
    again = json.loads((out / "import_report.json").read_text())
    for key in ("rows_read", "rows_imported", "records", "preferences", "images_written", "skipped"):
        assert again[key] == once[key], key
    assert validate_dataset(out) == []


def test_parquet_is_read_in_batches_across_row_groups(tmp_path):
    rows = [_pickapic_row(i, f"p{i}", 1.0, f"u{2 * i}", f"u{2 * i + 1}") for i in range(7)]
    path = tmp_path / "train-0.parquet"
    pq.write_table(_pickapic_table(rows), path, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 3
    file = TableFile(path, "parquet", "train", "train")
    batches = iter_table_batches(file, ["caption", "ranking_id", "nope"], batch_size=2, skip_rows=4)
    seen = []
    while True:
        try:
            first, batch = next(batches)
        except StopIteration as stop:
            total = stop.value
            break
        assert len(batch) <= 2 and set(batch[0]) == {"caption", "ranking_id"}
        seen.append((first, [r["ranking_id"] for r in batch]))
    # rows 5..7 (1-based) are ranking ids 4..6, in batches of at most 2 rows; the row number of each
    # batch's first row is right wherever pyarrow cuts the batches
    assert [i for _, ids in seen for i in ids] == [4, 5, 6] and all(
        first == ids[0] + 1 for first, ids in seen
    )
    assert total == 7


def test_parquet_reading_holds_one_row_group_not_the_file(tmp_path):
    # 20 row groups of 10 rows x 10 kB of incompressible bytes: 2 MB of file, 100 kB per row group
    import os as _os

    path = tmp_path / "train-0.parquet"
    table = pa.table(
        {"caption": [f"p{i}" for i in range(200)], "jpg_0": [_os.urandom(10_000) for _ in range(200)]}
    )
    pq.write_table(table, path, row_group_size=10, compression="none")
    del table
    base = pa.total_allocated_bytes()
    peak = 0
    file = TableFile(path, "parquet", "train", "train")
    for _, batch in iter_table_batches(file, ["caption", "jpg_0"], batch_size=4):
        peak = max(peak, pa.total_allocated_bytes() - base)
        assert batch
    assert peak < 500_000, f"{peak} bytes in pyarrow's pool while reading: more than a row group or two"


def test_json_arrays_stream_in_chunks(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[1, 23456, {"a": "x,]"}, [7, 8],\n 9.5 ]')
    assert [v for _, v in iter_json_elements(path, chunk_chars=3)] == [1, 23456, {"a": "x,]"}, [7, 8], 9.5]
    path.write_text('[{"a": 1}, {"b": }, {"c": 3}]')
    items = list(iter_json_elements(path, chunk_chars=4))
    assert items[0] == (1, {"a": 1})
    assert isinstance(items[1][1], SourceProblem) and "element 2" in items[1][1].reason and len(items) == 2
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')  # JSON Lines: one bad line costs one line
    items = list(iter_json_elements(path))
    assert [n for n, _ in items] == [1, 2, 3] and isinstance(items[1][1], SourceProblem)


def test_tfrecord_framing_is_checked(tmp_path):
    path = tmp_path / "x.tfrecord"
    _write_tfrecord(path, [b"first", b"second"])
    assert list(iter_tfrecord(path, check_payload=True)) == [(1, b"first"), (2, b"second")]
    data = bytearray(path.read_bytes())
    data[len(b"first") + 16 + 9] ^= 0xFF  # the second record's length checksum
    path.write_bytes(bytes(data))
    items = list(iter_tfrecord(path))
    assert items[0] == (1, b"first") and isinstance(items[1][1], SourceProblem) and len(items) == 2


def test_split_names_of_source_files():
    assert split_of_path(Path("data/train-00000-of-00645.parquet")) == ("train", "train")
    assert split_of_path(Path("data/validation-00001-of-00002.parquet")) == ("validation", "val")
    assert split_of_path(Path("data/validation_unique-00000.parquet")) == ("validation_unique", None)
    assert split_of_path(Path("r/images/test/test_3.json"), Path("r")) == ("test", "test")
    assert split_of_path(Path("dev.tfrecord")) == ("dev", "val")
    assert split_of_path(Path("shard-0.parquet")) == (None, None)


def test_mapping_overrides_and_their_errors(tmp_path):
    src = _agiqa(tmp_path / "agiqa")
    report = import_dataset(
        "agiqa-3k", src, tmp_path / "out", mapping={"mos_quality": "aesthetics"}, drop=["mos_align"],
        val_fraction=0, test_fraction=0, progress=False,
    )  # fmt: skip
    first = _by_id(tmp_path / "out/train.jsonl")["agiqa3k-AttnGAN_normal_000"]
    assert first["scores"] == pytest.approx({"aesthetics": 1 + 0.965602553 * 0.8})
    assert first["meta"]["std"] == pytest.approx({"aesthetics": 0.223270101 * 0.8})
    assert first["meta"]["original"]["mos_align"] == 0.40889324  # dropped from scores, kept as original
    assert report.mapping["mos_align"]["dimension"] is None
    from zreward_deploy.data.importers.agiqa3k import Agiqa3kImporter

    fields = Agiqa3kImporter.fields
    with pytest.raises(ZRewardInputError, match="no field 'mos'"):
        resolve_fields(fields, Target(), {"mos": "realism"})
    with pytest.raises(ZRewardInputError, match="not a dimension"):
        resolve_fields(fields, Target(), {"mos_quality": "overall"})  # a score has no 'overall'
    with pytest.raises(ZRewardInputError, match="both map to 'alignment'"):
        resolve_fields(fields, Target(), {"mos_quality": "alignment"})
    with pytest.raises(ZRewardInputError, match="drop it with --drop mos_quality"):
        resolve_fields(fields, Target(dimensions=("alignment",)))  # a rubric without realism
    with pytest.raises(ZRewardInputError, match=r"outside|LO < HI"):
        import_dataset("agiqa-3k", src, tmp_path / "x", source_ranges=["mos_quality=5:0"], progress=False)


def test_progress_lines_when_redirected():
    out = io.StringIO()
    progress = ImportProgress(out, "import x", every=4)
    for done in range(1, 21):
        progress(done, 20)
    assert len(out.getvalue().splitlines()) == 10 and "20/20 rows (100%)" in out.getvalue()
    out = io.StringIO()
    progress = ImportProgress(out, "import x", every=4)
    for done in range(1, 10):
        progress(done, None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("import x: 8 rows,") and "rows/s" in lines[1]


def test_cli_import_then_check(tmp_path, capsys):
    from zreward_deploy.commands.data import IMPORT_FORMATS
    from zreward_deploy.data.importers import ALL_FORMATS

    assert IMPORT_FORMATS == ALL_FORMATS  # the CLI's list, kept free of importer imports, is the registry's
    src = _agiqa(tmp_path / "agiqa")
    out = tmp_path / "out"
    assert (
        main(["data", "import", "agiqa-3k", str(src), "--out", str(out), "--quiet", "--scale-min", "1"]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith("imported agiqa-3k into") and "3 of 6 rows imported" in printed
    assert "skipped (malformed) data.csv:4: mos_quality: must be a number, got 'x'" in printed
    assert main(["data", "check", str(out)]) == 0
    pairs = tmp_path / "pairs"  # scored-pairs: helper P's write_preference_dataset behind the same command
    assert (
        main(
            [
                "data",
                "import",
                "scored-pairs",
                str(out),
                "--out",
                str(pairs),
                "--dimension",
                "realism",
                "--quiet",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"wrote {pairs} from {out} (train: 2 records")
    assert main(["data", "check", str(pairs)]) == 0
    assert main(["data", "import", "agiqa-3k", str(src), "--out", str(out), "--quiet"]) == 2  # not empty
    assert (
        main(
            [
                "data",
                "import",
                "agiqa-3k",
                str(src),
                "--out",
                str(tmp_path / "y"),
                "--map",
                "mos_quality=looks",
            ]
        )
        == 2
    )
    assert "not a dimension of the target rubric" in capsys.readouterr().err


def test_scored_pairs_calls_the_preference_writer(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("zreward_deploy.data.preferences")

    def write_preference_dataset(src, out, dimensions=None, **kwargs):
        calls.append((src, out, dimensions, kwargs["min_gap"], kwargs["ties"]))
        return {"out": str(out), "splits": {"train": {"records": 4, "preferences": 3, "ties": 0}}}

    fake.write_preference_dataset = write_preference_dataset
    monkeypatch.setitem(sys.modules, "zreward_deploy.data.preferences", fake)
    report = import_dataset(
        "scored-pairs", "scored", "pairs", dimensions=["realism"], min_gap=0.5, ties=True, progress=False
    )
    assert calls == [("scored", "pairs", ["realism"], 0.5, True)]
    assert report.records == {"train": 4} and report.preferences == {"train": 3}


def _png_bomb(side: int = 100_000) -> bytes:
    """A PNG header declaring side x side pixels (no pixel data): refused from the header alone."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_a_bad_image_skips_its_row_and_leaves_no_file(tmp_path):
    src = tmp_path / "pap"
    src.mkdir()
    good = _pickapic_row(0, "a cat", 1.0, "u1", "u2")
    bomb = {**_pickapic_row(1, "a dog", 1.0, "u3", "u4"), "jpg_1": _png_bomb()}
    broken = {**_pickapic_row(2, "a fox", 1.0, "u5", "u6"), "jpg_0": b"\xff\xd8\xff not a jpeg"}
    pq.write_table(_pickapic_table([good, bomb, broken]), src / "train-0.parquet")
    report = import_dataset("pickapic-v2", src, tmp_path / "out", progress=False)
    assert validate_dataset(tmp_path / "out") == []
    assert _problems(report) == [
        ("image", "train-0.parquet", "2", "image"),
        ("image", "train-0.parquet", "3", "image"),
    ]
    assert "decompression bomb" in report.problems[0]["reason"] or "pixels" in report.problems[0]["reason"]
    # u3's image was fine and written before u4's was refused: the row is skipped whole, its file removed
    files = [p for p in (tmp_path / "out/images").rglob("*") if p.is_file()]
    assert sorted(p.read_bytes() for p in files) == sorted([_image(1), _image(2)])
    assert report.records == {"train": 2} and report.images_written == 2


def test_an_import_loads_neither_torch_nor_transformers(tmp_path):
    src = _agiqa(tmp_path / "agiqa")
    code = (
        "import sys; from zreward_deploy.data.importers import import_dataset; "
        f"import_dataset('agiqa-3k', {str(src)!r}, {str(tmp_path / 'out')!r}, progress=False); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert (tmp_path / "out/train.jsonl").is_file()


def test_model_sets_the_target_rubric_and_scale(tmp_path, tiny_dir):
    from zreward_deploy.config import ZRewardConfig

    config = ZRewardConfig.from_pretrained(tiny_dir)
    scale, rubric = config.get_score_scale(), config.get_rubric()
    report = import_dataset(
        "agiqa-3k", _agiqa(tmp_path / "agiqa"), tmp_path / "out", model=tiny_dir, progress=False
    )
    assert report.target == {"dimensions": list(rubric.names), "low": scale.min, "high": scale.max}
    assert validate_dataset(tmp_path / "out", scale=scale, rubric=rubric) == []
    with pytest.raises(ZRewardInputError, match="--model"):
        import_dataset("agiqa-3k", tmp_path / "agiqa", tmp_path / "x", model=tiny_dir, scale=(0, 1))
