"""recipes/backup.py, run for real: tar | zstd to a file, zstd -d | tar -x back, trees compared."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest

from procflow import ExitError, Proc

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "backup.py"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@pytest.fixture(scope="module")
def backup() -> ModuleType:
    """The recipe, imported from its file."""
    spec = importlib.util.spec_from_file_location("recipe_backup", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tree(root: Path) -> Path:
    """A few MiB: nested folders, text, a binary file, a symlink, an empty file, distinct modes."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "notes.txt").write_text("line\n" * 200_000)  # 1 MiB, compressible
    (root / "a" / "b" / "c" / "blob.bin").write_bytes(os.urandom(2 << 20))  # 2 MiB, binary
    (root / "a" / "b" / "zero").write_bytes(bytes(300_000))
    (root / "a" / "b" / "empty").write_bytes(b"")
    tool = root / "a" / "tool.sh"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o751)
    (root / "a" / "b" / "c" / "private").write_bytes(b"k" * 100)
    (root / "a" / "b" / "c" / "private").chmod(0o600)
    (root / "link-to-blob").symlink_to("a/b/c/blob.bin")
    (root / "a" / "dir-link").symlink_to("b")
    return root


def describe(root: Path) -> dict[str, tuple[str, int, str]]:
    """The test's own view of a tree (independent of the recipe's compare)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    return out


class TestRoundTrip:
    def test_restored_tree_equals_original(
        self, backup: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """main(SRC, ARCHIVE, RESTORE) returns 0 and the restored tree is byte-for-byte the original."""
        src = make_tree(tmp_path / "src")
        archive = tmp_path / "out" / "b.tar.zst"
        archive.parent.mkdir()
        dest = tmp_path / "restored"
        assert backup.main([str(src), str(archive), str(dest), "--interval", "0.05"]) == 0
        original, restored = describe(src), describe(dest)
        assert restored == original
        assert len(original) == 11
        assert restored["link-to-blob"] == ("link", 0, "a/b/c/blob.bin")
        assert restored["a/tool.sh"][1] == 0o751
        assert archive.read_bytes()[:4] == ZSTD_MAGIC
        out = capsys.readouterr().out
        assert "backup: done" in out and "MiB/s" in out
        assert "identical" in out

    def test_sample_tree_without_source(self, backup: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
        """Without arguments the recipe builds a sample tree, backs it up and restores it."""
        assert backup.main([]) == 0
        out = capsys.readouterr().out
        assert "sample tree:" in out and "identical" in out

    def test_runs_as_a_script(self, tmp_path: Path) -> None:
        """`python recipes/backup.py SRC ARCHIVE RESTORE` exits 0 and leaves the archive behind."""
        src = make_tree(tmp_path / "src")
        archive = tmp_path / "x.tar.zst"
        out = Proc(sys.executable, RECIPE, src, archive, tmp_path / "r").timeout(60).read()
        assert "identical" in out
        assert archive.stat().st_size > 0
        assert describe(tmp_path / "r") == describe(src)


class TestPieces:
    def test_backup_reports_progress_and_stages(self, backup: ModuleType, tmp_path: Path) -> None:
        """backup() reports progress and returns both stages' results (tar, zstd)."""
        src = make_tree(tmp_path / "src")
        lines: list[str] = []
        result = backup.backup(src, tmp_path / "a.zst", progress=lines.append, interval=0.01)
        assert [s.argv[0] for s in result.stages] == ["tar", "zstd"]
        assert result.ok
        size = (tmp_path / "a.zst").stat().st_size
        assert lines and f"({size} bytes)" in lines[-1]

    def test_compare_sees_differences(self, backup: ModuleType, tmp_path: Path) -> None:
        """compare_trees() notices changed content, mode, symlink target and missing entries."""
        src = make_tree(tmp_path / "src")
        archive = tmp_path / "a.zst"
        backup.backup(src, archive, progress=lambda line: None)
        dest = tmp_path / "d"
        backup.restore(archive, dest)
        assert backup.compare_trees(src, dest) == []
        notes = dest / "a" / "notes.txt"
        notes.write_bytes(b"X" + notes.read_bytes()[1:])
        (dest / "a" / "tool.sh").chmod(0o755)
        (dest / "link-to-blob").unlink()
        (dest / "link-to-blob").symlink_to("a/notes.txt")
        (dest / "a" / "b" / "empty").unlink()
        diffs = backup.compare_trees(src, dest)
        assert any("notes.txt: content differs" in d for d in diffs)
        assert any("tool.sh: mode 751 vs 755" in d for d in diffs)
        assert any("link-to-blob: target differs" in d for d in diffs)
        assert any(d.endswith("a/b/empty") and d.startswith("only in") for d in diffs)

    def test_truncated_archive_fails(self, backup: ModuleType, tmp_path: Path) -> None:
        """A truncated archive fails the restore: ExitError, zstd's failure in the stages."""
        src = make_tree(tmp_path / "src")
        archive = tmp_path / "a.zst"
        backup.backup(src, archive, progress=lambda line: None)
        data = archive.read_bytes()
        archive.write_bytes(data[: len(data) // 2])
        with pytest.raises(ExitError) as info:
            backup.restore(archive, tmp_path / "d")
        stages = info.value.result.stages
        assert [s.argv[0] for s in stages] == ["zstd", "tar"]
        assert stages[0].returncode != 0
        assert "stage" in str(info.value)

    def test_restore_needs_a_fresh_folder(self, backup: ModuleType, tmp_path: Path) -> None:
        """restore() refuses a folder that already has files in it."""
        dest = tmp_path / "d"
        dest.mkdir()
        (dest / "x").write_text("already here")
        with pytest.raises(FileExistsError):
            backup.restore(tmp_path / "none.zst", dest)

    def test_main_reports_failure(
        self, backup: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """main() exits 1 with a message when a stage fails (tar on a missing folder)."""
        code = backup.main([str(tmp_path / "missing"), str(tmp_path / "a.zst"), str(tmp_path / "d")])
        assert code == 1
        assert "backup failed" in capsys.readouterr().err
