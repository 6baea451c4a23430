"""What report.md is written from: one typed record (ReportContext), built by the report stage
(stages._report_context), stored as report_inputs.json and read back, checked, before the report is
rendered, so a reused report and a fresh one are rendered from the same checked values.

The records of other stages keep their own schemas and stay mappings here: a metrics record
(evaluate.METRICS), throughput records (perf.PERF_RECORD), the parity record (its pairs as the parity
stage wrote them, with the report stage's mAP deltas).
"""
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

from .errors import ResultsError
from .evaluate import METRICS
from .jsonio import array, boolean, integer, mapping, nullable, obj, real_number, text_value, validate
from .perf import PERF_RECORD


@dataclass(frozen=True)
class CheckpointFacts:
    path: str
    sha256: str
    seeded: bool


@dataclass(frozen=True)
class DatasetFacts:
    annotation_file: str
    annotation_sha256: str
    image_dir: Optional[str]
    num_images: int
    total_images: int
    generated: bool


@dataclass(frozen=True)
class BackendRow:
    """One backend of the run: ran, or skipped with its reason."""
    name: str
    status: str
    reason: Optional[str] = None
    model: Optional[str] = None
    device: Optional[str] = None
    precision: Optional[str] = None


@dataclass(frozen=True)
class StageRow:
    name: str
    key: Optional[str]
    seconds: Optional[float]


@dataclass(frozen=True)
class RunKind:
    """What the accuracy verdict depends on: where the weights and the images came from, and how much of
    the data set was evaluated."""
    seeded: bool
    generated: bool
    fitted: bool
    num_images: int
    total_images: int


@dataclass(frozen=True)
class ReportContext:
    run_dir: str
    embedded: bool
    seeded: bool
    generated: bool
    checkpoint: CheckpointFacts
    dataset: DatasetFacts
    canvas: Tuple[int, int]
    batch_sizes: Tuple[int, ...]
    infer_batch_size: int
    score_threshold: float
    scorer: str
    backends: Tuple[BackendRow, ...]
    threads: Optional[int] = None
    perf_threads: Optional[int] = None
    perf_loops: Optional[int] = None
    perf_warmup: Optional[int] = None
    skipped_steps: Dict[str, str] = field(default_factory=dict)
    export: Optional[Dict[str, Any]] = None
    convert: Optional[Dict[str, Any]] = None
    # the fit that made the weights (None: seeded or given weights)
    fit: Optional[Dict[str, Any]] = None
    soc_version: Optional[str] = None
    metrics: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    results: Dict[str, str] = field(default_factory=dict)
    perf_records: Tuple[Dict[str, Any], ...] = ()
    parity: Optional[Dict[str, Any]] = None
    stages: Tuple[StageRow, ...] = ()

    @property
    def run_kind(self) -> RunKind:
        return RunKind(seeded=self.seeded, generated=self.generated, fitted=bool(self.fit),
                       num_images=self.dataset.num_images, total_images=self.dataset.total_images)

    def to_json(self) -> Dict[str, Any]:
        """The context as JSON values (tuples as lists), as report_inputs.json holds it."""
        return _as_json(asdict(self))

    @classmethod
    def from_json(cls, value: Any, source: str) -> "ReportContext":
        """The context of a report_inputs.json value, checked (ResultsError naming `source` and the field)."""
        checked = validate(value, REPORT_CONTEXT, ResultsError, source)
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in checked.items() if k in known}
        fields.update(
            checkpoint=CheckpointFacts(**_known(CheckpointFacts, checked["checkpoint"])),
            dataset=DatasetFacts(**_known(DatasetFacts, checked["dataset"])),
            canvas=tuple(checked["canvas"]), batch_sizes=tuple(checked["batch_sizes"]),
            backends=tuple(BackendRow(**_known(BackendRow, row)) for row in checked["backends"]),
            perf_records=tuple(checked.get("perf_records") or ()),
            stages=tuple(StageRow(**_known(StageRow, row)) for row in checked.get("stages") or ()),
            skipped_steps=dict(checked.get("skipped_steps") or {}),
            metrics=dict(checked.get("metrics") or {}), results=dict(checked.get("results") or {}))
        return cls(**fields)


def _as_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value


def _known(cls, row: Dict[str, Any]) -> Dict[str, Any]:
    # a later version may add fields to a row; the dataclass takes the ones it declares
    return {k: v for k, v in row.items() if k in cls.__dataclass_fields__}


_OPTIONAL_COUNT = nullable(integer(minimum=1))
REPORT_CONTEXT = obj(
    {"run_dir": text_value(), "embedded": boolean, "seeded": boolean, "generated": boolean,
     "checkpoint": obj({"path": text_value(), "sha256": text_value(), "seeded": boolean}),
     "dataset": obj({"annotation_file": text_value(), "annotation_sha256": text_value(),
                     "image_dir": nullable(text_value()), "num_images": integer(minimum=0),
                     "total_images": integer(minimum=0), "generated": boolean}),
     "canvas": array(integer(minimum=1), length=2), "batch_sizes": array(integer(minimum=1)),
     "infer_batch_size": integer(minimum=1), "score_threshold": real_number(minimum=0), "scorer": text_value(),
     "backends": array(obj({"name": text_value(non_empty=True), "status": text_value(non_empty=True)},
                           {"reason": nullable(text_value()), "model": nullable(text_value()),
                            "device": nullable(text_value()), "precision": nullable(text_value())}))},
    {"threads": _OPTIONAL_COUNT, "perf_threads": _OPTIONAL_COUNT, "perf_loops": _OPTIONAL_COUNT,
     "perf_warmup": nullable(integer(minimum=0)), "skipped_steps": mapping(text_value()),
     "export": nullable(mapping()), "convert": nullable(mapping()), "fit": nullable(mapping()),
     "soc_version": nullable(text_value()), "metrics": mapping(METRICS), "results": mapping(text_value()),
     "perf_records": array(PERF_RECORD), "parity": nullable(obj({"pairs": array(mapping())})),
     "stages": array(obj({"name": text_value(), "key": nullable(text_value()),
                          "seconds": nullable(real_number(minimum=0))}))})

