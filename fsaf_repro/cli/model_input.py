"""The input a verb feeds a model file: its sidecar's canvas and dtype unless given, a given value that
contradicts the sidecar refused (used by `infer` and `perf`).

A model exported at 256x384 takes only 256x384 inputs: running it at the recipe's 800x1216 because
--height/--width were left out would fail deep inside the runtime with its own message, and a user
should not have to repeat what the export recorded.
"""
from collections import namedtuple
from typing import Optional

from ..convert import read_model_sidecar
from ..data.transform import INPUT_DTYPES
from ..errors import OptionError
from ..options import IMAGE_SIDE
from ..spec import input_constants
from .args import typed

__all__ = ["DEFAULT_INPUT_DTYPE", "ModelInput", "add_model_input_arguments", "model_input"]

# The default input dtype where neither the option nor a sidecar says: the recipe's float32 .bin input.
DEFAULT_INPUT_DTYPE = "float32"



def add_model_input_arguments(parser):
    """--height, --width, --input-dtype of a verb that runs a model (infer, perf): resolved by model_input."""
    recipe = input_constants()
    for side in ("height", "width"):
        parser.add_argument("--" + side, type=typed(IMAGE_SIDE), default=None, help=f"network input {side} "
                            f"(default: the model sidecar's, else the recipe's {recipe[side]})")
    parser.add_argument("--input-dtype", default=None, choices=INPUT_DTYPES,
                        help="input dtype: float32 normalised, or uint8 for an export with normalisation in the graph "
                             f"(default: the model sidecar's, else {DEFAULT_INPUT_DTYPE})")

ModelInput = namedtuple("ModelInput", "height width input_dtype sidecar")


def model_input(model: Optional[str], height: Optional[int], width: Optional[int],
                input_dtype: Optional[str], backend: Optional[str] = None) -> ModelInput:
    """(height, width, input dtype, sidecar or None) for running `model`: each from the option when given,
    else from the model's sidecar (`fsaf_repro.convert.read_model_sidecar`), else the recipe's. A given
    value that differs from the sidecar's is an OptionError naming the option and the sidecar file, and
    so is a model of a kind `backend` does not run (an ONNX file for an om backend, and the reverse)."""
    sidecar = read_model_sidecar(model) if model else None
    if sidecar is not None and backend is not None:
        _check_model_kind(backend, sidecar)
    recipe = input_constants()
    recorded = {"--height": None, "--width": None, "--input-dtype": None}
    if sidecar is not None:
        recorded = {"--height": sidecar.height, "--width": sidecar.width, "--input-dtype": sidecar.input_dtype}
    given = {"--height": height, "--width": width, "--input-dtype": input_dtype}
    fallback = {"--height": recipe["height"], "--width": recipe["width"], "--input-dtype": DEFAULT_INPUT_DTYPE}
    resolved = {}
    for option, value in given.items():
        if value is not None and recorded[option] is not None and value != recorded[option]:
            raise OptionError(
                f"{option} {value} contradicts {sidecar.path}, which records a {sidecar.kind} input of "
                f"{sidecar.height}x{sidecar.width} {sidecar.input_dtype or ''}".rstrip()
                + f"; leave {option} out to use the model's")
        resolved[option] = next(v for v in (value, recorded[option], fallback[option]) if v is not None)
    return ModelInput(resolved["--height"], resolved["--width"], resolved["--input-dtype"], sidecar)


def _check_model_kind(backend, sidecar):
    """OptionError when the backend's declared model kind (its class's `model_kind`) is not the file's."""
    from ..backends import get_backend_class
    from ..backends.base import MODEL_OM, ONNX_MODEL_KINDS

    wants = get_backend_class(backend).model_kind
    takes = {"om": wants == MODEL_OM, "onnx": wants in ONNX_MODEL_KINDS}[sidecar.kind]
    if not takes:
        what = {MODEL_OM: "an om (fsaf-repro convert)", None: "no model file"}.get(
            wants, "an ONNX export (fsaf-repro export)" if wants in ONNX_MODEL_KINDS else f"a {wants} file")
        raise OptionError(f"--backend {backend} runs {what}, but {sidecar.path} says its model is a {sidecar.kind} "
                          f"file ({sidecar.flavour or 'no'} flavour); give a model of its kind or another backend")
