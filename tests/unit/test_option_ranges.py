"""Declared option kinds (issue 19, rule 2): every option of every verb has a declared type and range,
checked before any work; reproduce's library options and the backends' options use the same kinds."""
import argparse
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsaf_repro import backends
from fsaf_repro.cli import build_parser, main
from fsaf_repro.errors import BackendOptionError, OptionError
from fsaf_repro.options import (BATCH_SIZES, COUNT, SEED, THREADS, THREADS_OR_RUNTIME, TIMEOUT, batch_memory_bytes,
                                check_batch_memory, thread_limit)
from fsaf_repro.reproduce_config import resolve_config
from fsaf_repro.reproduce_options import ReproduceOptions, declaration
from fsaf_repro.errors import FitError
from fsaf_repro.train import fit_parameters


def _verbs():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices.items())


def _declared(action):
    return (getattr(action.type, "kind", None) is not None or getattr(action.type, "path_role", None) is not None
            or action.choices is not None)


def _typed_actions():
    for verb, parser in _verbs():
        for action in parser._actions:
            if getattr(action.type, "kind", None) is not None:
                yield verb, action


def test_every_option_that_takes_a_value_has_a_declared_type():
    verbs = _verbs()
    assert len(verbs) >= 12  # make-checkpoint ... reproduce: a walk over nothing would pass vacuously
    undeclared, walked = [], 0
    for verb, parser in verbs:
        for action in parser._actions:
            if action.nargs == 0:  # store_true, store_const, help, version: no value
                continue
            walked += 1
            if not _declared(action):
                undeclared.append(f"{verb} {'/'.join(action.option_strings) or action.dest}")
    assert walked > 100
    assert not undeclared, "options without a declared type: " + ", ".join(undeclared)


@pytest.fixture
def files(tmp_path):
    ann, results, images = tmp_path / "ann.json", tmp_path / "results.json", tmp_path / "images"
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    results.write_text("[]")
    images.mkdir()
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    return {"ann": str(ann), "results": str(results), "images": str(images), "onnx": str(tmp_path / "model.onnx"),
            "out": str(tmp_path / "out.json")}


# The cases of issue 19 (and their neighbours): each is refused while parsing, one line, exit 2.
REFUSED = [
    ("evaluate --annotations {ann} --results {results} --limit -1", "--limit"),
    ("reproduce --num-images 0", "--num-images"),
    ("reproduce --parity-images -1", "--parity-images"),
    ("reproduce --score-threshold nan", "--score-threshold"),
    ("postprocess --annotations {ann} --outputs {images} --results {out} --score-threshold nan", "--score-threshold"),
    ("reproduce --perf-warmup -1", "--perf-warmup"),
    ("reproduce --threads -2", "--threads"),
    ("reproduce --perf-threads 100000", "--perf-threads"),
    ("reproduce --seed -1", "--seed"),
    ("reproduce --infer-batch-size 0", "--infer-batch-size"),
    ("make-checkpoint {out} --seed -5", "--seed"),
    ("make-checkpoint {out} --fit-generated --steps 0", "--steps"),
    ("make-checkpoint {out} --fit-generated --lr inf", "--lr"),
    ("convert {onnx} --timeout nan", "--timeout"),
    ("convert {onnx} --batch-sizes 1,-4", "--batch-sizes"),
    ("perf --threads 100000", "--threads"),
    ("perf --warmup -1", "--warmup"),
    ("perf --min-seconds -1", "--min-seconds"),
    ("perf --devices 0,0", "--devices"),
    ("reproduce --perf-min-seconds nan", "--perf-min-seconds"),
    ("infer --annotations {ann} --images {images} --out {out} --shard 4/4", "--shard"),
    ("infer --annotations {ann} --images {images} --out {out} --devices 0,-1", "--devices"),
    ("infer --annotations {ann} --images {images} --out {out} --batch-size 0", "--batch-size"),
    ("infer --annotations {ann} --images {images} --out {out} --workers -1", "--workers"),
    ("infer --annotations {ann} --images {images} --out {out} --backend-option thread", "--backend-option"),
    ("export --seeded 0 --output {out} --opset 3", "--opset"),
    ("make-dataset --out {images} --num-images 0", "--num-images"),
    ("preprocess --annotations {ann} --images {images} --out {out}x --limit 0", "--limit"),
]


