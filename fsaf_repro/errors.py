"""Typed exceptions raised at the package's boundaries.

Every error names what to fix: the file, the option or the tool involved.
"""


class FsafReproError(Exception):
    """Base class of every error this package raises on purpose."""


class SpecError(FsafReproError):
    """The packaged reference data (spec) is missing or inconsistent."""


class CheckpointError(FsafReproError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


class ExportError(FsafReproError):
    """ONNX export failed; no partial file was left behind."""


class DataError(FsafReproError):
    """Input data (images, annotations, .bin files) is missing or malformed."""


class ImageReadError(DataError):
    """One image file could not be decoded."""


class AnnotationError(DataError):
    """The COCO annotation file is missing, malformed or does not match the model's classes."""


class OutputFormatError(DataError):
    """A network output file (tool .bin, npy, summary json) has the wrong name, size or content."""


class BackendUnavailable(FsafReproError):
    """A runtime is not installed or has no device here; tests turn this into a skip."""


class BackendError(FsafReproError):
    """A runtime failed while loading or running a model."""


class BatchSizeMismatch(BackendError):
    """A static-batch model was asked to run a batch of another size."""


class ToolError(FsafReproError):
    """An external tool (atc, aoe, benchmark, ais_bench, npu-smi) failed; the log path is named."""


class ToolNotStarted(ToolError):
    """An external tool could not be started (not on PATH, not executable): it never ran, so it left
    nothing to inspect."""


class ResultsError(FsafReproError):
    """A results, metrics or perf record is malformed or records incomparable runs."""


class JournalMismatch(ResultsError):
    """A resumable run's journal was written with other arguments (nothing in it is reusable)."""


class PathError(FsafReproError):
    """A path given to a verb is missing, of the wrong kind (file/folder) or not readable/writable."""


class RunLocked(FsafReproError):
    """Another run is writing the same output (it holds the output's lock file)."""


class OptionError(FsafReproError):
    """An option's value is of the wrong type or outside its declared range (fsaf_repro.options), or an
    option name is unknown."""


class PathRoleError(PathError):
    """An output path is, or lies inside, one of the same command's inputs (fsaf_repro.pathroles)."""


class BackendOptionError(BackendError, OptionError):
    """A backend was given an option it does not declare, or a value outside the option's kind."""


class StagesFailed(FsafReproError):
    """A reproduce run finished with failed stages (their dependents skipped, the others run): raised at
    the command line after the report, so the run exits 1 with the failures in one line."""


class FitError(FsafReproError):
    """A fit that cannot run as asked (bad parameters, no objects to learn from)."""
