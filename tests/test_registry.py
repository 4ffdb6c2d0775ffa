"""dgcf_auto.registry: register, get, names, describe, and plugins through entry points."""
from __future__ import annotations

import sys
import textwrap

import pytest

from dgcf_auto.errors import DGCFError
from dgcf_auto.registry import Registry


def test_register_as_decorator_and_directly():
    colours: Registry[object] = Registry("colour")

    @colours.register("red", description="the first")
    def red():
        """Red's docstring."""

    def blue():
        """Blue's docstring, first line.

        More."""

    assert colours.register("blue", blue) is blue
    assert colours.get("red") is red and colours["blue"] is blue
    assert colours.names() == ["red", "blue"] and list(colours) == ["red", "blue"] and len(colours) == 2
    assert "red" in colours and "green" not in colours
    assert colours.describe() == "red: the first\nblue: Blue's docstring, first line."
    assert colours.metadata("red") == {"description": "the first"}
    colours.register("red", red)  # the same object again is harmless
    with pytest.raises(ValueError, match="colour 'red' is registered twice"):
        colours.register("red", blue)


def test_an_unknown_name_is_one_line_listing_the_known_ones():
    colours = Registry.from_dict("colour", {"red": 1, "blue": 2})
    with pytest.raises(DGCFError) as caught:
        colours.get("green")
    assert str(caught.value) == "unknown colour 'green'; known: red, blue"


def test_a_copy_does_not_reach_the_original():
    colours = Registry.from_dict("colour", {"red": 1})
    clone = colours.copy()
    clone.register("blue", 2)
    assert colours.names() == ["red"] and clone.names() == ["red", "blue"]


def write_distribution(root, package: str, module_source: str, group: str, entry_points: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata sees it: the package plus its .dist-info."""
    (root / package).mkdir()
    (root / package / "__init__.py").write_text(textwrap.dedent(module_source))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entry_points.items()))


def test_entry_point_plugins_load_once_and_a_broken_one_is_named(tmp_path, monkeypatch, caplog):
    write_distribution(tmp_path, "colourlab", """
        LOADS = []
        LOADS.append(1)
        def green():
            "Green from a plugin."
        """, "dgcf_auto.test_colours", {"green": "colourlab:green", "broken": "colourlab_missing"})
    monkeypatch.syspath_prepend(str(tmp_path))
    colours = Registry.from_dict("colour", {"red": 1}, "dgcf_auto.test_colours")
    assert colours.names() == ["red", "green"]
    assert colours.get("green").__doc__ == "Green from a plugin."
    assert sys.modules["colourlab"].LOADS == [1]
    assert "broken" in caplog.text and "colourlab_missing" in caplog.text
    with pytest.raises(DGCFError, match=r"unknown colour 'blue'; known: red, green; plugin 'broken' failed to load "
                                        r"\(ModuleNotFoundError"):
        colours.get("blue")
    colours.names()
    assert sys.modules["colourlab"].LOADS == [1]
