"""Write the ``underlay`` executable into a CNI bin directory (for the tests, later the
installer): a two-line shell-free launcher that runs ``cni.plugin`` with this interpreter.

The launcher is a Python script whose shebang is the interpreter's absolute path with
``-I -S``: isolated mode (no PYTHON* environment, no user site, no cwd on sys.path) and no
``site`` import, which is the largest part of a bare interpreter's start-up. The package
directory is then put on ``sys.path`` explicitly, so the plugin runs from the source tree
without an installed ``site``. Runtimes exec it directly; there is no ``/bin/sh`` in between.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile

import cni

logger = logging.getLogger(__name__)

PLUGIN_NAME = "underlay"
_TEMPLATE = """#!{python} -IS
import sys
sys.path.insert(0, {root!r})
from cni.plugin import main
sys.exit(main())
"""


def render_launcher(python: str, root: str) -> str:
    if not os.path.isabs(python):
        raise ValueError(f"interpreter {python!r} must be an absolute path")
    if " " in python or len(python) > 120:
        raise ValueError(f"interpreter path {python!r} cannot go on a shebang line")
    return _TEMPLATE.format(python=python, root=root)


def write_plugin_launcher(bin_dir: str, python: str | None = None) -> str:
    """Write ``<bin_dir>/underlay`` atomically (mode 0755) and return its path."""
    python = python or sys.executable
    root = os.path.dirname(os.path.dirname(os.path.abspath(cni.__file__)))
    text = render_launcher(os.path.abspath(python), root)
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, PLUGIN_NAME)
    fd, tmp = tempfile.mkstemp(dir=bin_dir, prefix=".underlay-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    logger.info("wrote CNI plugin launcher %s (interpreter %s)", path, python)
    return path
