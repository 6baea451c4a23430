"""Conversion with atc/aoe (recipe 3.2), checked against fake tools on PATH."""
import json
import os
import sys

import pytest

from tests.unit.fake_tools import install_fake_tools
from fsaf_repro import convert
from fsaf_repro.cli import main as cli_main
from fsaf_repro.errors import OptionError, ToolError
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
        convert.convert_one(onnx_model, tmp_path / "om", convert.ConversionJob("atc", 1, "Ascend310"))
    with pytest.raises(ToolError, match="--soc-version"):
        convert.detect_soc_version()


def test_convert_batch_sizes_builds_oms_logs_and_sidecars(tools, onnx_model, tmp_path):
    write_export_sidecar(onnx_model, height=320, width=480, name="images")
    out = tmp_path / "om"
    results = convert.convert_batch_sizes(onnx_model, out, [1, 4])
    assert sorted(results) == [1, 4]
    for bs in (1, 4):
        om = out / f"fsaf_bs{bs}.om"
        built = json.loads(om.read_text())  # the fake atc records what it was asked
        assert built["input_shape"] == f"images:{bs},3,320,480"
        assert built["soc_version"] == "Ascend310P3"
        assert built["out_nodes"] == "dets;labels"
        assert (out / f"fsaf_bs{bs}.atc.log").read_text().count("ATC run success") == 1
        sidecar = json.loads((out / f"fsaf_bs{bs}.om.json").read_text())
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
        convert.convert_one(onnx_model, out, convert.ConversionJob("atc", 1, "Ascend310P3"))
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
        convert.convert_one(onnx_model, tmp_path / "om", convert.ConversionJob("atc", 4, "Ascend310P3"))
    assert not (tmp_path / "om" / "fsaf_bs4.atc.log").exists()


def test_aoe_tuning(tools, onnx_model, tmp_path, monkeypatch):
    out = tmp_path / "om"
    sidecar = convert.convert_one(onnx_model, out, convert.ConversionJob("aoe", 4, "Ascend310P3"))
    assert sidecar["tool"] == "aoe" and sidecar["job_type"] == 2
    assert "--job_type=2" in sidecar["argv"]
    assert (out / "aoe_fsaf_bs4.om").exists()
    assert "Aoe process finished" in (out / "aoe_fsaf_bs4.aoe.log").read_text()
    for mode, message in (("segv", "SIGSEGV"), ("no_success_line", "Aoe process finished"),
                          ("fail", "exit code 255")):
        monkeypatch.setenv("FAKE_AOE_MODE", mode)
        with pytest.raises(ToolError, match=message):
            convert.convert_one(onnx_model, out, convert.ConversionJob("aoe", 8, "Ascend310P3"))
        assert not (out / "aoe_fsaf_bs8.om").exists()


def test_cli_convert(tools, onnx_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "om"
    assert cli_main(["convert", onnx_model, "--out-dir", str(out), "--batch-sizes", "1,2"]) == 0
    assert "batch size 2" in capsys.readouterr().out
    assert (out / "fsaf_bs2.om").exists()
    monkeypatch.setenv("FAKE_ATC_MODE", "segv")
    assert cli_main(["convert", onnx_model, "--out-dir", str(out), "--batch-sizes", "8"]) == 1
    assert "SIGSEGV" in capsys.readouterr().err
    # a batch size list that does not parse is refused by its declared kind while parsing (argparse, exit 2)
    with pytest.raises(SystemExit) as refused:
        cli_main(["convert", onnx_model, "--out-dir", str(out), "--batch-sizes", "x"])
    assert refused.value.code == 2 and "--batch-sizes" in capsys.readouterr().err


def test_convert_refuses_a_bad_batch_size_list_before_any_tool_runs(tmp_path):
    # the one batch-size parser (options.BATCH_SIZES) checks the library call too
    for bad in ([], [0], [1, -4], [4, 1, 4]):
        with pytest.raises(OptionError, match="batch_sizes must be comma-separated positive integers, each once"):
            convert.convert_batch_sizes("missing.onnx", str(tmp_path / "oms"), bad, soc_version="Ascend310P3")
    assert not (tmp_path / "oms").exists()


def test_uint8_export_with_image_hw_input_gets_both_input_shapes(tools, onnx_model, tmp_path):
    with open(onnx_model + ".json", "w") as handle:
        json.dump({"flavour": "onnx-nms", "batch_size": "dynamic",
                   "input": {"name": "input", "shape": ["batch", 3, 64, 96], "dtype": "uint8"},
                   "inputs": [{"name": "input", "shape": ["batch", 3, 64, 96], "dtype": "uint8"},
                              {"name": "image_hw", "shape": ["batch", 2], "dtype": "int32"}]}, handle)
    sidecar = convert.convert_one(onnx_model, tmp_path / "om", convert.ConversionJob("atc", 4, "Ascend310P3"))
    assert "--input_shape=input:4,3,64,96;image_hw:4,2" in sidecar["argv"]
    assert sidecar["extra_inputs"] == [{"name": "image_hw", "shape": [4, 2]}]


# --- published outputs replayed through the real readers (tests/unit/fixtures/tool_outputs) ---------

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tool_outputs")
with open(os.path.join(FIXTURES, "expected.json")) as _handle:
    EXPECTED = json.load(_handle)


def fixtures_of(kind):
    return sorted(n for n, e in EXPECTED.items() if isinstance(e, dict) and e["kind"] == kind)


REPLAY = '''#!{python}
"""Replays a published output: prints REPLAY_FILE, writes <--output>.om when asked, exits REPLAY_EXIT."""
import os
import sys
with open(os.environ["REPLAY_FILE"]) as handle:
    sys.stdout.write(handle.read())
for arg in sys.argv[1:]:
    if arg.startswith("--output=") and os.environ.get("REPLAY_WRITES_OM") == "1":
        open(arg.split("=", 1)[1] + ".om", "w").close()
sys.exit(int(os.environ.get("REPLAY_EXIT", "0")))
'''


@pytest.fixture
def replay(tmp_path, monkeypatch):
    """Install `atc` and `npu-smi` that replay a fixture; returns a function selecting it."""
    bin_dir = tmp_path / "replay_bin"
    bin_dir.mkdir()
    for name in ("atc", "npu-smi"):
        path = bin_dir / name
        path.write_text(REPLAY.format(python=sys.executable))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))

    def select(name, exit_code=0, writes_om=False):
        monkeypatch.setenv("REPLAY_FILE", os.path.join(FIXTURES, name))
        monkeypatch.setenv("REPLAY_EXIT", str(exit_code))
        monkeypatch.setenv("REPLAY_WRITES_OM", "1" if writes_om else "0")
    return select


