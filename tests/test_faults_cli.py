"""User errors at the command line: one or two lines naming the key, before Ray or any model starts, no
traceback unless --debug; Ctrl-C on `rayiqa score` ends in one line saying what is written."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayiqa import cli
from rayiqa.io.samples import samples_dir
from rayiqa.pipeline import score_job

RAYIQA = str(Path(sys.executable).with_name("rayiqa"))


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the command gets as far as starting Ray."""
    monkeypatch.setattr(score_job, "ensure_ray", lambda *a, **k: pytest.fail("Ray started for a user error"))


def one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_input_errors_name_input_uri(no_ray, capsys, tmp_path):
    out = f"output.uri={tmp_path / 'out'}"
    err = one_line_error(capsys, ["score", f"input.uri={tmp_path / 'missing'}", out])
    assert err == f"input error: input.uri='{tmp_path / 'missing'}': no such folder, file, bucket or prefix"
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, ["score", f"input.uri={tmp_path / 'empty'}", out])
    assert err.startswith(f"input error: input.uri='{tmp_path / 'empty'}': no images found")
    err = one_line_error(capsys, ["score", "input.uri=builtin:sample", out])
    assert err == "input error: input.uri='builtin:sample': the only builtin input is 'builtin:samples'"


def test_output_errors_say_what_is_wrong(no_ray, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    samples = "input.uri=builtin:samples"
    err = one_line_error(capsys, ["score", samples, f"output.uri={tmp_path / 'file'}"])
    assert err.startswith(f"output error: output.uri='{tmp_path / 'file'}' is not a folder")
    err = one_line_error(capsys, ["score", samples, f"output.uri={tmp_path / 'file' / 'out'}"])
    assert err.startswith(f"output error: output.uri='{tmp_path / 'file' / 'out'}' is not a folder")
    err = one_line_error(capsys, ["score", samples, "output.uri=/sys/rayiqa-out"])  # EPERM even for root
    assert err.startswith("output error: output.uri='/sys/rayiqa-out' is not writable")
    err = one_line_error(capsys, ["score", samples, "output.uri=s3://bucket/out", "output.storage.endpoint_url=http://127.0.0.1:9",
                                  "output.storage.key=k", "output.storage.secret=s", "output.storage.retry_attempts=1"])
    assert err.startswith("output error: output.uri='s3://bucket/out' is not reachable (output.storage; retry_attempts=1)")


def test_debug_shows_the_traceback(no_ray, tmp_path):
    from rayiqa.io.errors import InputError

    with pytest.raises(InputError):
        cli.main(["--debug", "score", f"input.uri={tmp_path / 'missing'}"])


def test_eval_scores_errors_are_one_line(capsys, tmp_path):
    err = one_line_error(capsys, ["eval", "scores", str(tmp_path / "none.parquet"), str(tmp_path / "mos.csv")])
    assert err.startswith("eval error:") and "none.parquet" in err


def _committed(out: Path) -> int:
    fs = pafs.LocalFileSystem()
    infos = fs.get_file_info(pafs.FileSelector(str(out / "_checkpoint"), allow_not_found=True))
    done = [i.path for i in infos if i.path.endswith(".parquet") and not i.path.endswith(".pending.parquet")]
    return sum(pq.read_metadata(p).num_rows for p in done)


@pytest.mark.timeout(400)
def test_ctrl_c_on_score_says_what_is_written_and_how_to_resume(tmp_path):
    # eight copies of the 36 samples at the tiny model's full image size: after the first committed part, about 10 s
    # of work remain for the interrupt to land in (16 small images, or the 36 once, finished first on a quiet machine)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for image in sorted(p for p in samples_dir().iterdir() if p.suffix in (".png", ".jpg")):
        for copy in range(8):
            shutil.copy(image, src / f"{copy}_{image.name}")
    argv = [RAYIQA, "score", f"input.uri={src}", f"output.uri={out}", "method.segmentation=false",
            "mllms=[{preset: tiny}]", "decode.batch_size=2", "decode.num_cpus=1", "score.batch_size=2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ctrl-C as in a terminal: the child gets SIGINT's default action even when this pytest process ignores SIGINT
    # (a SIG_IGN is inherited across exec, and an earlier test in the session can leave one behind)
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not _committed(out) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before the interrupt"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "rows are committed to" in last and "run the same command again" in last, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    committed = int(last.split("interrupted: ", 1)[1].split(" ", 1)[0])
    assert 0 < committed < 288 and committed == _committed(out)
