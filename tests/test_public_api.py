from __future__ import annotations

import subprocess
import sys

import xvatool
import xvatool.errors


def test_all_is_sorted_and_unique():
    assert xvatool.__all__ == sorted(set(xvatool.__all__))


def test_every_public_name_resolves():
    for name in xvatool.__all__:
        assert getattr(xvatool, name) is not None, name


def test_lazy_names_are_all_listed():
    assert set(xvatool._LAZY) <= set(xvatool.__all__)
    assert set(xvatool.__all__) == set(xvatool._LAZY) | set(xvatool.errors.__all__) - {"location_context"} | {
        "__version__"
    }


def test_every_module_declares_its_public_names():
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(xvatool.__path__, "xvatool."):
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        assert names is not None, f"{info.name} has no __all__"
        for name in names:
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"


def test_import_and_format_layer_do_not_load_the_http_client():
    code = "import sys, xvatool, xvatool.cli; xvatool.validate_archive; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_runs_this_checkout():
    out = subprocess.run(
        [sys.executable, "-m", "xvatool", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"xvatool, version {xvatool.__version__}"


def test_version_comes_from_the_package_metadata():
    import importlib.metadata

    assert xvatool.__version__ == importlib.metadata.version("xvatool")