@pytest.mark.parametrize("name", fixtures_of("npu_smi"))
def test_soc_version_from_published_npu_smi_tables(replay, name):
    replay(name)
    assert convert.detect_soc_version() == EXPECTED[name]["soc_version"]


@pytest.mark.parametrize("old, new, message", [
    ("310P3 ", "610X1 ", r"expected a 310, 310P, 310B or 910 chip name .* in the row '\| 2       610X1 "),
    ("| NPU     Name", "| Device  Name", "expected the npu-smi table with a header row .*begins '\\+---"),
])
def test_npu_smi_table_that_is_not_known_is_quoted(replay, tmp_path, monkeypatch, old, new, message):
    with open(os.path.join(FIXTURES, "npu_smi_300I_duo_310P3.txt")) as handle:
        text = handle.read()
    assert old in text
    (tmp_path / "changed.txt").write_text(text.replace(old, new, 1))
    replay("npu_smi_300I_duo_310P3.txt")
    monkeypatch.setenv("REPLAY_FILE", str(tmp_path / "changed.txt"))
    with pytest.raises(ToolError, match=message):
        convert.detect_soc_version()


@pytest.mark.parametrize("name", fixtures_of("atc"))
def test_published_atc_outputs_are_judged_by_their_lines(replay, onnx_model, tmp_path, name):
    expected = EXPECTED[name]
    replay(name, expected["exit_code"], writes_om=expected["success"])
    out = tmp_path / "om"
    if expected["success"]:
        sidecar = convert.convert_one(onnx_model, out, convert.ConversionJob("atc", 1, "Ascend310P3"))
        assert (out / "fsaf_bs1.om").exists()
        assert [w.split(":")[0] for w in sidecar["tool_warnings"]] == expected["warning_codes"]
        return
    with pytest.raises(ToolError) as info:
        convert.convert_one(onnx_model, out, convert.ConversionJob("atc", 1, "Ascend310P3"))
    first_line = str(info.value).splitlines()[0]
    # the error codes lead the message, whatever follows them in the output (traceback lines)
    assert first_line.startswith("atc: failed with exit code 1: " + expected["errors"][0] + ":")
    assert not (out / "fsaf_bs1.om").exists()
    # the same output with exit code 0 and an om written is still a failure: atc said so
    replay(name, 0, writes_om=True)
    with pytest.raises(ToolError, match="exited 0 but printed its failure line 'ATC run failed': "
                                        + expected["errors"][0]):
        convert.convert_one(onnx_model, out, convert.ConversionJob("atc", 1, "Ascend310P3"))
    assert not (out / "fsaf_bs1.om").exists()


def test_atc_exit_0_without_its_success_line_quotes_the_last_line(tools, onnx_model, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ATC_MODE", "no_success_line")
    with pytest.raises(ToolError, match="never printed its success line 'ATC run success' \\(its last line: "
                                        "'ATC start working now, please wait for a moment.'\\)"):
        convert.convert_one(onnx_model, tmp_path / "om", convert.ConversionJob("atc", 1, "Ascend310P3"))
    monkeypatch.setenv("FAKE_ATC_MODE", "failed_exit0")
    with pytest.raises(ToolError, match="exited 0 but printed its failure line 'ATC run failed': EZ3003: "):
        convert.convert_one(onnx_model, tmp_path / "om", convert.ConversionJob("atc", 1, "Ascend310P3"))
    assert not (tmp_path / "om" / "fsaf_bs1.om").exists()
