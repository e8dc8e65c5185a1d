"""Answer extraction and equivalence: what a sample's final answer is, and which answers vote
together.

Extraction follows the request option `answer_format`. Equivalence is decided cheaply first
(a canonical string, exact numbers) and only then by the `math-verify` package, so that `1/2`,
`0.5` and `\\frac{1}{2}` vote for the same answer while voting stays fast on the event loop.

Structured answers are compared as data, never as text: `json` (or `json:<pointer>` for one
field) parses the completion as JSON and answers its canonical form (`canonical_json`: sorted
keys, 1 == 1.0, no whitespace), an `ExactAnswer` that votes only with the identical canonical
form. Tool calls vote the same way (strategies.tool_votes).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

__all__ = [
    "ANSWER_FORMATS",
    "AnswerGroups",
    "AnswerSpec",
    "ExactAnswer",
    "answers_equivalent",
    "canonical_answer",
    "canonical_json",
    "extract_answer",
    "parse_answer_format",
    "parse_json_answer",
]

ANSWER_FORMATS = ("auto", "boxed", "answer_is", "number", "choice", "code", "text", "json")
_REGEX_PREFIX = "regex:"
_JSON_PREFIX = "json:"
_MAX_PATTERN_LEN = 500
# A user pattern runs on the end of the text only: answers come last, and this bounds the cost
# of a pathological (backtracking) pattern on a long completion.
_REGEX_TAIL_CHARS = 4000


@dataclass(frozen=True)
class AnswerSpec:
    kind: str
    pattern: re.Pattern[str] | None = None
    # `json:<pointer>`: the reference tokens of the JSON pointer (RFC 6901) to vote on.
    pointer: tuple[str, ...] = ()


class ExactAnswer(str):
    """An answer in a canonical form (canonical JSON, a tool-call key): it votes with the
    identical string only, never through text normalisation or math-verify."""

    __slots__ = ()


def _json_pointer(source: str) -> tuple[str, ...]:
    if source == "":
        return ()
    if not source.startswith("/"):
        raise ValueError("a JSON pointer is empty or starts with '/', e.g. json:/answer")
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in source[1:].split("/"))


def parse_answer_format(value: str) -> AnswerSpec:
    """Validate an `answer_format` option; ValueError carries a user-facing message."""
    if value.startswith(_JSON_PREFIX):
        return AnswerSpec("json", pointer=_json_pointer(value[len(_JSON_PREFIX):]))
    if value.startswith(_REGEX_PREFIX):
        source = value[len(_REGEX_PREFIX):]
        if not source or len(source) > _MAX_PATTERN_LEN:
            raise ValueError(f"regex pattern must be 1 to {_MAX_PATTERN_LEN} characters")
        try:
            return AnswerSpec("regex", re.compile(source))
        except re.error as exc:
            raise ValueError(f"invalid regex: {exc}") from exc
    if value not in ANSWER_FORMATS:
        raise ValueError(
            f"unknown answer_format {value!r}; use one of {', '.join(ANSWER_FORMATS)}, "
            "json:<pointer> or regex:<pattern>"
        )
    return AnswerSpec(value)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces balanced."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    content = _unwrap_text(text[start:i].strip())
                    if content:
                        return content
                    break
    return None


_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}$")


def _unwrap_text(answer: str) -> str:
    """`\\boxed{\\text{No}}` answers "No": a box holding one text run is that text (the vote's
    canonical key already read it so; a task's verifier compares the string it is given)."""
    wrapped = _TEXT_WRAPPER.match(answer)
    return wrapped.group(1).strip() if wrapped and wrapped.group(1).strip() else answer


_ANSWER_IS = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*(?:is)?\s*[:：]?|answer\s*[:：]|####)"
    r"\s*[:：]?\s*(.+)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])")
_CHOICE = re.compile(
    r"(?:answer\s+is|answer\s*[:：]|option|choice|correct\s+(?:answer|option|choice)\s+is)"
    r"\s*[:：]?\s*\(?([A-Ea-e])\)?(?![\w])",
    re.IGNORECASE,
)
_BARE_CHOICE = re.compile(r"^\s*\(?([A-E])\)?[.)]?\s*$")
# "The answer is (B) because …" states a choice; "The answer is A cat" does not.
_STATED_CHOICE = re.compile(r"^\s*(?:\(([A-Ea-e])\)|([A-E])\)?\s*$)")
_FENCED = re.compile(r"```[\w+-]*[^\S\n]*\n(.*?)```", re.DOTALL)
_TRAILING = " \t.。!;:,*_`$"


