"""Go panics: ``panic: message``, ``goroutine N [running]:``, then pairs of a function
line and a ``\t/path/file.go:12 +0x1d`` line. Printed newest call first."""

from __future__ import annotations

from otelkit.collector.exporters.sentry.stacktrace.model import Block, Frame, number


def is_go_line(line: str) -> bool:
    return _is_goroutine(line) or (line.startswith("\t") and ".go:" in line)


def read(lines: list[str]) -> list[Block]:
    block = Block()
    pending: str | None = None
    for line in lines:
        if line.startswith("panic: ") and block.type is None:
            block.type, block.value = "panic", line[7:].removesuffix(" [recovered]")
        elif _is_goroutine(line) or line.startswith("created by "):
            pending = None
            if line.startswith("created by "):
                pending = line.removeprefix("created by ").split(" in goroutine")[0]
        elif (location := _file_line(line)) and pending is not None:
            block.frames.append(_frame(pending, *location))
            pending = None
        elif function := _function(line):
            pending = function
    block.frames.reverse()
    return [block] if block.frames or block.value else []


def _is_goroutine(line: str) -> bool:
    return line.startswith("goroutine ") and line.endswith("]:") and " [" in line


def _function(line: str) -> str | None:
    """``pkg.(*T).M(0xc000010000)`` -> ``pkg.(*T).M``."""
    if not line.endswith(")") or line[:1] in ("", " ", "\t", "("):
        return None
    opening = line.rfind("(")
    if opening <= 0 or ")" in line[opening:-1] or "\t" in line:
        return None
    return line[:opening]


def _file_line(line: str) -> tuple[str, int] | None:
    """``\t/app/main.go:12 +0x1d`` -> (``/app/main.go``, 12)."""
    if not line.startswith("\t"):
        return None
    path, found, rest = line[1:].rpartition(".go:")
    lineno = number(rest.partition(" +0x")[0])
    if not found or not path or lineno is None:
        return None
    return path + ".go", lineno


def _frame(function: str, path: str, lineno: int) -> Frame:
    library = "/go/pkg/mod/" in path or "/src/runtime/" in path or "/usr/local/go/" in path
    package = _package(function)
    name = function[len(package) + 1 :] if package != function else function
    frame: Frame = {
        "abs_path": path,
        "filename": path.rsplit("/", 1)[-1],
        "lineno": lineno,
        "function": name,
        "in_app": not library and not function.startswith(("runtime.", "runtime/")),
    }
    if package != function:
        frame["module"] = package
    return frame


def _package(function: str) -> str:
    """``github.com/a/b.(*T).M`` -> ``github.com/a/b``."""
    slash = function.rfind("/")
    dot = function.find(".", slash + 1)
    return function[:dot] if dot > 0 else function
