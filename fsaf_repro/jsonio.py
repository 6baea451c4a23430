"""The one JSON loader: every JSON the package reads goes through `load_json` or `parse_json`, with a schema.

Why one loader: a reader that calls json.load itself meets deep nesting as a RecursionError, a boolean
where an integer belongs as the integer 1 (bool is an int subclass), NaN as a number and a wrong shape as
a KeyError or TypeError far from the file. Here the nesting depth is measured before parsing (a scan of
the bytes, strings taken out), and the parsed value is checked against a schema whose refusal names the
file and the element (`annotations[12].category_id`), as one line, raised as the reader's own
FsafReproError subclass.

A schema is a callable `(value, where)` that returns the value (possibly converted) or raises
SchemaFault(where, problem). The combinators below build them; `check(schema, predicate, problem)`
adds a semantic rule where the shape is not enough.
"""
import hashlib
import json
import math
import numbers
import re
import reprlib
from typing import Any, Callable, Dict, Optional, Type

import numpy as np

from .errors import FsafReproError

# Deepest nesting of arrays/objects accepted. Every format read here is at most a few levels deep;
# a deeper file is damaged or hostile, and refusing it early keeps the parser and every later repr()
# far from Python's recursion limit.
MAX_DEPTH = 32

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxdict = 6
_SHORT.maxlevel = 3


def canonical_json(value: Any) -> str:
    """The one text a JSON value is keyed and hashed by: keys sorted, no whitespace, so that equal
    values give equal text however their dicts were built."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def canonical_sha256(value: Any) -> str:
    """sha256 of `canonical_json(value)`: the one digest of a value (stage keys, journal keys, spec
    sections, image id lists)."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def short_repr(value: Any) -> str:
    """repr(value) cut to a few dozen characters and levels, for one-line messages."""
    return _SHORT.repr(value)


class SchemaFault(Exception):
    """A value that does not fit its schema: `where` is its path inside the JSON ('' for the root)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where or 'top level'}: {problem}")
        self.where = where
        self.problem = problem


def nesting_depth(raw: bytes, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in the JSON text `raw`: exact (brackets inside strings not
    counted) when above `limit`; at or below it, an upper bound that counts them.

    Vectorised (bytes.translate keeps the brackets, numpy sums them; a regex strips the strings only
    when the bound with them exceeds MAX_DEPTH), so it costs little beside the parse itself even for a
    results file of a million detections.
    """
    # brackets inside strings can only add depth: counted with them, a shallow file needs no string scan
    upper = _bracket_depth(raw)
    return upper if upper <= limit else _bracket_depth(_STRING.sub(b"", raw))


def _bracket_depth(raw):
    brackets = raw.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, dtype=np.uint8)
    return int(np.cumsum(np.where((steps == 91) | (steps == 123), 1, -1), dtype=np.int64).max())