def _clean(answer: str) -> str:
    answer = answer.strip().strip(_TRAILING).strip()
    return re.sub(r"^\*\*|\*\*$", "", answer).strip()


def _answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    phrase = matches[-1].group(1)
    phrase = re.split(r"\.(?:\s|$)|\n", phrase, maxsplit=1)[0]  # to the end of the sentence
    # "The final answer is: Answer: No" and "the answer is:\n\nAnswer: No" state one answer:
    # the marker that opens the phrase is part of the statement, never of the answer (read as
    # "Answer: No", a yes/no answer neither voted with "No" nor matched the gold "No").
    while (inner := _ANSWER_IS.match(phrase.lstrip(_TRAILING))) is not None:
        phrase = inner.group(1)
    boxed = _last_boxed(phrase)
    if boxed is not None:
        return boxed
    cleaned = _clean(phrase)
    return cleaned or None


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return _normalise_number(numbers[-1]) if numbers else None


def _normalise_number(token: str) -> str:
    token = token.replace(",", "").replace("−", "-").lstrip("+")
    if "/" in token:
        return token
    if "." in token:
        token = token.rstrip("0").rstrip(".")
    return "0" if token in ("-0", "") else token


def _choice(text: str) -> str | None:
    matches = _CHOICE.findall(text)
    if matches:
        return matches[-1].upper()
    bare = _BARE_CHOICE.match(text)
    return bare.group(1) if bare else None


def _number_in(phrase: str) -> str | None:
    """A phrase like '42 apples' or '$42' means the number; '2x + 1' does not."""
    numbers = _NUMBER.findall(phrase)
    if len(numbers) != 1:
        return None
    rest = _NUMBER.sub("", phrase)
    if re.search(r"[=+*/^\\()\[\]{}<>]|\d", rest):
        return None
    return _normalise_number(numbers[0])


# Numbers with a larger decimal exponent keep their scientific form: `1e999999` must not
# become a million-digit integer.
_MAX_EXPONENT = 100


def _canonical_number(value: Decimal) -> str:
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("-Infinity" if value < 0 else "Infinity")
    normal = value.normalize()
    if abs(normal.adjusted()) > _MAX_EXPONENT:
        return str(normal)
    if normal == normal.to_integral_value():
        return str(int(normal))
    return format(normal, "f")


