"""Split a SQL script into statements on ``;``, the way the MySQL client does.

A ``;`` ends a statement except inside ``'…'`` and ``"…"`` strings (backslash escapes and
doubled quotes), ``…`` identifiers (doubled backticks), ``-- `` and ``#`` line
comments and ``/* … */`` block comments. Comments inside a statement are kept intact;
statements that hold nothing but whitespace and comments are dropped.

Not supported: the client-side ``DELIMITER`` command, so a stored-program body whose
``BEGIN … END`` holds ``;`` is split too. An unterminated string or comment runs to the end
of the text and is left for the database to reject.
"""
from typing import List

_WHITESPACE = " \t\r\n\f\v"


def _skip_quoted(text: str, i: int, quote: str) -> int:
    """Index just past the string or identifier that opens at ``text[i]``."""
    n = len(text)
    i += 1
    while i < n:
        c = text[i]
        if c == "\\" and quote != "`":
            i += 2  # a backslash escapes the next character, the quote included
        elif c == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2  # a doubled quote stands for itself
            else:
                return i + 1
        else:
            i += 1
    return n


def _comment_end(text: str, i: int) -> int:
    """Index just past the comment that opens at ``text[i]``, or ``i`` if none does."""
    c, nxt = text[i], text[i + 1:i + 2]
    line_comment = c == "#" or (
        c == "-" and nxt == "-" and (i + 2 == len(text) or text[i + 2] in _WHITESPACE))
    if line_comment:
        end = text.find("\n", i)
        return len(text) if end < 0 else end + 1
    if c == "/" and nxt == "*":
        end = text.find("*/", i + 2)
        return len(text) if end < 0 else end + 2
    return i


def split_statements(text: str) -> List[str]:
    """The statements of ``text``, each stripped, without empty or comment-only ones."""
    statements: List[str] = []
    start, i, has_code, n = 0, 0, False, len(text)
    while i < n:
        c = text[i]
        if c in "'\"`":
            i, has_code = _skip_quoted(text, i, c), True
            continue
        end = _comment_end(text, i)
        if end > i:
            i = end
            continue
        if c == ";":
            if has_code:
                statements.append(text[start:i].strip())
            start, has_code = i + 1, False
        elif c not in _WHITESPACE:
            has_code = True
        i += 1
    if has_code:
        statements.append(text[start:].strip())
    return statements


def code_only(statement: str) -> str:
    """``statement`` with every string, quoted identifier and comment blanked out, so a
    keyword search finds only keywords."""
    parts: List[str] = []
    i, n = 0, len(statement)
    while i < n:
        c = statement[i]
        if c in "'\"`":
            end = _skip_quoted(statement, i, c)
        else:
            end = _comment_end(statement, i)
            if end == i:
                parts.append(c)
                i += 1
                continue
        parts.append(" ")
        i = end
    return "".join(parts)
