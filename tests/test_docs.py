"""Every code example in README.md and docs/ runs, in order, one namespace per file.

Conventions for whoever writes the documentation:

* a fenced ``python`` block is executed (``exec``) in a namespace shared by
  the file's blocks, in a temporary working directory of the file's own; a
  ``try``/``except`` that shows an error (one without ``else``, outside loops
  and functions) must see an exception: the test fails if its ``try`` block
  completes, so an example cannot demonstrate an error that no longer happens;
* a fenced ``pycon`` block is a doctest (``>>>`` prompts, the expected output
  is checked, ``...`` as in doctest's ELLIPSIS), in the same namespace;
* a fenced ``console`` block is a shell session run by bash in the same
  directory, with the virtualenv's ``bin`` first on ``PATH`` (so ``procflow``
  and ``python`` are this checkout's) and ``recipes/`` linked into the
  directory: each ``$ command`` line (continued by a trailing backslash) runs
  in one shell, and the lines up to the next ``$ `` are its expected output,
  stdout and stderr together; ``...`` alone on a line matches any number of
  lines, ``...`` inside a line matches any text; runs of blanks compare equal
  (tables may be aligned differently), leading and trailing blanks are ignored;
* a block right after a ``<!-- no-run -->`` line, or fenced as
  ```` ```{.python .no-run} ````, is not run: keep that for the rare example
  that cannot run here;
* any other language (``text``, ``bash``, ``toml``...) is not run.
"""

from __future__ import annotations

import ast
import doctest
import gc
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import procflow

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN_LANGUAGES = {"python", "py", "pycon", "console"}
NO_RUN_MARK = "<!-- no-run -->"
SHELL_TIMEOUT = 60.0

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    language: str
    code: str
    line: int  # 1-based line of the first code line
    run: bool


def _language(info: str) -> tuple[str, bool]:
    """(language, no_run) from a fence's info string: ``python`` or ``{.python .no-run}``."""
    info = info.strip()
    if info.startswith("{"):
        classes = re.findall(r"\.([\w-]+)", info)
        return (classes[0] if classes else ""), "no-run" in classes
    words = info.split()
    return (words[0] if words else ""), False


def collect(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, indented ones (admonitions, tabs) included."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m.group("indent"), m.group("fence")
        language, no_run = _language(m.group("info"))
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        no_run = no_run or prev == NO_RUN_MARK
        start = i + 1
        j = start
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[start:j]]
        blocks.append(Block(language.lower(), "\n".join(body) + "\n", start + 1, not no_run))
        i = j + 1
    return blocks


def _squeeze(line: str) -> str:
    return " ".join(line.split())


def console_pattern(expected: list[str]) -> re.Pattern[str]:
    """A regex for a command's expected output (see the module docstring)."""
    parts = []
    for line in expected:
        line = _squeeze(line)
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*".join(re.escape(p) for p in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def parse_session(code: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines (with backslash continuations) and their expected output."""
    steps: list[tuple[str, list[str]]] = []
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if steps:
                steps[-1][1].append(line)
            elif line.strip():
                raise ValueError(f"console block must start with '$ ': {line!r}")
            i += 1
            continue
        cmd = line[2:]
        while cmd.endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd = cmd[:-1] + "\n" + lines[i]
        steps.append((cmd, []))
        i += 1
    for _, out in steps:
        while out and not out[-1].strip():
            out.pop()
    return steps


def run_session(code: str, where: str, cwd: Path) -> None:
    """Run a console block in one bash; compare each command's output with the expected lines."""
    steps = parse_session(code)
    marker = "\x1eprocflow-docs-step\x1e"
    script = ["exec 2>&1"]
    for n, (cmd, _) in enumerate(steps):
        script.append(f"printf '{marker}{n}\\n'")
        script.append(cmd)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        timeout=SHELL_TIMEOUT,
        check=False,
    )
    outputs = re.split(re.escape(marker) + r"\d+\n", proc.stdout.decode("utf-8", "replace"))[1:]
    assert len(outputs) == len(steps), f"{where}: the session stopped early:\n{proc.stdout!r}"
    for (cmd, expected), actual in zip(steps, outputs, strict=True):
        got = "".join(_squeeze(ln) + "\n" for ln in actual.splitlines())
        if not console_pattern(expected).fullmatch(got):
            pytest.fail(
                f"{where}: `$ {cmd}` printed:\n{got}--- but the page says:\n" + "\n".join(expected),
                pytrace=False,
            )


class _ExpectRaise(ast.NodeTransformer):
    """Give each demonstrative ``try``/``except`` an ``else: raise AssertionError``."""

    def __init__(self, where: str) -> None:
        self.where = where

    def visit_Try(self, node: ast.Try) -> ast.Try:
        if node.handlers and not node.orelse:
            message = f"{self.where}: the try block at line {node.lineno} raised nothing"
            fail = ast.parse(f"raise AssertionError({message!r})").body
            node.orelse = [ast.copy_location(stmt, node) for stmt in fail]
            ast.fix_missing_locations(node)
        self.generic_visit(node)
        return node

    def _skip(self, node: ast.AST) -> ast.AST:
        return node  # inside a loop or a function an exception may rightly not happen every time

    visit_For = visit_While = visit_AsyncFor = visit_FunctionDef = visit_AsyncFunctionDef = _skip


