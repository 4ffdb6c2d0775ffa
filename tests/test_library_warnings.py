"""No raw library message reaches the terminal: inside a command (and in its worker processes) a library warning
is one line of ours ('WARNING: numpy: overflow encountered in cast', no source line), library deprecation notices
and nibabel's header notes are shown only with --verbose."""
from __future__ import annotations

import logging
import struct

import nibabel as nib
import numpy as np
import pytest
import torch

from dgcf_auto.log import command_session


def _overflow(value: float) -> float:
    return float(np.array([value]).astype(np.float32)[0])


def _scripted(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_numpy_overflow_is_one_line_of_ours(capfd):
    with command_session():
        assert _overflow(1e300) == np.inf
    err = capfd.readouterr().err
    assert err == "WARNING: numpy: overflow encountered in cast\n"


def test_torch_jit_script_deprecation_is_not_shown(capfd):
    with command_session():
        torch.jit.script(_scripted)
    err = capfd.readouterr().err
    assert err == ""


def test_a_library_warning_names_its_library_without_source_lines(capfd):
    import warnings

    with command_session():
        warnings.warn_explicit("the pixel spacing\n looks odd", UserWarning,
                               "/venv/lib/python3.11/site-packages/somelib/io.py", 12)
    assert capfd.readouterr().err == "WARNING: somelib: the pixel spacing looks odd\n"


def test_nibabel_header_notes_are_not_shown_even_with_an_info_root_logger(tmp_path, capfd, monkeypatch):
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    nib.save(image, tmp_path / "q.nii")
    raw = bytearray((tmp_path / "q.nii").read_bytes())
    raw[76:80] = struct.pack("<f", 0.0)  # pixdim[0] (qfac) = 0
    (tmp_path / "q.nii").write_bytes(bytes(raw))
    monkeypatch.setattr(logging.getLogger(), "level", logging.INFO)  # as some libraries' basicConfig leaves it
    handlers = list(logging.getLogger("nibabel.global").handlers)
    with command_session():
        nib.load(tmp_path / "q.nii")
    assert capfd.readouterr().err == ""
    assert logging.getLogger("nibabel.global").handlers == handlers  # restored after the command


def test_worker_processes_speak_in_one_line_too(capfd):
    from dgcf_auto.workers import map_cases

    with command_session():
        assert list(map_cases(_overflow, [1e300, 1e301], num_processes=2, progress=False)) == [np.inf, np.inf]
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines and set(lines) == {"WARNING: numpy: overflow encountered in cast"}
