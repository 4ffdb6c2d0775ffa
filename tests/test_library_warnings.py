"""No raw library message reaches the terminal: inside a command (and in its worker processes) a library warning
is one line of ours ('WARNING: numpy: overflow encountered in cast', no source line), library deprecation notices
and nibabel's header notes are shown only with --verbose."""
from __future__ import annotations

import numpy as np

from dgcf_auto.log import command_session


def _overflow(value: float) -> float:
    return float(np.array([value]).astype(np.float32)[0])


def test_numpy_overflow_is_one_line_of_ours(capfd):
    with command_session():
        assert _overflow(1e300) == np.inf
    err = capfd.readouterr().err
    assert err == "WARNING: numpy: overflow encountered in cast\n"


def test_a_library_warning_names_its_library_without_source_lines(capfd):
    import warnings

    with command_session():
        warnings.warn_explicit("the pixel spacing\n looks odd", UserWarning,
                               "/venv/lib/python3.11/site-packages/somelib/io.py", 12)
    assert capfd.readouterr().err == "WARNING: somelib: the pixel spacing looks odd\n"


_SCRIPT = """
import logging, struct, sys
import nibabel as nib, numpy as np, torch
from dgcf_auto.log import command_session

image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
nib.save(image, sys.argv[1])
raw = bytearray(open(sys.argv[1], "rb").read())
raw[76:80] = struct.pack("<f", 0.0)  # pixdim[0] (qfac) = 0: nibabel notes 'setting qfac to 1'
open(sys.argv[1], "wb").write(bytes(raw))
logging.getLogger().setLevel(logging.INFO)  # as some libraries' basicConfig leaves it


def scripted(x: torch.Tensor) -> torch.Tensor:
    return x * 2


with command_session():
    nib.load(sys.argv[1])
    torch.jit.script(scripted)  # torch 2.9+: a FutureWarning ('torch.jit.script is deprecated')
    np.array([1e300]).astype(np.float32)
print("done")
"""


def test_a_command_shows_no_raw_nibabel_torch_or_numpy_message(tmp_path):
    """In a fresh interpreter (pytest records warnings itself, which would hide raw ones)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "script.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "q.nii")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0 and run.stdout == "done\n", run.stderr
    assert run.stderr == "WARNING: numpy: overflow encountered in cast\n"


def test_worker_processes_speak_in_one_line_too(capfd):
    from dgcf_auto.workers import map_cases

    with command_session():
        assert list(map_cases(_overflow, [1e300, 1e301], num_processes=2, progress=False)) == [np.inf, np.inf]
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines and set(lines) == {"WARNING: numpy: overflow encountered in cast"}