def canonical_json(value: Any) -> str:
    """One string per JSON value: keys sorted, no whitespace, numbers by value (1, 1.0 and
    1e0 are `1`; 2.50 is `2.5`), strings as written. Booleans stay booleans (true is not 1)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _canonical_number(Decimal(repr(value)) if value == value else Decimal("NaN"))
    if isinstance(value, Decimal):
        return _canonical_number(value)
    if isinstance(value, Mapping):
        items = sorted((str(key), item) for key, item in value.items())
        return "{" + ",".join(f"{json.dumps(key, ensure_ascii=False)}:{canonical_json(item)}"
                              for key, item in items) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(canonical_json(item) for item in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


_MISSING = object()


def parse_json_answer(text: str) -> Any:
    """The JSON value a completion is (numbers as exact decimals), or else that of its last
    fenced block; ValueError when neither parses."""
    candidates = [text.strip()]
    blocks = _FENCED.findall(text)
    if blocks:
        candidates.append(blocks[-1].strip())
    for candidate in candidates:
        try:
            return json.loads(candidate, parse_float=Decimal)
        except (ValueError, RecursionError, InvalidOperation):
            continue
    raise ValueError("not JSON")


def _resolve_pointer(value: Any, pointer: tuple[str, ...]) -> Any:
    for token in pointer:
        if isinstance(value, dict):
            value = value.get(token, _MISSING)
        elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
            value = value[int(token)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _json_answer(text: str, pointer: tuple[str, ...]) -> ExactAnswer | None:
    try:
        document = parse_json_answer(text)
    except ValueError:
        return None
    value = _resolve_pointer(document, pointer)
    if value is _MISSING:
        return None
    try:
        return ExactAnswer(canonical_json(value))
    except RecursionError:  # nested deeper than Python recurses: no answer, never a 500
        return None


def extract_answer(text: str, spec: AnswerSpec) -> str | None:
    """The final answer of a completion, or None when it states none in that format."""
    kind = spec.kind
    if kind == "json":
        return _json_answer(text, spec.pointer)
    if kind == "boxed":
        return _last_boxed(text)
    if kind == "answer_is":
        return _answer_is(text)
    if kind == "number":
        return _last_number(text)
    if kind == "choice":
        return _choice(text)
    if kind == "code":
        blocks = _FENCED.findall(text)
        return blocks[-1].strip() if blocks else None
    if kind == "text":
        return " ".join(text.split()) or None
    if kind == "regex":
        assert spec.pattern is not None
        matches = list(spec.pattern.finditer(text[-_REGEX_TAIL_CHARS:]))
        if not matches:
            return None
        last = matches[-1]
        return (last.group(1) if last.groups() else last.group(0)).strip() or None
    # auto: the most explicit statement wins.
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    stated = _answer_is(text)
    if stated is not None:
        choice = _STATED_CHOICE.match(stated)
        if choice:
            return (choice.group(1) or choice.group(2)).upper()
        return _number_in(stated) or stated
    return _choice(text) if _CHOICE.search(text) else _last_number(text)


def canonical_answer(answer: str) -> str:
    """A normalised key: equal keys are the same answer without further checks."""
    key = answer.strip()
    key = re.sub(r"\\text\{([^{}]*)\}", r"\1", key)
    key = re.sub(r"\\(?:left|right|displaystyle|!|,|;)", "", key)
    key = key.strip(_TRAILING).replace(" ", "")
    if _NUMBER.fullmatch(key):
        return _normalise_number(key)
    return key if re.search(r"[\\^_{}]", key) else key.lower()


def _as_number(key: str) -> Fraction | None:
    if not _NUMBER.fullmatch(key):
        return None
    try:
        return Fraction(key)
    except (ValueError, ZeroDivisionError):
        return None


def _looks_mathematical(key: str) -> bool:
    return bool(re.search(r"\d|\\|\^|[a-z]\s*=", key)) and len(key) <= 200


def _math_equivalent(a: str, b: str) -> bool:
    """math-verify's judgement, parsing each side as LaTeX or plain expression."""
    from math_verify import parse, verify

    # Its signal-based timeouts only work in the main thread and would fire inside the event
    # loop; inputs are short (see _looks_mathematical) so they are turned off, and so is the
    # warning it logs about that on every call.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        gold = parse(f"${a}$", parsing_timeout=None)
        target = parse(f"${b}$", parsing_timeout=None)
        if not gold or not target:
            return False
        return bool(verify(gold, target, timeout_seconds=None))
    except Exception:  # math-verify raises many parser errors: undecidable means different
        return False


def answers_equivalent(a: str, b: str) -> bool:
    key_a, key_b = canonical_answer(a), canonical_answer(b)
    if key_a == key_b:
        return True
    num_a, num_b = _as_number(key_a), _as_number(key_b)
    if num_a is not None and num_b is not None:
        return num_a == num_b  # both plain numbers: exact, no parser needed
    if _looks_mathematical(key_a) and _looks_mathematical(key_b):
        return _math_equivalent(a, b)
    return False


@dataclass
class AnswerGroups:
    """Assigns answers to groups of equivalent answers as they arrive (group id = order of
    first appearance). math-verify runs only against the representatives of other groups.
    An `ExactAnswer` forms its group with the identical string only."""

    _representatives: list[str] = field(default_factory=list)
    _by_key: dict[str, int] = field(default_factory=dict)
    _by_exact: dict[str, int] = field(default_factory=dict)

    def add(self, answer: str | None) -> int | None:
        if answer is None:
            return None
        if isinstance(answer, ExactAnswer):
            group = self._by_exact.get(answer)
            if group is None:
                self._representatives.append(answer)
                group = self._by_exact[answer] = len(self._representatives) - 1
            return group
        key = canonical_answer(answer)
        if key in self._by_key:
            return self._by_key[key]
        exact = set(self._by_exact.values())
        for group, representative in enumerate(self._representatives):
            if group not in exact and answers_equivalent(answer, representative):
                self._by_key[key] = group
                return group
        self._representatives.append(answer)
        self._by_key[key] = len(self._representatives) - 1
        return self._by_key[key]

    def representative(self, group: int) -> str:
        """The first-seen writing of a group's answer."""
        return self._representatives[group]
