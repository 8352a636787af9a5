"""scripts/fetch_device_wheels.py: the parts that run without the network (pinning, safe unpacking)."""

from __future__ import annotations

import importlib.metadata
import json
import zipfile

import pytest

from scripts import fetch_device_wheels as fdw


def test_pinned_uses_this_environments_version():
    assert fdw.pinned("numpy") == f"numpy=={importlib.metadata.version('numpy')}"
    assert fdw.pinned("numpy>=1.0") == "numpy>=1.0"  # an explicit specifier is kept
    assert fdw.pinned("surely-not-an-installed-package-xyz") == "surely-not-an-installed-package-xyz"


def _wheel(path, members: dict[str, str]):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return str(path)


def test_unpack_lays_out_a_site_folder(tmp_path):
    wheel = _wheel(tmp_path / "demo-1.0-py3-none-any.whl",
                   {"demo/__init__.py": "VALUE = 3\n", "demo-1.0.dist-info/METADATA": "Name: demo\n"})
    site = tmp_path / "site"
    site.mkdir()
    fdw.unpack(wheel, str(site))
    assert (site / "demo" / "__init__.py").read_text() == "VALUE = 3\n"
    assert (site / "demo-1.0.dist-info" / "METADATA").exists()


def test_unpack_refuses_members_outside_the_folder(tmp_path):
    wheel = _wheel(tmp_path / "evil-1.0-py3-none-any.whl", {"../outside.py": "x = 1\n"})
    site = tmp_path / "site"
    site.mkdir()
    with pytest.raises(SystemExit, match="outside"):
        fdw.unpack(wheel, str(site))
    assert not (tmp_path / "outside.py").exists()


def test_carried_modules_match_the_distributions():
    """The names the device-image imitation lets through are exactly the carried wheels' import names."""
    provided = importlib.metadata.packages_distributions()
    assert fdw.DEVICE_WHEELS == tuple(fdw.DEVICE_WHEEL_IMPORTS)
    for dist, modules in fdw.DEVICE_WHEEL_IMPORTS.items():
        for module in modules:
            assert module in provided, module
            assert any(d.lower().replace("_", "-") == dist for d in provided[module]), (module, dist)
    assert set(fdw.DEVICE_WHEEL_MODULES) == {m for ms in fdw.DEVICE_WHEEL_IMPORTS.values() for m in ms}


def _carried(tmp_path, members: dict[str, str]):
    """A wheels folder as fetch_device_wheels writes it: one wheel plus manifest.json."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = _wheel(wheels / "demo-1.0-py3-none-any.whl", members)
    manifest = {"wheels": [{"file": "demo-1.0-py3-none-any.whl", "bytes": 0, "sha256": fdw.sha256(wheel)}]}
    (wheels / fdw.MANIFEST).write_text(json.dumps(manifest))
    return wheels, wheel


def test_ensure_site_unpacks_once_and_verifies(tmp_path):
    wheels, wheel = _carried(tmp_path, {"demo/__init__.py": "VALUE = 3\n"})
    site = tmp_path / "site"
    first = fdw.ensure_site(str(wheels), str(site))
    assert first["unpacked"] and first["wheels"] == ["demo-1.0-py3-none-any.whl"]
    assert (site / "demo" / "__init__.py").read_text() == "VALUE = 3\n"
    assert fdw.ensure_site(str(wheels), str(site))["unpacked"] is False  # already there: left alone
    # a wheel that changed after the manifest was written is refused, naming the file
    _wheel(wheel, {"demo/__init__.py": "VALUE = 4\n"})
    (site / fdw.SITE_MARKER).unlink()
    with pytest.raises(SystemExit, match="sha256 differs"):
        fdw.ensure_site(str(wheels), str(site))


def test_ensure_site_without_manifest_is_none(tmp_path):
    assert fdw.ensure_site(str(tmp_path / "absent"), str(tmp_path / "site")) is None
    assert not (tmp_path / "site").exists()