def compile_block(code: str, rel: str, line: int) -> types.CodeType:
    """Compile a ``python`` block with its real line numbers and the try/except check."""
    tree = ast.parse("\n" * (line - 1) + code, rel)
    tree = _ExpectRaise(rel).visit(tree)
    return compile(tree, rel, "exec")


def run_doctest(code: str, namespace: dict[str, object], name: str, rel: str, line: int) -> None:
    test = doctest.DocTestParser().get_doctest(code, namespace, name, rel, line - 1)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    result = runner.run(test, out=report.append, clear_globs=False)
    if result.failed:
        pytest.fail("".join(report), pytrace=False)


def run_file(path: Path, tmp: Path) -> int:
    """Run every runnable block of ``path``; returns how many ran."""
    rel = str(path.relative_to(ROOT))
    namespace: dict[str, object] = {"__name__": "__docs__"}
    ran = 0
    try:
        for block in collect(path.read_text(encoding="utf-8")):
            if not block.run or block.language not in RUN_LANGUAGES:
                continue
            where = f"{rel}:{block.line}"
            if block.language in ("python", "py"):
                exec(compile_block(block.code, rel, block.line), namespace)
            elif block.language == "pycon":
                run_doctest(block.code, namespace, where, rel, block.line)
            else:
                run_session(block.code, where, tmp)
            ran += 1
    finally:
        namespace.clear()
        gc.collect()  # dropped handles and iterators close their runs now, before the leak check
    return ran


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every runnable code block of the page runs and its shown output is right."""
    # The pages run commands as from the repository's root (`python recipes/compress.py`).
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    run_file(path, tmp_path)


class TestCollector:
    """The block collector and the console matcher do what the conventions say."""

    SAMPLE = "\n".join(
        [
            "# Title",
            "```python",
            "x = 1",
            "```",
            "<!-- no-run -->",
            "",
            "```python",
            "skipped()",
            "```",
            "!!! note",
            "    ```pycon",
            "    >>> x",
            "    1",
            "    ```",
            "````{.python .no-run}",
            "```",
            "````",
            "```text",
            "not code",
            "```",
        ]
    )

    def test_languages_lines_and_no_run(self) -> None:
        """Blocks are found with their language, first line and no-run marks."""
        blocks = collect(self.SAMPLE)
        assert [(b.language, b.line, b.run) for b in blocks] == [
            ("python", 3, True),
            ("python", 8, False),
            ("pycon", 12, True),
            ("python", 16, False),
            ("text", 19, True),
        ]
        assert blocks[2].code == ">>> x\n1\n"

    def test_console_ellipsis(self) -> None:
        """'...' alone matches any lines, inside a line any text; nothing else is loose."""
        pat = console_pattern(["pid ...", "...", "end"])
        assert pat.fullmatch("pid 123 and more\nend\n")
        assert pat.fullmatch("pid 1\na\nb\nend\n")
        assert not pat.fullmatch("pid 1\nend\nextra\n")
        assert not console_pattern(["hello"]).fullmatch("hello world\n")

    def test_session_parsing(self) -> None:
        """Commands with continuations are split from their expected output."""
        steps = parse_session("$ echo a \\\n  b\na b\n\n$ true\n")
        assert steps == [("echo a \n  b", ["a b"]), ("true", [])]

    def test_console_blanks_compare_equal(self, tmp_path: Path) -> None:
        """Runs of blanks in a command's output match a single blank on the page."""
        run_session("$ printf '  a    b  \\n'\na b\n", "sample", tmp_path)

    def test_a_try_that_raises_nothing_fails(self) -> None:
        """A demonstrative try/except whose try block completes fails the page."""
        code = compile_block("try:\n    x = 1\nexcept ValueError:\n    pass\n", "page.md", 10)
        with pytest.raises(AssertionError, match=r"page\.md: the try block at line 10 raised nothing"):
            exec(code, {})
        exec(compile_block("try:\n    int('x')\nexcept ValueError:\n    pass\n", "page.md", 1), {})

    def test_a_try_in_a_loop_or_function_may_complete(self) -> None:
        """In a loop or a function a try block may complete: no check is added there."""
        exec(compile_block("for i in range(2):\n    try:\n        pass\n    except ValueError:\n        pass\n",
                           "page.md", 1), {})
        exec(compile_block("def f():\n    try:\n        pass\n    except ValueError:\n        pass\nf()\n",
                           "page.md", 1), {})

    def test_a_wrong_console_output_fails(self, tmp_path: Path) -> None:
        """A console block whose output differs from the page fails the test."""
        with pytest.raises(pytest.fail.Exception, match="but the page says"):
            run_session("$ echo hello\ngoodbye\n", "sample", tmp_path)


def test_pages_have_runnable_examples() -> None:
    """The collector finds runnable examples in the pages (a silent parser break would not)."""
    counts = {p.name: sum(b.run and b.language in RUN_LANGUAGES for b in collect(p.read_text())) for p in _pages()}
    for name in ("index.md", "tutorial.md", "concepts.md", "gotchas.md", "cli.md"):
        assert counts[name] >= 2, counts


def test_every_page_is_in_the_nav() -> None:
    """Each Markdown page under docs/ is listed in mkdocs.yml."""
    config = (ROOT / "mkdocs.yml").read_text()
    missing = [str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in config]
    assert not missing


def test_reference_lists_every_public_name() -> None:
    """docs/reference.md documents every name in procflow.__all__, and only those."""
    text = (DOCS / "reference.md").read_text()
    listed = set(re.findall(r"^::: procflow\.(\w+)", text, re.M))
    assert listed == set(procflow.__all__)