@pytest.mark.parametrize("argv, option", REFUSED, ids=[case[0].split(" {")[0] + " " + case[1] for case in REFUSED])
def test_out_of_range_values_are_refused_while_parsing(argv, option, files, capsys):
    with pytest.raises(SystemExit) as refused:
        main(argv.format(**files).split())
    err = capsys.readouterr().err
    assert refused.value.code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("fsaf-repro ") and f"argument {option}" in last and "Traceback" not in err


def test_zero_keeps_its_documented_meaning_and_none_is_the_default(tmp_path):
    base = dict(run_dir=str(tmp_path / "run"), environ={}, npu_present=False)
    default = resolve_config(ReproduceOptions(**base))
    assert default.threads >= 1 and default.parity_images == 3 and default.num_images == 32
    # threads 0: the runtimes' own count (said in the help); fit_steps 0: the seeded weights, no fit
    zero = resolve_config(ReproduceOptions(threads=0, perf_threads=0, fit_steps=0, perf_warmup=0, **base))
    assert zero.threads is None and zero.perf_threads is None and zero.fit_steps == 0 and not zero.fitted
    assert zero.perf_warmup == 0
    assert "0: the runtimes' own" in next(a.help for v, p in _verbs() if v == "reproduce" for a in p._actions
                                          if "--threads" in a.option_strings)


@pytest.mark.parametrize("option, value", [
    ("num_images", 0), ("parity_images", -1), ("perf_warmup", -1), ("perf_loops", 0), ("limit", 0),
    ("score_threshold", float("nan")), ("score_threshold", 1.5), ("threads", -1), ("threads", 10 ** 6),
    ("seed", -1), ("seed", 2 ** 40), ("height", 0), ("infer_batch_size", 0), ("fit_steps", -1),
    ("num_images", True), ("num_images", 2.5), ("batch_sizes", "1,0"), ("scorer", "mine"),
    ("precision_mode", "fp8"), ("perf_min_seconds", -1), ("perf_min_seconds", float("inf")),
])
def test_reproduce_library_options_are_checked_by_the_same_declarations(option, value, tmp_path):
    with pytest.raises(OptionError, match="--" + option.replace("_", "-")):
        resolve_config(ReproduceOptions(run_dir=str(tmp_path / "run"), environ={}, npu_present=False,
                                        **{option: value}))


def test_reproduce_cli_options_are_the_library_declarations():
    reproduce = dict(_verbs())["reproduce"]
    kinds = {a.dest: a.type.kind for a in reproduce._actions if getattr(a.type, "kind", None) is not None}
    assert kinds and all(kinds[name] is declaration(name).kind for name in kinds)
    assert {"num_images", "parity_images", "perf_warmup", "score_threshold", "threads", "seed"} <= set(kinds)


def test_a_batch_larger_than_the_images_or_the_memory_is_refused(tmp_path):
    base = dict(run_dir=str(tmp_path / "run"), environ={}, npu_present=False)
    with pytest.raises(OptionError, match="larger than the 6 image"):
        resolve_config(ReproduceOptions(num_images=6, infer_batch_size=1000, **base))
    with pytest.raises(OptionError, match="GiB"):
        resolve_config(ReproduceOptions(batch_sizes=[1, 10 ** 7], height=800, width=1216, **base))
    # the estimate: inputs in flight plus activations, per image 3*H*W*4 bytes
    assert batch_memory_bytes(2, 10, 20, batches_in_flight=1) == 2 * 3 * 10 * 20 * 4 * 25
    assert check_batch_memory(4, 800, 1216, "--batch-size", available=10 ** 12) == 4
    with pytest.raises(OptionError, match=r"give at most 8\b"):
        check_batch_memory(9, 10, 20, "--batch-size", available=8 * batch_memory_bytes(1, 10, 20))


def test_fit_parameters_use_their_declarations():
    for bad in ({"steps": 0}, {"lr": float("nan")}, {"batch_size": -1}, {"feature_dropout": 1.0}, {"channels": 512}):
        with pytest.raises(FitError, match=next(iter(bad))):
            fit_parameters(bad)


