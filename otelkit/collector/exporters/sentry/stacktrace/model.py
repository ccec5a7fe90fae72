"""What every language's reader produces: exceptions as printed, frames oldest call first.

Readers work on lines already cut to a bounded size (see :func:`bounded_lines`) and use
only string methods and anchored regular expressions without overlapping repetitions on
one line, so reading is linear in the text whatever it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Value = dict[str, Any]
Frame = dict[str, Any]

MAX_TEXT = 256 * 1024  # characters read; a longer text keeps its first and last half
MAX_LINES = 4000  # lines read; more keep the first and last half (frames are cut later)
MAX_LINE = 8192  # characters read of one line (an exception message is cut there anyway)
MAX_VALUE = 8192  # characters of an exception message sent
_MAX_NUMBER_DIGITS = 9  # a line or column number beyond this is not one


@dataclass
class Block:
    """One exception as printed: frames oldest first, type, value, how it links back."""

    frames: list[Frame] = field(default_factory=list)
    type: str | None = None
    value: str = ""
    link: str | None = None  # how this block relates to the block printed before it
    children: list[list[Block]] = field(default_factory=list)
    is_group: bool = False


def bounded_lines(text: str) -> list[str]:
    """The lines a reader sees: at most MAX_TEXT characters, MAX_LINES lines of at most
    MAX_LINE characters; what is cut is the middle, where frames are dropped anyway."""
    if len(text) > MAX_TEXT:
        half = MAX_TEXT // 2
        text = text[:half] + "\n" + text[-half:]
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        half = MAX_LINES // 2
        lines = lines[:half] + lines[-half:]
    return [line if len(line) <= MAX_LINE else line[:MAX_LINE] for line in lines]


def append_line(block: Block, line: str) -> None:
    """Add a line to the block's message, up to what is sent (no quadratic growth)."""
    if len(block.value) <= MAX_VALUE:
        block.value = f"{block.value}\n{line}" if block.value else line


def number(text: str) -> int | None:
    """A line or column number, or None (not ASCII digits, or absurdly long)."""
    if 0 < len(text) <= _MAX_NUMBER_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def newest_first(blocks: list[Block]) -> list[Block]:
    """Languages that print the newest call and the main exception first: reverse both,
    and move each block's link to the block it now follows."""
    for block in blocks:
        block.frames.reverse()
    ordered = list(reversed(blocks))
    links = [b.link for b in ordered]
    for index, block in enumerate(ordered):
        block.link = links[index - 1] if index else None
    return ordered
