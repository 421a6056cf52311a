"""What a ``%%sqlflow`` cell gives back: its result sets as tables that draw themselves in a
notebook (head and tail of a large one, with "N rows × M columns") and turn into pandas
DataFrames with typed columns.

pandas is not a dependency of the package: ``to_dataframe`` imports it when called.

Types come from the values, as the ``sql`` job runner writes them (plugins/sql_runner.py
``json_safe``): the API's ``head`` names the columns but carries no column types, so each
column is typed by what it holds:

* JSON integers → ``int64`` (``Int64``, pandas' nullable integer, when there is a NULL;
  ``object`` when one does not fit in 64 bits); JSON booleans → ``bool`` (``boolean``);
* JSON numbers with at least one non-integer → ``float64``, NULL → NaN; the runner's
  ``"nan"``/``"inf"``/``"-inf"`` text for non-finite floats becomes the float again in
  such a column;
* text that is all ISO-8601 dates or date-times (``2024-01-31``, ``2024-01-31T12:00:00``,
  sqlite's ``2024-01-31 12:00:00``) → ``datetime64``, NULL → NaT; values with offsets
  (``…+02:00``) → ``datetime64[…, UTC]``, the same instants (``parse_dates=False`` keeps
  the text; a column pandas cannot hold, such as year 1 before pandas 3 or some values
  with an offset and some without, stays text too);
* any other text → ``object``, values exactly as they arrived, NULL → None. DECIMAL
  columns are in this group on purpose: the runner sends a Decimal as text to keep it
  exact, and without column types its ``"12.50"`` cannot be told from a VARCHAR holding
  digits (a zip code ``"01234"`` must not become 1234.0). Convert with
  ``df[c].astype(float)`` or, exactly, ``df[c].map(decimal.Decimal)``.
"""
import contextvars
import html
import math
import re
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from .client_cli import text_table

