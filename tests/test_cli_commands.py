"""The commands around convert/verify: list, info, env, and a missing framework's one-line error."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from senet_hub.cli import main
from senet_hub.errors import MissingFrameworkError, ParityError


def test_list_has_the_released_models():
    r = CliRunner().invoke(main, ["list", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 12 + 27  # the Caffe release and MindCV's, then the weights timm serves
    ids = {row["id"] for row in rows}
    assert {"SE-ResNet-50", "SENet-154", "seresnet18", "seresnext50_32x4d", "seresnet152d.ra2_in1k"} <= ids
    timm_row = next(row for row in rows if row["id"] == "legacy_senet154.in1k")
    assert timm_row["source_format"] == "pytorch" and timm_row["top1"] == 81.32
    r50 = next(row for row in rows if row["id"] == "SE-ResNet-50")
    assert r50["top1"] == 77.63 and r50["source_format"] == "caffe" and r50["params"] == 28088024


def test_info_and_env():
    r = CliRunner().invoke(main, ["info", "SE-ResNeXt-50", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["input_convention"]["channel_order"] == "BGR" and d["class_order"] == "senet"
    assert d["files"]["caffemodel"]["sha256"] is None  # the release published none: said, not invented
    r = CliRunner().invoke(main, ["env", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["backends"]["numpy"]["installed"]


def test_missing_framework_names_the_extra(tmp_path):
    """With a framework hidden from the import system, asking for it is one line naming the extra."""
    code = (
        "import sys, importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] == 'tensorflow' else real(n, *a)\n"
        "from senet_hub.cli import main\n"
        "main()\n"
    )
    args = ["verify", "--from", "zoo", "--arch", "SE-ResNet-50", "--backends", "numpy,tensorflow"]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert r.returncode == MissingFrameworkError.exit_code, r.stderr
    assert "pip install 'senet-hub[tensorflow]'" in r.stderr and "Traceback" not in r.stderr


def test_verify_cli_json_and_outputs(tmp_path):
    out = tmp_path / "outs"
    report = tmp_path / "r.json"
    args = ["verify", "--from", "zoo", "--arch", "seresnet18", "--backends", "numpy,onnxruntime", "--batch", "1"]
    r = CliRunner().invoke(main, [*args, "--json", str(report), "--save-outputs", str(out), "--max-rows", "3"])
    assert r.exit_code == 0, r.output
    d = json.loads(report.read_text())
    assert d["passed"] and d["tolerances"]["rtol_per_node"] == 1e-3 and d["versions"]["onnxruntime"]
    assert len(d["nodes"]) > 50 and all("onnxruntime" in n["results"] for n in d["nodes"])
    assert (out / "numpy.npy").exists() and (out / "onnxruntime.npy").exists()
    # a tolerance no float32 backend can meet is a parity failure with its own exit code
    r = CliRunner().invoke(main, [*args, "--rtol", "1e-12"])
    assert r.exit_code == ParityError.exit_code


def test_export_onnx_records_source_sha256(tmp_path):
    import hashlib

    onnx = __import__("pytest").importorskip("onnx", reason="onnx not installed (pip install 'senet-hub[onnx]')")
    from senet_hub import zoo
    from senet_hub.converters import caffe_writer

    prototxt, caffemodel = caffe_writer.save(zoo.synthetic_model("seresnet18"), tmp_path / "m")
    out = tmp_path / "m.onnx"
    args = ["export-onnx", "--prototxt", prototxt, "--caffemodel", caffemodel, "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    recorded = json.loads(props["source_sha256"])
    for role, path in (("prototxt", prototxt), ("caffemodel", caffemodel)):
        with open(path, "rb") as f:
            assert recorded[role] == hashlib.sha256(f.read()).hexdigest()
    assert json.loads(props["input_convention"])["channel_order"] == "RGB"  # kept through the Caffe files
