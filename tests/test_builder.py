"""The Proc builder: argv item types, immutability, and argument errors raised at the call."""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from conftest import child

from procflow import Proc, Secret


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class TestArgvItems:
    """Proc(*argv) takes str, bytes, os.PathLike, int and Secret; anything else is a TypeError."""

    def test_accepted_types_reach_the_child(self, tmp_path: pathlib.Path) -> None:
        """Each accepted item type arrives in the child as the expected string."""
        code = "import sys; print('|'.join(sys.argv[1:]))"
        out = Proc(sys.executable, "-c", code, "s", b"b", tmp_path, 42, Secret("hidden"), Secret(7)).read()
        assert out == f"s|b|{tmp_path}|42|hidden|7"

    def test_pathlike_program(self) -> None:
        """The program itself may be an os.PathLike."""
        assert Proc(pathlib.Path(sys.executable), "-c", "print('hi')").read() == "hi"

    @pytest.mark.parametrize("bad", [1.5, None, ["a"], ("a",), True, False, {"a": 1}, object()])
    def test_rejected_types(self, bad: object) -> None:
        """float, None, list, tuple, bool and other objects raise TypeError at build time."""
        with pytest.raises(TypeError):
            Proc("echo", bad)  # type: ignore[arg-type]

    @pytest.mark.parametrize("bad", [1.5, None, True])
    def test_rejected_program(self, bad: object) -> None:
        """The program position is checked like any other item."""
        with pytest.raises(TypeError):
            Proc(bad)  # type: ignore[arg-type]

    def test_list_as_single_argument_is_explained(self) -> None:
        """Proc(["ls", "-l"]) is a TypeError that says to unpack the list."""
        with pytest.raises(TypeError, match=r"Proc\(\*argv\)"):
            Proc(["ls", "-l"])  # type: ignore[arg-type]

    def test_empty(self) -> None:
        """Proc() with no program, or an empty program name, is a ValueError."""
        with pytest.raises(ValueError):
            Proc()
        with pytest.raises(ValueError):
            Proc("")

    def test_nul_byte(self) -> None:
        """An argument with a NUL byte cannot be passed to exec: ValueError at build time."""
        with pytest.raises(ValueError):
            Proc("echo", "a\0b")
        with pytest.raises(ValueError):
            Proc("echo", b"a\0b")

    def test_secret_rejects_bad_types(self) -> None:
        """Secret takes the same item types as Proc."""
        with pytest.raises(TypeError):
            Secret(1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Secret(None)  # type: ignore[arg-type]


# Every builder method with a harmless argument, so immutability can be checked on each.
_BUILDERS: list[tuple[str, Callable[[Proc], Proc]]] = [
    ("input", lambda p: p.input(b"data")),
    ("stdin_path", lambda p: p.stdin_path("/dev/null")),
    ("stdin_file", lambda p: p.stdin_file(0)),
    ("stdin_null", lambda p: p.stdin_null()),
    ("stdin_inherit", lambda p: p.stdin_inherit()),
    ("stdout_capture", lambda p: p.stdout_capture()),
    ("stdout_path", lambda p: p.stdout_path("/dev/null", append=True)),
    ("stdout_file", lambda p: p.stdout_file(1)),
    ("stdout_null", lambda p: p.stdout_null()),
    ("stdout_to_stderr", lambda p: p.stdout_to_stderr()),
    ("stderr_capture", lambda p: p.stderr_capture()),
    ("stderr_path", lambda p: p.stderr_path("/dev/null")),
    ("stderr_file", lambda p: p.stderr_file(2)),
    ("stderr_null", lambda p: p.stderr_null()),
    ("stderr_to_stdout", lambda p: p.stderr_to_stdout()),
    ("text", lambda p: p.text("latin-1", "strict")),
    ("cwd", lambda p: p.cwd("/")),
    ("env", lambda p: p.env(A="1")),
    ("env_update", lambda p: p.env_update({"A": "1"})),
    ("env_remove", lambda p: p.env_remove("HOME")),
    ("env_clear", lambda p: p.env_clear()),
    ("pass_fds", lambda p: p.pass_fds(0)),
    ("timeout", lambda p: p.timeout(5)),
    ("kill_grace", lambda p: p.kill_grace(0)),
    ("wait_delay", lambda p: p.wait_delay(0.5)),
    ("unchecked", lambda p: p.unchecked()),
]


class TestImmutability:
    """Every builder method returns a new object and leaves the original unchanged."""

    @pytest.mark.parametrize(("name", "build"), _BUILDERS, ids=[n for n, _ in _BUILDERS])
    def test_returns_new_object(self, name: str, build: Callable[[Proc], Proc]) -> None:
        """The method returns a different Proc that compares unequal; the original still equals a fresh one."""
        base = Proc("echo", "x")
        built = build(base)
        assert isinstance(built, Proc)
        assert built is not base
        assert built != base, f"{name}() changed nothing observable"
        assert base == Proc("echo", "x")

    def test_original_runs_unchanged(self) -> None:
        """Deriving a capturing, failing variant does not change what the original does."""
        base = child("echo", "hi")
        derived = base.stdout_capture().env(X="1").unchecked()
        assert derived.run().stdout == b"hi\n"
        assert base.stdout_null().run().stdout is None
        assert base.stderr_capture().run().stdout is None

    def test_setattr_raises(self) -> None:
        """Assigning or adding an attribute raises AttributeError."""
        p = Proc("echo")
        with pytest.raises(AttributeError):
            p._stages = ()  # type: ignore[misc]
        with pytest.raises(AttributeError):
            p.anything = 1  # type: ignore[attr-defined]

    def test_delattr_raises(self) -> None:
        """Deleting the state raises as well."""
        p = Proc("echo")
        with pytest.raises((AttributeError, TypeError)):
            del p._stages  # type: ignore[misc]

    def test_hashable_and_equal(self) -> None:
        """Equal builders hash equally (usable as dict keys)."""
        a = Proc("echo", "x").stdout_capture()
        b = Proc("echo", "x").stdout_capture()
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1

    def test_argv_and_repr(self) -> None:
        """argv is a tuple of str; repr shows it."""
        p = Proc("echo", b"b", 3, pathlib.Path("/x"))
        assert p.argv == ("echo", "b", "3", "/x")
        assert "echo" in repr(p)


def _closed_file() -> Any:
    with tempfile.TemporaryFile() as f:
        pass
    return f


def _unused_fd() -> int:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


_BAD_CALLS: list[tuple[str, type[Exception], Callable[[Proc], object]]] = [
    ("timeout-zero", ValueError, lambda p: p.timeout(0)),
    ("timeout-negative", ValueError, lambda p: p.timeout(-1)),
    ("timeout-nan", ValueError, lambda p: p.timeout(float("nan"))),
    ("timeout-inf", ValueError, lambda p: p.timeout(float("inf"))),
    ("timeout-str", TypeError, lambda p: p.timeout("5")),
    ("timeout-none", TypeError, lambda p: p.timeout(None)),
    ("timeout-bool", TypeError, lambda p: p.timeout(True)),
    ("kill_grace-negative", ValueError, lambda p: p.kill_grace(-0.1)),
    ("kill_grace-str", TypeError, lambda p: p.kill_grace("1")),
    ("wait_delay-negative", ValueError, lambda p: p.wait_delay(-1)),
    ("stdout-max_bytes-zero", ValueError, lambda p: p.stdout_capture(max_bytes=0)),
    ("stdout-max_bytes-negative", ValueError, lambda p: p.stdout_capture(max_bytes=-5)),
    ("stdout-max_bytes-float", TypeError, lambda p: p.stdout_capture(max_bytes=1.5)),
    ("stderr-max_bytes-zero", ValueError, lambda p: p.stderr_capture(max_bytes=0)),
    ("stdin_file-closed", ValueError, lambda p: p.stdin_file(_closed_file())),
    ("stdout_file-closed", ValueError, lambda p: p.stdout_file(_closed_file())),
    ("stderr_file-closed", ValueError, lambda p: p.stderr_file(_closed_file())),
    ("stdin_file-bad-fd", ValueError, lambda p: p.stdin_file(_unused_fd())),
    ("stdout_file-negative-fd", ValueError, lambda p: p.stdout_file(-1)),
    ("stderr_file-bad-fd", ValueError, lambda p: p.stderr_file(_unused_fd())),
    ("stdin_file-bool", TypeError, lambda p: p.stdin_file(True)),
    ("stdout_file-str", TypeError, lambda p: p.stdout_file("out.txt")),
    ("pass_fds-bad-fd", ValueError, lambda p: p.pass_fds(_unused_fd())),
    ("pass_fds-negative", ValueError, lambda p: p.pass_fds(-3)),
    ("pass_fds-str", TypeError, lambda p: p.pass_fds("3")),
    ("pass_fds-bool", TypeError, lambda p: p.pass_fds(True)),
    ("on_stdout-not-callable", TypeError, lambda p: p.on_stdout("print")),
    ("on_stderr-not-callable", TypeError, lambda p: p.on_stderr(None)),
    ("text-bad-encoding", ValueError, lambda p: p.text("no-such-codec")),
    ("text-bad-errors", ValueError, lambda p: p.text("utf-8", "no-such-handler")),
    ("text-encoding-type", TypeError, lambda p: p.text(8)),
    ("env-name-with-equals", ValueError, lambda p: p.env_update({"A=B": "1"})),
    ("env-empty-name", ValueError, lambda p: p.env_update({"": "1"})),
    ("env-value-int", TypeError, lambda p: p.env(A=1)),
    ("env-value-none", TypeError, lambda p: p.env(A=None)),
    ("env-value-nul", ValueError, lambda p: p.env(A="a\0b")),
    ("env_update-not-mapping", TypeError, lambda p: p.env_update([("A", "1")])),
    ("env_remove-int", TypeError, lambda p: p.env_remove(3)),
    ("cwd-int", TypeError, lambda p: p.cwd(3)),
    ("cwd-empty", ValueError, lambda p: p.cwd("")),
    ("stdin_path-none", TypeError, lambda p: p.stdin_path(None)),
    ("stdout_path-empty", ValueError, lambda p: p.stdout_path("")),
    ("stderr_path-list", TypeError, lambda p: p.stderr_path(["x"])),
    ("input-int", TypeError, lambda p: p.input(5)),
    ("input-none", TypeError, lambda p: p.input(None)),
    ("pipe-not-a-command", TypeError, lambda p: p.pipe("cat")),
]


class TestBadArguments:
    """A bad argument raises TypeError/ValueError at the builder call, and nothing runs."""

    @pytest.mark.parametrize(("name", "exc", "call"), _BAD_CALLS, ids=[n for n, _, _ in _BAD_CALLS])
    def test_raises_at_the_call(self, name: str, exc: type[Exception], call: Callable[[Proc], object]) -> None:
        """The error is raised by the builder method itself."""
        with pytest.raises(exc):
            call(Proc("cat"))

    def test_nothing_spawned_and_no_fd_leaked(self) -> None:
        """Rejected builder calls start no child, open no fd and start no thread."""
        fds, kids, threads = _fds(), _children(), threading.active_count()
        f = _closed_file()
        bad = _unused_fd()
        for _, exc, call in _BAD_CALLS:
            with pytest.raises(exc):
                call(Proc("cat"))
        for call2 in (lambda: Proc("cat").stdin_file(f), lambda: Proc("cat").pass_fds(bad)):
            with pytest.raises(ValueError):
                call2()
        assert _fds() == fds
        assert _children() == kids
        assert threading.active_count() == threads

    def test_file_not_open_for_the_direction(self, tmp_path: pathlib.Path) -> None:
        """A file open only for reading is refused as stdout, one open for writing as stdin."""
        path = tmp_path / "f"
        path.write_bytes(b"")
        with open(path, "rb") as r, pytest.raises(ValueError):
            Proc("cat").stdout_file(r)
        with open(path, "wb") as w, pytest.raises(ValueError):
            Proc("cat").stdin_file(w)

    def test_redirect_loop(self) -> None:
        """stdout_to_stderr() with stderr_to_stdout() is refused at the call."""
        with pytest.raises(ValueError):
            Proc("cat").stdout_to_stderr().stderr_to_stdout()

    def test_run_arguments_checked(self) -> None:
        """run(cancel=...) and run(supervisor=...) of the wrong type are TypeErrors before spawning."""
        kids = _children()
        with pytest.raises(TypeError):
            Proc("true").run(cancel="soon")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Proc("true").start(supervisor=object())  # type: ignore[arg-type]
        assert _children() == kids

    def test_valid_edge_values(self) -> None:
        """Boundary values that are allowed: kill_grace(0), wait_delay(0), max_bytes=1, fd 0."""
        p = Proc("cat").kill_grace(0).wait_delay(0).stdout_capture(max_bytes=1).stdin_file(0).pass_fds(0)
        assert isinstance(p, Proc)