@pytest.mark.parametrize("options, word", [
    ({"thread": 2}, "unknown option"), ({"grpah_optimization": "all"}, "unknown option"),
    ({"threads": 100000}, "threads"), ({"threads": -1}, "threads"), ({"threads": 0}, "threads"),
    ({"graph_optimization": "max"}, "graph_optimization"), ({"allow_spinning": "no"}, "allow_spinning"),
])
def test_backend_options_are_declared_and_misspelt_ones_refused(options, word):
    with pytest.raises(BackendOptionError, match=word):
        backends.create_backend("onnxruntime", **options)


def test_every_backend_declares_its_options_and_the_null_backend_checks_them():
    for name in backends.backend_names():
        cls = backends.find_backend_class(name)
        if cls is None:
            continue
        declared = cls.declared_options()
        assert ("threads" in declared) == bool(cls.takes_threads), name
    with pytest.raises(BackendOptionError, match="batch_size"):
        backends.create_backend("null", batch_size=0)
    with pytest.raises(BackendOptionError, match="unknown option.*threads"):
        backends.create_backend("null", threads=2)  # null has no threads: not silently ignored
    assert backends.create_backend("null", batch_size=2, detections="echo").static_batch_size == 2


def test_thread_kinds_are_bounded_by_the_cores():
    assert THREADS(str(thread_limit())) == thread_limit()
    for kind in (THREADS, THREADS_OR_RUNTIME):
        with pytest.raises(OptionError):
            kind(str(thread_limit() + 1))
    assert THREADS_OR_RUNTIME("0") == 0
    with pytest.raises(OptionError):
        THREADS("0")


# --- property: any value given to any declared option is parsed within range or refused in one line --

NASTY = st.one_of(
    st.integers(min_value=-10 ** 20, max_value=10 ** 20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "-inf", "1e309", "0", "-0", "+3", "0x10", "1_000", "\u0661", "2.0", "true",
                     "a,b", "1,,2", "-1,2", "1\n2", "1e3"]),
    st.text(max_size=6),
)
TYPED = list(_typed_actions())


@settings(max_examples=50, deadline=None)
@given(index=st.integers(min_value=0, max_value=len(TYPED) - 1), text=NASTY)
def test_any_value_is_parsed_within_its_range_or_refused_in_one_line(index, text):
    verb, action = TYPED[index]
    kind = action.type.kind
    try:
        value = action.type(text)
    except argparse.ArgumentTypeError as exc:  # argparse prints it as one line, exit 2
        assert "\n" not in str(exc).strip("\n") or "\n" in text
        return
    assert kind.check(value, None) == value  # what was accepted is within the declaration
    if isinstance(value, float):
        assert math.isfinite(value)


@settings(max_examples=50, deadline=None)
@given(option=st.sampled_from(sorted(a.option_strings[-1] for v, a in TYPED if v == "reproduce")), text=NASTY)
def test_reproduce_parses_any_value_or_exits_2(option, text):
    parser = build_parser()
    try:
        args = parser.parse_args(["reproduce", option, text])
    except SystemExit as exc:
        assert exc.code == 2
        return
    action = next(a for a in dict(_verbs())["reproduce"]._actions if option in a.option_strings)
    value = getattr(args, action.dest)
    assert action.type.kind.check(value, option) == value


def test_counts_seeds_and_timeouts_refuse_what_once_slipped_through():
    for kind, bad in ((COUNT, "0"), (COUNT, "-1"), (SEED, "-1"), (TIMEOUT, "nan"), (TIMEOUT, "0"), (COUNT, "1.5")):
        with pytest.raises(OptionError):
            kind(bad)
    assert COUNT("+3") == 3 and TIMEOUT("2.5") == 2.5


@pytest.mark.parametrize("text, why", [
    ("0", None), ("1,-2", None), ("", None), ("1,,x", None), ("4,1,4", "4 given twice"),
    ([2, 2, 8, 8], "2, 8 given twice"),
])
def test_the_one_batch_size_parser_refuses_zero_negatives_and_duplicates_in_one_line(text, why):
    with pytest.raises(OptionError) as refused:
        BATCH_SIZES.check(text, "--batch-sizes")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--batch-sizes must be comma-separated positive integers")
    assert why is None or message.endswith(f"({why})")
    assert BATCH_SIZES.check(" 8, 1,4", "--batch-sizes") == [1, 4, 8]
