"""Pages of a text log (plugins/output.py read_messages): the fast path for lines of
printable ASCII (MessageLines, _fit_clean; issue 15) answers exactly what the line-by-line
path answers, page for page, and its JSON is the JSON of those responses."""
import json
import random

import pytest

from sqlflow_playground.jobs import encode_responses
from sqlflow_playground.plugins import output


def pages(path, page, complete, slow, monkeypatch):
    """Every page from the start to where the cursor stops moving."""
    with monkeypatch.context() as m:
        if slow:
            m.setattr(output, "_CLEAN_TEXT", b"")  # every byte "needs escaping"
        cursor, out = "", []
        while True:
            responses, after, more = output.read_message_page(path, cursor, page, complete)
            out.append((responses, after, more))
            if after == cursor:
                return out
            cursor = after


@pytest.mark.parametrize("steps,slice_bytes", [(64, 64 << 10), (0, 64 << 10), (64, 7),
                                               (0, 50), (64, 1)])
def test_clean_text_pages_equal_the_line_by_line_pages(tmp_path, monkeypatch, steps,
                                                       slice_bytes):
    # steps 0: the bisection, not the walk; small slices: pages read in many slices, lines
    # cut by a slice's end, lines longer than a slice (the careful path answers those)
    monkeypatch.setattr(output, "FIT_STEPS", steps)
    monkeypatch.setattr(output, "SLICE_BYTES", slice_bytes)
    rnd = random.Random(15)
    path = str(tmp_path / "output.log")
    fast_pages = 0
    for _ in range(400):
        longest = rnd.choice([0, 3, 20, 200])
        lines = [bytes(rnd.choice(b"abc xyz{}:,") for _ in range(rnd.randint(0, longest)))
                 for _ in range(rnd.randint(0, 40))]
        with open(path, "wb") as fh:
            fh.write(b"\n".join(lines) + (b"\n" if rnd.random() < 0.5 else b""))
        page, complete = rnd.randint(1, 400), rnd.random() < 0.5
        fast = pages(path, page, complete, False, monkeypatch)
        slow = pages(path, page, complete, True, monkeypatch)
        assert [(list(r), c, m) for r, c, m in fast] == [(list(r), c, m) for r, c, m in slow]
        for (responses, _, _), (expected, _, _) in zip(fast, slow):
            encoded = encode_responses(responses)
            assert json.loads(encoded) == list(expected)
            assert len(encoded) == len(encode_responses(list(expected)))
            fast_pages += isinstance(responses, output.MessageLines)
    # the fast path did answer (with tiny slices, only for lines shorter than a slice)
    assert fast_pages > {1: -1, 7: 100, 50: 300}.get(slice_bytes, 1000)


def test_a_page_with_a_quote_or_a_control_character_takes_the_careful_path(tmp_path):
    path = str(tmp_path / "output.log")
    for text in (b'say "hi"\nok\n', b"tab\there\nok\n", b"caf\xc3\xa9\nok\n", b"back\\\nok\n"):
        with open(path, "wb") as fh:
            fh.write(text)
        responses, after, more = output.read_message_page(path, "", 1 << 20, True)
        assert not isinstance(responses, output.MessageLines)
        assert [r["message"] for r in responses] == \
            [line.decode() for line in text.split(b"\n")[:-1]]
        assert (after, more) == (str(len(text)), False)


def test_a_clean_page_is_bounded_by_max_bytes_and_ends_at_a_line(tmp_path):
    path = str(tmp_path / "output.log")
    with open(path, "wb") as fh:
        fh.write(b"".join(b"line %06d\n" % i for i in range(10000)))
    responses, after, more = output.read_message_page(path, "", 4096, True)
    assert isinstance(responses, output.MessageLines) and more
    encoded = encode_responses(responses)
    assert len(encoded) <= 4096 < len(encoded) + len('{"message":"line 000000"},')
    assert int(after) == 12 * len(responses)
    assert responses[0] == {"message": "line 000000"} and len(responses) == 4096 // 26
    assert responses[-1] == {"message": "line %06d" % (4096 // 26 - 1)}
    assert output.read_messages(path, "", 4096, True) == (list(responses), after, more)


def test_a_clean_page_is_read_in_slices_and_held_as_its_json_only(tmp_path, monkeypatch):
    """The bytes read are never held whole next to their JSON: a page of 1 MiB is read a
    slice at a time, and what it keeps is its JSON (at most the page's bound)."""
    path = str(tmp_path / "output.log")
    with open(path, "wb") as fh:
        fh.write(b"".join(b"line %06d abcdefghijklmnopqrstuvwxyz\n" % i for i in range(100000)))
    reads = []
    pread = output.os.pread

    def recording(fd, n, offset):
        reads.append(n)
        return pread(fd, n, offset)
    monkeypatch.setattr(output.os, "pread", recording)
    page = 1 << 20
    responses, after, more = output.read_message_page(path, "", page, True)
    assert isinstance(responses, output.MessageLines) and more
    assert len(reads) > 1 and max(reads) <= output.SLICE_BYTES
    # a line cut by a slice is read again; the last slice goes past the page's end
    assert sum(reads) < int(after) + len(reads) * 40 + output.SLICE_BYTES
    assert len(responses.json) <= page < len(responses.json) + 50
    assert responses[-1] == {"message": "line %06d abcdefghijklmnopqrstuvwxyz"
                             % (len(responses) - 1)}
