"""Conversion with atc/aoe (recipe 3.2), checked against fake tools on PATH."""
import json

import pytest

from tests.unit.fake_tools import install_fake_tools
from fsaf_repro import convert
from fsaf_repro.cli import main as cli_main
from fsaf_repro.errors import ToolError
from fsaf_repro.fileio import file_sha256
from fsaf_repro.spec import input_constants


@pytest.fixture
def tools(tmp_path, monkeypatch):
    return install_fake_tools(tmp_path / "bin", monkeypatch)


@pytest.fixture
def onnx_model(tmp_path):
    path = tmp_path / "fsaf.onnx"
    path.write_bytes(b"not really onnx, the fake atc does not read it")
    return str(path)


def write_export_sidecar(onnx_path, batch_size="dynamic", height=320, width=480, name="input"):
    with open(onnx_path + ".json", "w") as handle:
        json.dump({"flavour": "ascend-nms", "batch_size": batch_size,
                   "input": {"name": name, "shape": [1, 3, height, width], "dtype": "float32"}}, handle)


def test_atc_argv_follows_the_recipe():
    argv = convert.atc_argv("./fsaf.onnx", "fsaf_bs1", 1, "Ascend310P3")
    assert argv[:8] == ["atc", "--framework=5", "--model=./fsaf.onnx", "--output=fsaf_bs1",
                        "--input_format=NCHW", "--input_shape=input:1,3,800,1216", "--log=error",
                        "--soc_version=Ascend310P3"]
    assert "--out_nodes=dets;labels" in argv
    assert "--precision_mode=force_fp16" in argv
    with pytest.raises(ToolError, match="precision mode"):
        convert.atc_argv("m.onnx", "o", 1, "Ascend310", precision_mode="fp8")


def test_aoe_argv_uses_job_type_2():
    argv = convert.aoe_argv("./fsaf.onnx", "aoe_fsaf_bs4", 4)
    assert argv == ["aoe", "--framework=5", "--model=./fsaf.onnx", "--job_type=2", "--output=aoe_fsaf_bs4",
                    "--input_format=NCHW", "--input_shape=input:4,3,800,1216"]
    with pytest.raises(ToolError, match="job_type"):
        convert.aoe_argv("m.onnx", "o", 1, job_type=3)


def test_soc_version_from_npu_smi(tools, monkeypatch):
    assert convert.detect_soc_version() == "Ascend310P3"
    monkeypatch.setenv("FAKE_NPU_CHIP", "310")
    assert convert.detect_soc_version() == "Ascend310"


@pytest.mark.parametrize("mode, message", [
    ("no_chip", "no chip row"),
    ("mixed", "several chip types"),
    ("fail", "exit code 255"),
    ("segv", "SIGSEGV"),
])
def test_npu_smi_outcomes_are_explained(tools, monkeypatch, mode, message):
    monkeypatch.setenv("FAKE_NPU_SMI_MODE", mode)
    with pytest.raises(ToolError, match=message):
        convert.detect_soc_version()


def test_missing_tool_names_what_to_install(tmp_path, onnx_model, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolError, match="set_env.sh"):
        convert.convert_one(onnx_model, tmp_path / "om", 1, "Ascend310")
    with pytest.raises(ToolError, match="--soc-version"):
        convert.detect_soc_version()


def test_convert_batch_sizes_builds_oms_logs_and_sidecars(tools, onnx_model, tmp_path):
    write_export_sidecar(onnx_model, height=320, width=480, name="images")
    out = tmp_path / "om"
    results = convert.convert_batch_sizes(onnx_model, out, [1, 4])
    assert sorted(results) == [1, 4]
    for bs in (1, 4):
        om = out / "fsaf_bs{}.om".format(bs)
        built = json.loads(om.read_text())  # the fake atc records what it was asked
        assert built["input_shape"] == "images:{},3,320,480".format(bs)
        assert built["soc_version"] == "Ascend310P3"
        assert built["out_nodes"] == "dets;labels"
        assert (out / "fsaf_bs{}.atc.log".format(bs)).read_text().count("ATC run success") == 1
        sidecar = json.loads((out / "fsaf_bs{}.om.json".format(bs)).read_text())
        assert sidecar["batch_size"] == bs
        assert sidecar["input"]["shape"] == [bs, 3, 320, 480]
        assert sidecar["out_nodes"] == ["dets", "labels"]
        assert sidecar["precision_mode"] == "force_fp16"
        assert sidecar["onnx_sha256"] == file_sha256(onnx_model)
        assert sidecar["onnx_sidecar"]["flavour"] == "ascend-nms"
        assert convert.read_om_sidecar(str(om))["batch_size"] == bs
    # the scratch directories (with atc's kernel_meta litter) are gone after success
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["npu-smi.log", "fsaf_bs1.om", "fsaf_bs1.om.json", "fsaf_bs1.atc.log",
         "fsaf_bs4.om", "fsaf_bs4.om.json", "fsaf_bs4.atc.log"])