Body = Dict[str, Any]

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}"
                       r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?")
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_INT64 = (-2**63, 2**63 - 1)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    """``7 s``, ``2 min 05 s``: a running job's age, to the second."""
    seconds = int(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def dimensions(rows: int, columns: int) -> str:
    """``300 rows × 3 columns``"""
    return f"{_plural(rows, 'row')} × {_plural(columns, 'column')}"


class Table:
    """One result set: ``head`` (column names) and ``rows`` (lists of JSON values).

    Drawn as HTML in a notebook and as aligned text elsewhere; with more than
    ``max_rows`` rows only the first and last ``min_rows // 2`` are drawn, then
    "N rows × M columns" (pandas' own defaults and layout)."""

    max_rows = 60
    min_rows = 10

    def __init__(self, head: Sequence[Any], rows: Sequence[Sequence[Any]]):
        self.head, self.rows = list(head), [list(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self):
        return len(self.rows), len(self.head)

    def _parts(self):
        """(first rows, last rows or None when nothing is left out)"""
        if len(self.rows) <= self.max_rows:
            return self.rows, None
        half = max(self.min_rows // 2, 1)
        return self.rows[:half], self.rows[-half:]

    def _repr_html_(self) -> str:
        def cells(tag: str, values: Sequence[Any]) -> str:
            return "".join(f"<{tag}>{'<i>NULL</i>' if v is None else html.escape(str(v))}"
                           f"</{tag}>" for v in values)
        first, last = self._parts()
        body = "".join(f"<tr>{cells('td', row)}</tr>" for row in first)
        if last is not None:
            body += f"<tr>{cells('td', ['…'] * max(len(self.head), 1))}</tr>"
            body += "".join(f"<tr>{cells('td', row)}</tr>" for row in last)
        table = (f"<table><thead><tr>{cells('th', self.head)}</tr></thead>"
                 f"<tbody>{body}</tbody></table>")
        if last is None and self.rows:
            return table
        return f"<div>{table}<p>{dimensions(*self.shape)}</p></div>"

    def __repr__(self) -> str:
        first, last = self._parts()
        if last is None:
            text = text_table(self.head, self.rows)
            return text if self.rows else f"{text}\n\n{dimensions(*self.shape)}"
        lines = text_table(self.head, first + last).splitlines()
        widths = [len(dashes) for dashes in lines[1].split("  ")]
        lines.insert(2 + len(first), "  ".join("…".ljust(w) for w in widths).rstrip())
        return "\n".join(lines) + f"\n\n{dimensions(*self.shape)}"

    def to_dataframe(self, parse_dates: bool = True):
        """A pandas DataFrame of every row, columns typed as the module describes."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe() needs pandas: pip install pandas") from None
        columns = [_column(pd, [row[i] if i < len(row) else None for row in self.rows],
                           parse_dates) for i in range(len(self.head))]
        frame = pd.concat(columns, axis=1) if columns else pd.DataFrame(index=range(len(self)))
        frame.columns = self.head  # by position: two columns may share a name
        return frame


def _column(pd: Any, values: List[Any], parse_dates: bool):
    present = [v for v in values if v is not None]
    nulls = len(present) < len(values)
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean" if nulls else "bool")
    numbers = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if present and len(numbers) == len(present) and all(isinstance(v, int) for v in numbers):
        if all(_INT64[0] <= v <= _INT64[1] for v in numbers):
            return pd.Series(values, dtype="Int64" if nulls else "int64")
        return pd.Series(values, dtype=object)
    if numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       or isinstance(v, str) and v in _NON_FINITE for v in present):
        return pd.Series([math.nan if v is None else _NON_FINITE.get(v, v)
                          if isinstance(v, str) else float(v) for v in values], dtype="float64")
    if parse_dates and present and all(isinstance(v, str) and _ISO_DATE.fullmatch(v)
                                       for v in present):
        aware = {bool(_OFFSET.search(v, 10)) for v in present}
        utc = aware == {True}  # offsets (MySQL never sends them): one instant each, in UTC
        try:
            if len(aware) > 1:
                raise ValueError("some values have an offset, some do not")
            try:
                parsed = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601",
                                        utc=utc)
            except (TypeError, ValueError) as e:  # pandas < 2 has no format="ISO8601"
                if "ISO8601" not in str(e):
                    raise
                parsed = pd.to_datetime(pd.Series(values, dtype=object), utc=utc)
            if pd.api.types.is_datetime64_any_dtype(parsed.dtype):
                return parsed
        except (TypeError, ValueError, OverflowError):  # out of range, mixed offsets, …
            pass
    return pd.Series(values, dtype=object)


class Result:
    """A finished ``%%sqlflow`` cell: its ``tables`` (one per result set, in order), the
    ``messages`` printed while it ran, the job's ``token``, ``status`` and ``message``,
    ``elapsed`` seconds, and ``body``, the job's final body (what ``_sqlflow`` holds).

    Draws its tables; ``to_dataframe()`` is the last table's DataFrame, the other ones
    are ``result.tables[i].to_dataframe()``."""

    def __init__(self, body: Body, tables: Sequence[Table], messages: Sequence[str],
                 elapsed: float):
        self.body, self.tables, self.messages = body, list(tables), list(messages)
        self.token: Optional[str] = body.get("token")
        self.status: Optional[str] = body.get("status")
        self.message: Optional[str] = body.get("message")
        self.elapsed = elapsed

    @property
    def rows(self) -> int:
        """Rows in all result sets."""
        return sum(len(t) for t in self.tables)

    def to_dataframe(self, parse_dates: bool = True):
        if not self.tables:
            raise ValueError(f"job {self.token} returned no result set")
        return self.tables[-1].to_dataframe(parse_dates)

    def _repr_html_(self) -> Optional[str]:
        if not self.tables:
            return None
        return "".join(t._repr_html_() for t in self.tables)

    def __repr__(self) -> str:
        if not self.tables:
            return f"<sqlflow job {self.token} {self.status}: no result set>"
        return "\n\n".join(repr(t) for t in self.tables)


class Progress:
    """The cell's live line: ``job TOKEN RUNNING · 12 s · interrupt the kernel to cancel``,
    one display (``display_id``) redrawn in place every ``interval`` seconds and when the
    status changes, then ``finish`` turns it into ``job TOKEN SUCCEEDED in 12.3 s · 300
    rows`` for good.

    ``live=False`` (a terminal IPython, whose displays cannot be redrawn: every update
    would be one more line) shows the first line and the last one only."""

    interval = 1.0

    def __init__(self, token: str, status: Optional[str] = None, live: bool = True):
        from IPython.display import display
        self.token, self.status, self.rows = token, status or "PENDING", 0
        self.started = time.monotonic()
        self.live, self.lock, self.done = live, threading.Lock(), threading.Event()
        self.handle = display(self._bundle(self.line()), raw=True, display_id=True)
        if live:
            # The copied context holds the kernel's parent header (ipykernel keeps it in
            # a ContextVar): the updates belong to this cell's output.
            self.thread = threading.Thread(target=contextvars.copy_context().run,
                                           args=(self._tick,), daemon=True,
                                           name="sqlflow-playground-progress")
            self.thread.start()

    def line(self) -> str:
        rows = f" · {_plural(self.rows, 'row')} so far" if self.rows else ""
        return (f"job {self.token} {self.status} · {duration(time.monotonic() - self.started)}"
                f"{rows} · interrupt the kernel to cancel")

    @staticmethod
    def _bundle(line: str) -> Dict[str, str]:
        return {"text/plain": line}

    def _redraw(self) -> None:
        with self.lock:
            if not self.done.is_set():  # never draw over the final line
                self.handle.update(self._bundle(self.line()), raw=True)

    def _tick(self) -> None:
        while not self.done.wait(self.interval):
            self._redraw()

    def set_status(self, status: Optional[str]) -> None:
        if status and status != self.status:
            self.status = status
            if self.live:
                self._redraw()

    def add_rows(self, n: int = 1) -> None:
        self.rows += n

    def finish(self, status: Optional[str], rows: Optional[int] = None) -> str:
        """Draw the final line (``rows``: the result's row count, None for no result set)."""
        with self.lock:
            self.done.set()
            line = f"job {self.token} {status} in {time.monotonic() - self.started:.1f} s"
            if rows is not None:
                line += f" · {_plural(rows, 'row')}"
            self.handle.update(self._bundle(line), raw=True)
        return line