def parse_json(raw: Any, error_cls: Type[FsafReproError], source: str, schema: Optional[Callable] = None,
               max_depth: int = MAX_DEPTH) -> Any:
    """The JSON text `raw` (bytes or str) parsed, depth-limited and checked by `schema`.

    `source` names where the text came from in every message ("results file out.json",
    "journal x.journal line 3"). Any fault is `error_cls` with a one-line message.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    depth = nesting_depth(data, max_depth)
    if depth > max_depth:
        raise error_cls(f"{source} nests arrays/objects {depth} levels deep (at most {max_depth} accepted): not a "
                        "file this tool writes or reads")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error_cls(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:  # unreachable after the depth scan; kept so that no parser path escapes untyped
        raise error_cls(f"{source} nests too deep to parse") from None
    except ValueError as exc:
        raise error_cls(f"{source} is not valid JSON: {_one_line(exc)}") from None
    if schema is None:
        return value
    try:
        return schema(value, "")
    except SchemaFault as fault:
        raise error_cls(f"{source}: {fault.where or 'top level'}: {fault.problem}") from None


def load_json(path: Any, error_cls: Type[FsafReproError], what: str, schema: Optional[Callable] = None,
              max_depth: int = MAX_DEPTH) -> Any:
    """The JSON file `path` parsed and checked (see `parse_json`); `what` names the kind of file."""
    path = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise error_cls(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error_cls(f"{what} {path} is a folder; give the file") from None
    except OSError as exc:
        raise error_cls(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return parse_json(raw, error_cls, f"{what} {path}", schema, max_depth)


def _one_line(exc):
    return " ".join(str(exc).split())


def _join(where, key):
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


def _type_name(value):
    return "boolean" if isinstance(value, bool) else "null" if value is None else type(value).__name__


# --- schema combinators ------------------------------------------------------------------------------

def any_value(value: Any, where: str) -> Any:
    """Any JSON value (its depth is bounded by the loader)."""
    return value


def integer(minimum: Optional[int] = None, maximum: Optional[int] = None) -> Callable:
    """A JSON integer (never a boolean) within [minimum, maximum]."""
    def check_int(value, where):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SchemaFault(where, f"must be an integer, got {_type_name(value)} {short_repr(value)}")
        if minimum is not None and value < minimum:
            raise SchemaFault(where, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise SchemaFault(where, f"must be <= {maximum}, got {short_repr(value)}")
        return value
    return check_int


def real_number(minimum: Optional[float] = None, positive: bool = False, finite: bool = True) -> Callable:
    """A JSON number (not a boolean), finite unless `finite` is False, >= minimum, > 0 with `positive`."""
    def check_real_number(value, where):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SchemaFault(where, f"must be a number, got {_type_name(value)} {short_repr(value)}")
        if finite and not math.isfinite(value):
            raise SchemaFault(where, f"must be a finite number, got {value!r}")
        if positive and not value > 0:
            raise SchemaFault(where, f"must be positive, got {short_repr(value)}")
        if minimum is not None and value < minimum:
            raise SchemaFault(where, f"must be >= {minimum}, got {short_repr(value)}")
        return value
    return check_real_number


def text_value(non_empty: bool = False) -> Callable:
    def check_text(value, where):
        if not isinstance(value, str):
            raise SchemaFault(where, f"must be text, got {_type_name(value)} {short_repr(value)}")
        if non_empty and not value.strip():
            raise SchemaFault(where, "must be non-empty text")
        return value
    return check_text


def boolean(value: Any, where: str) -> Any:
    if not isinstance(value, bool):
        raise SchemaFault(where, f"must be true or false, got {_type_name(value)} {short_repr(value)}")
    return value


def one_of(*choices: Any) -> Callable:
    """One of the given JSON values (compared by type too: true is not 1)."""
    def check_choice(value, where):
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            raise SchemaFault(where, "must be one of {}, got {}".format(
                ", ".join(json.dumps(c) for c in choices), short_repr(value)))
        return value
    return check_choice


def nullable(schema: Callable) -> Callable:
    def check_nullable(value, where):
        return None if value is None else schema(value, where)
    return check_nullable


def array(item: Callable = any_value, length: Optional[int] = None, min_length: int = 0) -> Callable:
    """A JSON array whose every element fits `item`."""
    def check_array(value, where):
        if not isinstance(value, list):
            raise SchemaFault(where, f"must be an array, got {_type_name(value)} {short_repr(value)}")
        if length is not None and len(value) != length:
            raise SchemaFault(where, f"must hold {length} elements, got {len(value)}")
        if len(value) < min_length:
            raise SchemaFault(where, f"must hold at least {min_length} element(s), got {len(value)}")
        return [item(element, _join(where, index)) for index, element in enumerate(value)]
    return check_array


def mapping(value_schema: Callable = any_value) -> Callable:
    """A JSON object with any keys, whose every value fits `value_schema`."""
    def check_mapping(value, where):
        if not isinstance(value, dict):
            raise SchemaFault(where, f"must be an object, got {_type_name(value)} {short_repr(value)}")
        return dict((key, value_schema(element, _join(where, key))) for key, element in value.items())
    return check_mapping


def obj(required: Dict[str, Callable], optional: Optional[Dict[str, Callable]] = None) -> Callable:
    """A JSON object with every `required` key and any of the `optional` ones, each fitting its schema.

    Other keys are kept unchecked: a file of a later version may add fields."""
    optional = optional or {}

    def check_obj(value, where):
        if not isinstance(value, dict):
            raise SchemaFault(where, f"must be an object, got {_type_name(value)} {short_repr(value)}")
        missing = [key for key in required if key not in value]
        if missing:
            raise SchemaFault(where, "lacks {}".format(", ".join(repr(key) for key in missing)))
        out = dict(value)
        for fields in (required, optional):
            for key, schema in fields.items():
                if key in value:
                    out[key] = schema(value[key], _join(where, key))
        return out
    return check_obj


def either(*schemas: Callable) -> Callable:
    """The first of `schemas` the value fits; the last one's refusal otherwise."""
    def check_either(value, where):
        fault = None
        for schema in schemas:
            try:
                return schema(value, where)
            except SchemaFault as exc:
                fault = exc
        raise fault
    return check_either


def check(schema: Callable, rule: Callable[[Any], Optional[str]]) -> Callable:
    """`schema`, then the semantic `rule(value)`: None when it holds, else the problem."""
    def check_rule(value, where):
        value = schema(value, where)
        problem = rule(value)
        if problem:
            raise SchemaFault(where, problem)
        return value
    return check_rule


def validate(value: Any, schema: Callable, error_cls: Type[FsafReproError], source: str) -> Any:
    """`value` (already parsed, e.g. given in memory) checked by `schema`; `error_cls` naming `source`."""
    try:
        return schema(value, "")
    except SchemaFault as fault:
        raise error_cls(f"{source}: {fault.where or 'top level'}: {fault.problem}") from None
