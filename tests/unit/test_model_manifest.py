"""Model folders: the shipped manifest is valid; every broken folder fails naming its problem."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.inference.errors import (
    ManifestError,
    ModelError,
    ModelFileError,
    ModelShapeError,
)
from agent.inference.model import load_model_folder, parse_manifest, sha256_file
from tests.model_helpers import SHIPPED_MANIFEST, make_model_dir, shipped_manifest, write_manifest


def test_shipped_manifest_is_valid_and_names_80_coco_labels() -> None:
    m = parse_manifest(SHIPPED_MANIFEST.read_text(encoding="utf-8"))
    assert (m.family, m.onnx, m.input.width, m.input.height) == (
        "yolox",
        "yolox_nano.onnx",
        416,
        416,
    )
    assert len(m.labels) == 80
    assert (m.labels[0], m.labels[16], m.labels[17], m.labels[79]) == (
        "person",
        "dog",
        "horse",
        "toothbrush",
    )


def test_shipped_manifest_sha256_is_the_shared_onnx(assets: Path) -> None:
    assert shipped_manifest()["sha256"] == sha256_file(assets / "yolox_nano.onnx")


def test_good_folder_loads_with_its_tensor_signature(tmp_path: Path, assets: Path) -> None:
    folder = load_model_folder(make_model_dir(tmp_path, assets))
    assert folder.onnx_path.name == "yolox_nano.onnx"
    assert folder.io is not None
    assert folder.io.inputs[0].name == "images"
    assert folder.io.outputs[0].shape == (1, 3549, 85)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model_folder(tmp_path / "nope")


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"model\.json is missing"):
        load_model_folder(tmp_path)


def test_manifest_not_json(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"name": "x",\n  oops}', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"not valid JSON \(line 2"):
        load_model_folder(tmp_path)


def test_missing_field_is_named(tmp_path: Path) -> None:
    manifest = shipped_manifest()
    del manifest["sha256"]
    write_manifest(tmp_path, manifest)
    with pytest.raises(ManifestError, match=r"field 'sha256': Field required"):
        load_model_folder(tmp_path)


def test_unknown_family_is_named(tmp_path: Path) -> None:
    write_manifest(tmp_path, {**shipped_manifest(), "family": "ssd"})
    with pytest.raises(ManifestError, match=r"field 'family': Input should be 'yolox'"):
        load_model_folder(tmp_path)


def test_unknown_key_and_nested_bad_value_are_named(tmp_path: Path) -> None:
    manifest = shipped_manifest()
    manifest["colour"] = "red"
    manifest["input"]["channel_order"] = "bgra"
    write_manifest(tmp_path, manifest)
    with pytest.raises(ManifestError) as info:
        load_model_folder(tmp_path)
    assert "field 'colour': Extra inputs are not permitted" in str(info.value)
    assert "field 'input.channel_order'" in str(info.value)


@pytest.mark.parametrize("onnx", ["../elsewhere.onnx", "/etc/model.onnx"])
def test_onnx_path_must_stay_inside_the_folder(onnx: str) -> None:
    with pytest.raises(ManifestError, match="inside the model folder"):
        parse_manifest(json.dumps({**shipped_manifest(), "onnx": onnx}))


def test_scale_accepts_a_fraction_string() -> None:
    manifest = shipped_manifest()
    manifest["input"]["scale"] = "1/255"
    assert parse_manifest(json.dumps(manifest)).input.scale == pytest.approx(1 / 255)


def test_missing_onnx_file(tmp_path: Path) -> None:
    write_manifest(tmp_path, shipped_manifest())
    with pytest.raises(ModelFileError, match=r"'yolox_nano\.onnx' named in model\.json is missing"):
        load_model_folder(tmp_path)


def test_sha256_mismatch(tmp_path: Path, assets: Path) -> None:
    folder = make_model_dir(tmp_path, assets, sha256="0" * 64)
    with pytest.raises(ModelFileError, match="sha256 mismatch"):
        load_model_folder(folder)
    # and skipping the check is possible (e.g. a device-side re-export)
    assert load_model_folder(folder, verify_sha256=False).manifest.sha256 == "0" * 64


def _folder_with_onnx_bytes(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "yolox_nano.onnx").write_bytes(data)
    digest = sha256_file(tmp_path / "yolox_nano.onnx")
    write_manifest(tmp_path, {**shipped_manifest(), "sha256": digest})
    return tmp_path


def test_truncated_onnx_is_reported_as_unloadable(tmp_path: Path, assets: Path) -> None:
    # given the real model cut in half, with a manifest hash that matches the cut file
    data = (assets / "yolox_nano.onnx").read_bytes()
    folder = _folder_with_onnx_bytes(tmp_path, data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="ONNX Runtime cannot load"):
        load_model_folder(folder)


def test_garbage_onnx_is_reported_as_unloadable(tmp_path: Path) -> None:
    folder = _folder_with_onnx_bytes(tmp_path, os.urandom(4096))
    with pytest.raises(ModelFileError, match="ONNX Runtime cannot load"):
        load_model_folder(folder)


def test_family_that_does_not_fit_the_outputs(tmp_path: Path, assets: Path) -> None:
    folder = make_model_dir(tmp_path, assets, family="yolov8")
    with pytest.raises(ModelShapeError, match=r"do not match family 'yolov8' with 80 labels"):
        load_model_folder(folder)


def test_label_count_that_does_not_fit_the_outputs(tmp_path: Path, assets: Path) -> None:
    folder = make_model_dir(tmp_path, assets, labels=shipped_manifest()["labels"][:79])
    with pytest.raises(ModelShapeError, match=r"with 79 labels, which needs \[1, 3549, 84\]"):
        load_model_folder(folder)


def test_input_size_that_does_not_fit_the_onnx(tmp_path: Path, assets: Path) -> None:
    manifest = shipped_manifest()
    manifest["input"]["width"] = 640
    folder = make_model_dir(tmp_path, assets, input=manifest["input"])
    with pytest.raises(ModelShapeError, match=r"input 'images' has shape \[1, 3, 416, 416\]"):
        load_model_folder(folder)


def test_every_model_error_is_an_inference_error() -> None:
    from agent.inference.errors import InferenceError

    assert issubclass(ModelError, InferenceError)
    assert issubclass(ManifestError, ModelError)
