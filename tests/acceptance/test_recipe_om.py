"""Recipe sections 3.2 and 7.1: the ascend-nms export compiles to an om for each batch size with atc,
and with aoe operator tuning (job type 2) on the 310P.

Needs CANN's atc (and aoe) on PATH and the soc version (FSAF_SOC_VERSION, or the driver's npu-smi to read
it). The weights are the official ones when FSAF_CHECKPOINT is given, else generated ones in the
official layout (the id says which): the graph, and so the compilation, is the same.
The oms, their logs and sidecars go to <run dir>/om/.
"""
import os

import pytest

from fsaf_repro.spec import input_constants, load_recipe_spec

from tests.acceptance.conftest import ENV_OF


def check_om(sidecar, batch_size, tool):
    inp = input_constants()
    io_spec = load_recipe_spec()["acceptance"]["onnx_io"]
    assert os.path.isfile(sidecar["path"]) and os.path.getsize(sidecar["path"]) > 0
    assert sidecar["tool"] == tool and sidecar["batch_size"] == batch_size
    assert sidecar["input"]["name"] == io_spec["input"]["name"]
    assert sidecar["input"]["shape"] == [batch_size, 3, inp["height"], inp["width"]]
    assert sidecar["onnx_sidecar"]["flavour"] == "ascend-nms"
    assert os.path.isfile(os.path.join(os.path.dirname(sidecar["path"]), sidecar["log"]))


def test_om_compiles_with_atc(om_for, model_kind, batch_size):
    """atc --framework=5 ... --input_shape=input:B,3,800,1216 --out_nodes=dets;labels: exit 0, its success
    line and the om on disk (fsaf_repro.convert judges all three)."""
    sidecar = om_for(model_kind, batch_size, "atc")
    check_om(sidecar, batch_size, "atc")
    outputs = load_recipe_spec()["acceptance"]["onnx_io"]["outputs"]["ascend-nms"]
    assert sidecar["out_nodes"] == [o["name"] for o in outputs]


def test_om_compiles_with_aoe_operator_tuning_on_310p(settings, om_for, model_kind, batch_size):
    """aoe --job_type=2 for the recipe's 310P_aoe column."""
    if settings.device != "310P_aoe":
        pytest.skip("AOE tuning is the recipe's 310P_aoe column: set {}=310P_aoe (or pass --device 310P_aoe) "
                    "on an Ascend 310P host".format(ENV_OF["--device"]))
    sidecar = om_for(model_kind, batch_size, "aoe")
    check_om(sidecar, batch_size, "aoe")
    assert sidecar["job_type"] == 2
