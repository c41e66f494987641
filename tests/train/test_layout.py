"""The line between the library and the training job, and the job's entry points.

The library (``protofast``, ``protofast.loss``, ``protofast.manager``, ...) never imports the
job (``protofast.train``); the job uses only the library's public names.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import protofast
import pytest

PACKAGE_DIR = Path(protofast.__file__).parent
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _imports(path: Path, package: str) -> list[tuple[str, list[str]]]:
    """``(absolute module, imported names)`` of every import statement in ``path``."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            out.append((module, [alias.name for alias in node.names]))
    return out


def _is_job(module: str) -> bool:
    return module == "protofast.train" or module.startswith("protofast.train.")


def test_library_modules_do_not_import_the_job() -> None:
    files = sorted(PACKAGE_DIR.glob("*.py"))
    assert {"__init__.py", "loss.py", "manager.py"} <= {f.name for f in files}
    for path in files:
        for module, names in _imports(path, "protofast"):
            assert not _is_job(module), f"{path.name} imports {module}"
            if module == "protofast":
                assert "train" not in names, f"{path.name} imports protofast.train"


def test_importing_the_library_loads_no_job_module() -> None:
    code = (
        "import sys\n"
        "import protofast, protofast.loss, protofast.manager, protofast.metrics\n"
        "import protofast.targets\n"
        "for name in protofast.__all__:\n"
        "    getattr(protofast, name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['protofast', 'train']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_job_uses_only_public_library_names() -> None:
    job_dir = PACKAGE_DIR / "train"
    files = sorted(job_dir.rglob("*.py"))
    assert {"cli.py", "loop.py", "figures.py", "text.py", "hapt.py"} <= {f.name for f in files}
    for path in files:
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
        for module, names in _imports(path, package):
            if module.split(".")[0] != "protofast" or _is_job(module):
                continue
            private = [p for p in module.split(".") if p.startswith("_")]
            private += [n for n in names if n.startswith("_")]
            assert not private, f"{path.relative_to(job_dir)} imports {private} from {module}"


def test_module_entry_point_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "protofast.train", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage: protofast-train")
    assert "--max-steps" in proc.stdout


@pytest.mark.skipif(not PYPROJECT.is_file(), reason="needs the source tree")
def test_console_script_target_exists(capsys: pytest.CaptureFixture[str]) -> None:
    found = re.search(r'^protofast-train = "([^"]+)"$', PYPROJECT.read_text(), re.MULTILINE)
    assert found is not None
    target = found.group(1)
    module, _, attr = target.partition(":")
    main = getattr(importlib.import_module(module), attr)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: protofast-train")
