"""How deeply a JSON document nests and how many values it holds, measured on the raw bytes before parsing.

Parsing a document nested a million levels deep would exhaust the parser's recursion, and one of millions
of tiny values ([1,1,1,...], or a million messages) takes seconds and gigabytes to parse although its bytes
are within the limit; so both are measured first. Brackets and commas outside strings are counted in linear
time with numpy over fixed-size chunks (memory stays bounded whatever the body's size; numpy's loops also let
other threads run). A quote is a string delimiter unless an odd run of backslashes precedes it; each chunk
boundary carries the open-string state, the trailing backslash run and the depth.
"""
from __future__ import annotations

import numpy as np

OPEN = (ord("["), ord("{"))
CLOSE = (ord("]"), ord("}"))


def json_shape(raw: bytes, chunk: int = 1 << 20) -> tuple[int, int]:
    """(deepest nesting of arrays and objects, number of values) in `raw`; (0, 1) for a scalar. Malformed JSON
    gets some numbers; the parser refuses it afterwards anyway."""
    depth = deepest = 0
    commas = containers = 0
    in_string = False
    carried_backslashes = 0
    for start in range(0, len(raw), chunk):
        a = np.frombuffer(raw, np.uint8, count=min(chunk, len(raw) - start), offset=start)
        quote = a == ord('"')
        if carried_backslashes or raw.find(b"\\", start, start + len(a)) >= 0:
            idx = np.arange(len(a))
            last_other = np.maximum.accumulate(np.where(a == ord("\\"), -1, idx))  # last non-backslash <= i
            before = np.concatenate(([-1], last_other[:-1]))
            run = idx - 1 - before + np.where(before < 0, carried_backslashes, 0)  # backslashes right before i
            delim = quote & (run % 2 == 0)
        else:
            last_other, delim = None, quote
        inside = (np.cumsum(delim, dtype=np.int32) + in_string) % 2 == 1  # at a delimiter: the state after it
        outside = ~inside & ~delim
        opens = ((a == OPEN[0]) | (a == OPEN[1])) & outside
        step = opens.astype(np.int32)
        step -= ((a == CLOSE[0]) | (a == CLOSE[1])) & outside
        levels = depth + np.cumsum(step, dtype=np.int64)
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        containers += int(np.count_nonzero(opens))
        commas += int(np.count_nonzero((a == ord(",")) & outside))
        in_string = bool(inside[-1])
        if last_other is None:
            carried_backslashes = 0
        else:
            trailing = len(a) - 1 - int(last_other[-1])
            carried_backslashes = trailing + (carried_backslashes if last_other[-1] < 0 else 0)
    # every comma separates two values, and each container holds a first one (or none): a close upper bound
    return deepest, commas + containers + 1