def test_default_batch_sizes_and_shape_come_from_the_recipe(tools, onnx_model, tmp_path):
    results = convert.convert_batch_sizes(onnx_model, tmp_path / "om", soc_version="Ascend310")
    assert sorted(results) == [1, 4, 8, 16, 32, 64]
    inp = input_constants()
    assert results[64]["input"]["shape"] == [64, 3, inp["height"], inp["width"]]
    assert results[64]["soc_version"] == "Ascend310"


@pytest.mark.parametrize("mode, message", [
    ("fail", "E10001"),
    ("segv", "died by SIGSEGV"),
    ("no_success_line", "never printed its success line"),
    ("no_om", "did not produce"),
])
def test_atc_failures_are_reported_and_leave_no_om(tools, onnx_model, tmp_path, monkeypatch, mode, message):
    monkeypatch.setenv("FAKE_ATC_MODE", mode)
    out = tmp_path / "om"
    with pytest.raises(ToolError, match=message) as info:
        convert.convert_one(onnx_model, out, 1, "Ascend310P3")
    assert not (out / "fsaf_bs1.om").exists()
    assert not (out / "fsaf_bs1.om.json").exists()
    log = out / "fsaf_bs1.atc.log"
    assert log.exists() and str(log) in str(info.value)
    assert "scratch directory kept" in str(info.value)


def test_one_failing_batch_size_keeps_the_others(tools, onnx_model, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ATC_FAIL_BS", "8")
    out = tmp_path / "om"
    with pytest.raises(ToolError) as info:
        convert.convert_batch_sizes(onnx_model, out, [1, 8, 16], soc_version="Ascend310P3")
    text = str(info.value)
    assert "1 of 3 conversions failed" in text and "batch size 8" in text and "[1, 16]" in text
    assert (out / "fsaf_bs1.om").exists() and (out / "fsaf_bs16.om").exists()
    assert not (out / "fsaf_bs8.om").exists()
    with pytest.raises(ToolError, match="batch size 8"):
        convert.convert_batch_sizes(onnx_model, out, [8, 16], soc_version="Ascend310P3", keep_going=False)


def test_static_batch_onnx_is_refused_before_running_atc(tools, onnx_model, tmp_path):
    write_export_sidecar(onnx_model, batch_size=1)
    with pytest.raises(ToolError, match="static batch size of 1 .* batch size 4"):
        convert.convert_one(onnx_model, tmp_path / "om", 4, "Ascend310P3")
    assert not (tmp_path / "om" / "fsaf_bs4.atc.log").exists()


def test_aoe_tuning(tools, onnx_model, tmp_path, monkeypatch):
    out = tmp_path / "om"
    sidecar = convert.convert_one(onnx_model, out, 4, "Ascend310P3", tool="aoe")
    assert sidecar["tool"] == "aoe" and sidecar["job_type"] == 2
    assert "--job_type=2" in sidecar["argv"]
    assert (out / "aoe_fsaf_bs4.om").exists()
    assert "Aoe process finished" in (out / "aoe_fsaf_bs4.aoe.log").read_text()
    for mode, message in (("segv", "SIGSEGV"), ("no_success_line", "Aoe process finished"),
                          ("fail", "exit code 255")):
        monkeypatch.setenv("FAKE_AOE_MODE", mode)
        with pytest.raises(ToolError, match=message):
            convert.convert_one(onnx_model, out, 8, "Ascend310P3", tool="aoe")
        assert not (out / "aoe_fsaf_bs8.om").exists()


def test_cli_convert(tools, onnx_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "om"
    assert cli_main(["convert", onnx_model, "--out-dir", str(out), "--batch-sizes", "1,2"]) == 0
    assert "batch size 2" in capsys.readouterr().out
    assert (out / "fsaf_bs2.om").exists()
    monkeypatch.setenv("FAKE_ATC_MODE", "segv")
    assert cli_main(["convert", onnx_model, "--out-dir", str(out), "--batch-sizes", "8"]) == 1
    assert "SIGSEGV" in capsys.readouterr().err
    assert cli_main(["convert", onnx_model, "--out-dir", str(out), "--batch-sizes", "x"]) == 1


def test_parse_batch_sizes():
    assert convert.parse_batch_sizes("1, 4,8") == [1, 4, 8]
    for bad in ("", "0", "a,b"):
        with pytest.raises(ToolError, match="--batch-sizes"):
            convert.parse_batch_sizes(bad)


def test_uint8_export_with_image_hw_input_gets_both_input_shapes(tools, onnx_model, tmp_path):
    with open(onnx_model + ".json", "w") as handle:
        json.dump({"flavour": "onnx-nms", "batch_size": "dynamic",
                   "input": {"name": "input", "shape": ["batch", 3, 64, 96], "dtype": "uint8"},
                   "inputs": [{"name": "input", "shape": ["batch", 3, 64, 96], "dtype": "uint8"},
                              {"name": "image_hw", "shape": ["batch", 2], "dtype": "int32"}]}, handle)
    sidecar = convert.convert_one(onnx_model, tmp_path / "om", 4, "Ascend310P3")
    assert "--input_shape=input:4,3,64,96;image_hw:4,2" in sidecar["argv"]
    assert sidecar["extra_inputs"] == [{"name": "image_hw", "shape": [4, 2]}]
