""".NET stack traces: ``Type: message ---> Inner: message`` then
``   at Ns.Class.Method(args) in /src/File.cs:line 42``. Inner exceptions print first in
the head line and their frames before ``--- End of inner exception stack trace ---``,
which is already oldest first; frames are printed newest call first."""

from __future__ import annotations

import re

from otelkit.collector.exporters.sentry.stacktrace.model import Block, Frame, number

_FRAME = re.compile(
    r"\s+at (?P<func>[^\s(]+)\((?P<args>[^)]*)\)(?: in (?P<path>.+?):line (?P<line>\d+))?\s*"
)
_HEAD = re.compile(r"(?P<type>[\w.`]+): (?P<value>.*)")
_LIBRARY = ("System.", "Microsoft.")


def is_dotnet_line(line: str) -> bool:
    return _FRAME.fullmatch(line) is not None


def read(lines: list[str]) -> list[Block]:
    heads = [h.strip() for h in lines[0].split(" ---> ")] if lines else []
    blocks = [_block(head) for head in heads] or [Block()]
    blocks.reverse()  # the innermost (the cause) first
    current = 0
    for line in lines[1:]:
        if "--- End of inner exception stack trace ---" in line:
            current = min(current + 1, len(blocks) - 1)
        elif match := _FRAME.fullmatch(line):
            blocks[current].frames.append(_frame(match))
    for index, block in enumerate(blocks):
        block.frames.reverse()
        block.link = "inner_exception" if index else None
    return blocks


def _block(head: str) -> Block:
    match = _HEAD.fullmatch(head)
    if match and ("Exception" in match.group("type") or "Error" in match.group("type")):
        return Block(type=match.group("type"), value=match.group("value"))
    return Block(type=None, value=head)


def _frame(match: re.Match[str]) -> Frame:
    func = match.group("func")
    module, _, function = func.rpartition(".")
    frame: Frame = {"function": function or func, "in_app": not func.startswith(_LIBRARY)}
    if module:
        frame["module"] = module
    lineno = number(match.group("line") or "")
    if match.group("path") and lineno is not None:
        frame["abs_path"] = match.group("path")
        frame["filename"] = match.group("path").replace("\\", "/").rsplit("/", 1)[-1]
        frame["lineno"] = lineno
    return frame
