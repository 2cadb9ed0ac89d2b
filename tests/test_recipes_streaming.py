"""The streaming recipes, run for real with small sizes: compress, encode_video, git_log."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from procflow import ExitError, Proc

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def load(name: str) -> ModuleType:
    """A recipe, imported from its file."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compress() -> ModuleType:
    return load("compress")


@pytest.fixture(scope="module")
def encode_video() -> ModuleType:
    return load("encode_video")


@pytest.fixture(scope="module")
def git_log() -> ModuleType:
    return load("git_log")


# --------------------------------------------------------------------------- compress
class TestCompress:
    @pytest.mark.parametrize("codec", ["zstd", "xz", "gzip"])
    def test_round_trip(self, compress: ModuleType, codec: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Each codec: the recipe compresses, decompresses and finds the same digest."""
        size = "3M" if codec != "xz" else "1M"
        assert compress.main(["--size", size, "--codec", codec, "--interval", "0"]) == 0
        out = capsys.readouterr().out
        assert "OK: the round trip is byte-exact" in out
        assert " MiB/s" in out  # progress was shown while it ran
        digests = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("sha256")]
        assert len(digests) == 2 and digests[0] == digests[1]

    def test_output_file_is_real(self, compress: ModuleType, tmp_path: Path) -> None:
        """--output keeps a file that the real tool decompresses to the generated data."""
        out = tmp_path / "data.zst"
        assert compress.main(["--size", "2M", "--output", str(out), "--interval", "0"]) == 0
        assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
        back = Proc("zstd", "-d", "-c").stdin_path(out).stdout_capture().run().stdout
        assert hashlib.sha256(back).digest() == hashlib.sha256(b"".join(compress.generate(2 << 20))).digest()

    def test_generate_is_lazy_and_exact(self, compress: ModuleType) -> None:
        """The generator yields blocks of at most 1 MiB adding up to the size asked."""
        blocks = compress.generate(5 * (1 << 20) + 17)
        first = next(blocks)
        assert len(first) == 1 << 20
        rest = list(blocks)
        assert sum(map(len, rest)) + len(first) == 5 * (1 << 20) + 17

    def test_progress_reports(self, compress: ModuleType, tmp_path: Path) -> None:
        """compress() reports progress lines while writing and a final one; counts match the file."""
        lines: list[str] = []
        n_in, n_out, digest = compress.compress(
            "gzip", 1, compress.generate(3 << 20), str(tmp_path / "x.gz"), progress=lines.append, interval=0
        )
        assert n_in == 3 << 20
        assert n_out == (tmp_path / "x.gz").stat().st_size
        assert len(lines) >= 2 and lines[-1].endswith("done")
        assert digest == hashlib.sha256(b"".join(compress.generate(3 << 20))).hexdigest()

    def test_failing_compressor_raises(self, compress: ModuleType, tmp_path: Path) -> None:
        """A compressor that fails (gzip has no level 10) raises ExitError with its stderr."""
        with pytest.raises(ExitError) as info:
            compress.compress("gzip", 10, compress.generate(1 << 20), str(tmp_path / "x.gz"), progress=lambda s: None)
        assert "invalid option" in str(info.value)

    def test_parse_size(self, compress: ModuleType) -> None:
        """Sizes: 4096, 100k, 256M, 1G."""
        assert [compress.parse_size(s) for s in ("4096", "100k", "256M", "1G", "2MiB")] == [
            4096, 100 << 10, 256 << 20, 1 << 30, 2 << 20,
        ]

    def test_runs_as_a_script(self, tmp_path: Path) -> None:
        """`python recipes/compress.py --size 1M` works as a program."""
        out = subprocess.run(
            [sys.executable, str(RECIPES / "compress.py"), "--size", "1M", "--codec", "gzip"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "OK" in out.stdout


# --------------------------------------------------------------------------- encode_video
class TestEncodeVideo:
    def test_encode_and_probe(self, encode_video: ModuleType, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
        """Frames made in Python become a video whose frame count, size and codec ffprobe confirms."""
        out = tmp_path / "v.mp4"
        assert encode_video.main(["--width", "96", "--height", "64", "--fps", "10", "--frames", "25",
                                  "--output", str(out)]) == 0
        text = capsys.readouterr().out
        assert "ffmpeg: frame" in text  # progress parsed from stderr while encoding
        assert "OK: 25 frames, 96x64" in text
        info = json.loads(Proc("ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                               "stream=nb_read_frames,width,height", "-of", "json", str(out)).read())
        assert info["streams"][0] == {"width": 96, "height": 64, "nb_read_frames": "25"}

    def test_mpeg4(self, encode_video: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
        """The mpeg4 encoder works too."""
        assert encode_video.main(["--encoder", "mpeg4", "--width", "64", "--height", "48", "--frames", "12"]) == 0
        assert "mpeg4" in capsys.readouterr().out

    def test_pick_encoder_prefers_libx264(self, encode_video: ModuleType) -> None:
        """auto picks libx264 when ffmpeg lists it, else mpeg4."""
        listing = Proc("ffmpeg", "-hide_banner", "-encoders").stderr_null().read()
        expected = "libx264" if " libx264 " in listing else "mpeg4"
        assert encode_video.pick_encoder() == expected

    def test_progress_parser(self, encode_video: ModuleType) -> None:
        """The -progress parser reads frame= and progress= and keeps other lines apart."""
        seen: list[str] = []
        p = encode_video.FfmpegProgress(seen.append, 10)
        for line in ["frame=3", "fps=0.00", "speed=1x", "progress=continue", "Some warning: x", "frame=10",
                     "progress=end"]:
            p(line)
        assert (p.frame, p.blocks, p.ended) == (10, 2, True)
        assert p.other == ["Some warning: x"]
        assert len(seen) == 2 and "10/10" in seen[-1]

    def test_frames_have_the_right_size(self, encode_video: ModuleType) -> None:
        """Each generated frame is width*height*3 bytes."""
        sizes = {len(f) for f in encode_video.frames(40, 30, 7)}
        assert sizes == {40 * 30 * 3}

    def test_ffmpeg_failure_raises(self, encode_video: ModuleType, tmp_path: Path) -> None:
        """An ffmpeg that fails (an unwritable output) raises ExitError with ffmpeg's message."""
        with pytest.raises(ExitError) as info:
            encode_video.encode(str(tmp_path / "no-such-dir" / "v.mp4"), 32, 32, 5, 5, "mpeg4",
                                progress=lambda s: None)
        assert "No such file" in str(info.value)


# --------------------------------------------------------------------------- git_log
class TestGitLog:
    def test_stops_early_and_leaks_nothing(self, git_log: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
        """git log is left after a few lines: git stopped (it was blocked writing), nothing leaked."""
        assert git_log.main(["--commits", "3000", "--take", "4"]) == 0
        out = capsys.readouterr().out
        shown = [line for line in out.splitlines() if line.startswith("  ")]
        assert [line.split(": ")[0].split()[-2:] for line in shown] == [
            ["commit", "3000"], ["commit", "2999"], ["commit", "2998"], ["commit", "2997"],
        ]
        assert "stopped by procflow" in out
        assert "OK: git pid" in out

    def test_grep(self, git_log: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
        """--grep filters the lines taken."""
        assert git_log.main(["--commits", "40", "--take", "3", "--grep", "feature"]) == 0
        shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
        assert len(shown) == 3 and all("feature" in line for line in shown)

    def test_existing_repo(self, git_log: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--repo uses an existing repository."""
        repo = tmp_path / "r"
        git_log.make_repo(str(repo), 7)
        assert git_log.main(["--repo", str(repo), "--take", "100"]) == 0
        shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
        assert len(shown) == 7
        assert (repo / "file7.txt").read_text() == "revision 7\n"
        assert os.path.isdir(repo / ".git")
