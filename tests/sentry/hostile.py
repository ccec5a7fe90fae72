"""Hostile ``exception.stacktrace`` texts of 1-4 MB: every shape a parser may choke on."""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable

MB = 1 << 20


def _fill(unit: str, size: int) -> str:
    return unit * (size // len(unit) + 1)


def _real_python() -> str:
    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("deep")
        deep(n - 1)

    try:
        deep(40)
    except ValueError as exc:
        return "".join(traceback.format_exception(exc))
    raise AssertionError("unreachable")


def _mixed(size: int) -> str:
    rng = random.Random(7)
    pieces = [
        "\n", " ", "\t", "  | ", "  +-+---- 1 ----\n", "\tat a.b.C.d(C.java:1)\n",
        "    at fn (https://x.example/a.js:1:2)\n", "f@https://x.example/a.js:1:2\n",
        "goroutine 1 [running]:\n", "\t/a/m.go:1 +0x1\n", "Traceback (most recent call last):\n",
        '  File "a.py", line 1, in f\n', "    ^^^^^\n", "@", ":1", "(", ")", "eval at f (",
    ]  # fmt: skip
    out: list[str] = []
    total = 0
    while total < size:
        piece = rng.choice(pieces)
        out.append(piece)
        total += len(piece)
    return "".join(out)


def _nested_groups(size: int) -> str:
    lines = ["  + Exception Group Traceback (most recent call last):"]
    depth = total = 0
    while total < size:
        depth += 1
        pad = "  " * depth
        lines.append(f"{pad}+-+---------------- 1 ----------------")
        lines.append(f"{pad}  | ExceptionGroup: level {depth} (1 sub-exception)")
        total += len(lines[-1]) + len(lines[-2]) + 2
    return "\n".join(lines)


#: name -> (size) -> text; every one at least 1 MB and at most 4 MB.
HOSTILE: dict[str, Callable[[int], str]] = {
    "newlines": lambda size: "\n" * size,
    "carriage returns": lambda size: "\r\n" * (size // 2),
    "spaces": lambda size: " " * size,
    "one long line": lambda size: "x" * size,
    "long type line": lambda size: _fill("ErrorException", size),
    "python frames": lambda size: (
        "Traceback (most recent call last):\n"
        + _fill('  File "/app/x.py", line 3, in f\n    work()\n', size)
    ),
    "python tracebacks": lambda size: _fill(_real_python() + "\n", size),
    "python carets": lambda size: (
        "Traceback (most recent call last):\n"
        + _fill('  File "a.py", line 1\n    ' + "^" * 500 + "\n", size)
    ),
    "nested groups": _nested_groups,
    "group margins": lambda size: _fill("  | ", size),
    "java frames": lambda size: "java.lang.X: y\n" + _fill("\tat a.b.C.d(C.java:1)\n", size),
    "java dotted names": lambda size: "\tat " + "a." * (size // 2) + "(",
    "v8 frames": lambda size: "Error: x\n" + _fill("    at f (https://x.example/a.js:1:2)\n", size),
    "v8 nested eval": lambda size: (
        "    at f ("
        + "eval at g (" * (size // 12)
        + "https://x.example/a.js:1:2"
        + ")" * (size // 12)
    ),
    "v8 parentheses": lambda size: "    at " + "a (" * (size // 3),
    "gecko frames": lambda size: _fill("f@https://x.example/a.js:1:2\n", size),
    "gecko colons": lambda size: "f@https://x.example" + ":1" * (size // 2),
    "at signs": lambda size: "@" * size,
    "safari native": lambda size: _fill("map@[native code]\n", size),
    "go frames": lambda size: (
        "goroutine 1 [running]:\n" + _fill("main.f(0x1)\n\t/app/m.go:1 +0x1\n", size)
    ),
    "go parentheses": lambda size: "(" * size + ")",
    "dotnet frames": lambda size: (
        "System.X: y\n" + _fill("   at A.B.C() in /a/b.cs:line 1\n", size)
    ),
    "huge line numbers": lambda size: '  File "a.py", line ' + "9" * size,
    "mixed shapes": _mixed,
}
SIZES = (1 * MB, 4 * MB)
