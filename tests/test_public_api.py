from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import xvatool
import xvatool.errors


def test_all_is_sorted_and_unique():
    assert xvatool.__all__ == sorted(set(xvatool.__all__))


def test_every_public_name_resolves():
    for name in xvatool.__all__:
        assert getattr(xvatool, name) is not None, name


def test_all_is_complete():
    """Every error class and every name of the lazy table, nothing else; each one its module's own."""
    errors = {name for name in xvatool.errors.__all__ if name != "location_context"}
    assert set(xvatool.__all__) == errors | set(xvatool._LAZY) | {"__version__"}
    assert len(xvatool.__all__) == len(errors) + len(xvatool._LAZY) + 1  # no name in two tables
    for name, module in xvatool._LAZY.items():
        assert name in importlib.import_module(module).__all__, f"{module} does not export {name}"
    public = {n for n in dir(xvatool) if not n.startswith("_") and n != "annotations"}
    modules = {n for n in public if inspect.ismodule(getattr(xvatool, n))}  # subpackages once imported
    assert public - modules == set(xvatool.__all__) - {"__version__"}


def test_type_checking_imports_mirror_the_lazy_table():
    """mypy sees the lazy names through `if TYPE_CHECKING:` imports: they must be the same."""
    tree = ast.parse(Path(xvatool.__file__).read_text())
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    seen = {alias.asname or alias.name: node.module for node in block.body for alias in node.names}
    assert seen == xvatool._LAZY


def test_test_tools_live_in_xvatool_testing():
    import xvatool.testing

    for name in ("SimHost", "running_host", "run_demo"):
        assert name not in xvatool.__all__
        assert name in xvatool.testing.__all__ and getattr(xvatool.testing, name)


def test_every_module_declares_its_public_names():
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


def test_hypothesis_profiles_are_registered_and_chosen_by_the_environment():
    from hypothesis import settings

    for name in ("ci", "dev", "long"):
        assert settings.get_profile(name).deadline is None
    assert settings.get_profile("ci").max_examples < settings.get_profile("long").max_examples
    assert (
        settings.default.max_examples
        == settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")).max_examples
    )
