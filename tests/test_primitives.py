"""One home per primitive: the file hash and the folder lock."""
from __future__ import annotations

import hashlib
import multiprocessing
import os

import pytest

from dgcf_auto.atomic import folder_lock
from dgcf_auto.errors import DGCFError
from dgcf_auto.hashing import file_sha256


def test_a_file_hash_streams_and_equals_hashlib(tmp_path):
    data = os.urandom(10_000)
    (tmp_path / "a.bin").write_bytes(data)
    assert file_sha256(tmp_path / "a.bin", chunk=7) == hashlib.sha256(data).hexdigest()


def test_a_folder_hash_covers_names_contents_and_subfolders(tmp_path):
    (tmp_path / "series" / "sub").mkdir(parents=True)
    (tmp_path / "series" / "b.dcm").write_bytes(b"bee")
    (tmp_path / "series" / "a.dcm").write_bytes(b"ay")
    (tmp_path / "series" / "sub" / "c.dcm").write_bytes(b"sea")
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    listing = f"a.dcm\t{sha(b'ay')}\nb.dcm\t{sha(b'bee')}\nsub/c.dcm\t{sha(b'sea')}\n"
    assert file_sha256(tmp_path / "series") == sha(listing.encode())
    before = file_sha256(tmp_path / "series")
    (tmp_path / "series" / "sub" / "c.dcm").rename(tmp_path / "series" / "sub" / "d.dcm")
    assert file_sha256(tmp_path / "series") != before  # a renamed file changes the folder's hash


def _hold(folder, name, ready, release):
    with folder_lock(folder, name):
        ready.set()
        release.wait(30)


@pytest.mark.slow  # a second process holds the lock
@pytest.mark.parametrize("name", [".dgcf_test.lock", None])
def test_a_held_folder_lock_refuses_a_second_holder_naming_the_first(tmp_path, name):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, name, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(DGCFError) as caught:
            with folder_lock(tmp_path, name, busy="held by process {pid}"):
                pass
        assert str(caught.value) == f"held by process {holder.pid if name else '(unknown)'}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if name else [])  # nothing else written
    finally:
        release.set()
        holder.join(30)
    with folder_lock(tmp_path, name, busy="still held"):  # released with the process
        pass


def test_library_errors_name_the_parameter_and_the_command_line_shows_the_flag(capsys):
    from dgcf_auto.cli import CommandParser
    from dgcf_auto.cli.entry import cli_entry
    from dgcf_auto.imageio import voxel_limit

    with pytest.raises(DGCFError, match="^`max_voxels` must be at least 1, got 0$"):
        with voxel_limit(0):
            pass

    def main(argv):
        parser = CommandParser(prog="dgcf_x")
        parser.add_argument("--max_voxels", type=int)
        parser.add_argument("-c", "--continue_training", action="store_true")
        args = parser.parse_args(argv)
        if args.continue_training:
            raise DGCFError("`continue_training` and `start_over` contradict each other")
        with voxel_limit(args.max_voxels):
            return 0

    main.__module__ = "dgcf_auto.cli.x"
    with pytest.raises(SystemExit) as caught:
        cli_entry(main)(["--max_voxels", "0"])
    assert caught.value.code == 1
    assert capsys.readouterr().err == "dgcf_x: error: --max_voxels must be at least 1, got 0\n"
    with pytest.raises(SystemExit):
        cli_entry(main)(["-c"])
    # a parameter the command has no flag for stays its bare name
    assert capsys.readouterr().err == "dgcf_x: error: -c and start_over contradict each other\n"
