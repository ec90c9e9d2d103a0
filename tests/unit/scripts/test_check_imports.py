"""scripts/check_imports.py: the layering holds in this tree, and each kind of violation is caught
in a tree built for it (pure Python: the files are parsed, never imported)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "check_imports.py"
_spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
assert _spec is not None and _spec.loader is not None
check_imports = importlib.util.module_from_spec(_spec)
sys.modules["check_imports"] = check_imports  # dataclasses look their module up there
_spec.loader.exec_module(check_imports)

# A minimal tree that obeys every rule; each case below adds one file to it.
CLEAN = {
    "dataplane/__init__.py": "",
    "dataplane/abi.py": "",
    "control/__init__.py": "",
    "control/errors.py": "",
    "control/policy/__init__.py": "",
    "control/policy/models.py": "from control.errors import InvalidArgument\nfrom dataplane import abi\n",
    "control/apply/__init__.py": "",
    "control/apply/controller.py": "from control.policy import models\n",
    "control/rpc/__init__.py": "",
    "control/rpc/service.py": "from control.apply import controller\nfrom ..observe import fanout\n",
    "control/observe/__init__.py": "",
    "control/observe/fanout.py": "from control.rpc.api import pb2\n",
    "control/rpc/api.py": "",
    "control/daemon.py": "from control.rpc import service\n",
    "control/daemon_config.py": "",
    "control/cli/__init__.py": "",
    "control/cli/main.py": "def serve():\n    from control import daemon\n",
    "testbed/__init__.py": "",
    "testbed/daemon.py": "import control.rpc.api\nimport dataplane.abi\n",
    "tests/__init__.py": "",
    "tests/test_x.py": "from testbed import daemon\nfrom control.cli import main\n",
}


def tree(root: Path, extra: dict[str, str]) -> Path:
    for name, text in {**CLEAN, **extra}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def problems(root: Path) -> list[str]:
    return check_imports.check(root, known_cycles=[])


def test_this_tree_keeps_its_layers() -> None:
    assert check_imports.check(REPO) == []


def test_the_clean_tree_passes(tmp_path: Path) -> None:
    assert problems(tree(tmp_path, {})) == []


VIOLATIONS = [
    ("dataplane imports control", {"dataplane/maps.py": "from control.policy import models\n"},
     "dataplane/maps.py:1: dataplane.maps imports control.policy.models: dataplane may not import control"),
    ("control imports testbed", {"control/apply/state.py": "import testbed.daemon\n"},
     "control.apply.state imports testbed.daemon: control may not import testbed"),
    ("testbed imports tests", {"testbed/soak.py": "from tests import test_x\n"},
     "testbed.soak imports tests.test_x: testbed may not import tests"),
    ("policy imports apply, lazily",
     {"control/policy/edits.py": "def f():\n    from control.apply import controller\n"},
     "control/policy/edits.py:2: control.policy.edits imports control.apply.controller: "
     "policy may not import apply"),
    ("observe imports cli", {"control/observe/export.py": "from control.cli.main import serve\n"},
     "observe may not import cli"),
    ("errors imports policy (relative)", {"control/errors.py": "from .policy import Policy\n"},
     "control.errors imports control.policy: errors may not import policy"),
    ("apply imports the daemon", {"control/apply/reconcile.py": "from control import daemon\n"},
     "apply may not import daemon"),
    ("a package nobody placed", {"control/sync/__init__.py": "", "control/sync/etcd.py": ""},
     "control/sync: control.sync is in none of control's layers"),
    ("a namespace package nobody placed", {"control/sync/etcd.py": ""},
     "control/sync: control.sync is in none of control's layers"),
    ("a cycle through a lazy import",
     {"control/policy/a.py": "from control.policy import b\n",
      "control/policy/b.py": "def f():\n    from control.policy import a\n"},
     "import cycle between control.policy.a, control.policy.b"),
    ("a cycle across packages of one layer",
     {"control/observe/fanout.py": "from control.rpc import service\n"},
     "import cycle between control.observe.fanout, control.rpc.service"),
]


@pytest.mark.parametrize(("extra", "expected"), [(e, x) for _, e, x in VIOLATIONS],
                         ids=[d for d, _, _ in VIOLATIONS])
def test_a_violation_is_reported(tmp_path: Path, extra: dict[str, str], expected: str) -> None:
    found = problems(tree(tmp_path, extra))
    assert len(found) == 1 and expected in found[0], found


def test_a_known_cycle_is_tolerated_until_it_is_gone(tmp_path: Path) -> None:
    root = tree(tmp_path, {"dataplane/m.py": "from dataplane import n\n",
                           "dataplane/n.py": "def f():\n    from dataplane import m\n"})
    cycle = frozenset({"dataplane.m", "dataplane.n"})
    assert check_imports.check(root, known_cycles=[cycle]) == []
    (root / "dataplane/n.py").write_text("")
    [stale] = check_imports.check(root, known_cycles=[cycle])
    assert "no longer form a cycle: delete the entry" in stale


def test_the_command_exits_1_naming_the_file(tmp_path: Path) -> None:
    root = tree(tmp_path, {"dataplane/maps.py": "from control.policy import models\n"})
    done = subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 1 and "dataplane/maps.py:1:" in done.stderr
    clean = subprocess.run([sys.executable, str(SCRIPT), str(REPO)], capture_output=True, text=True,
                           check=False)
    assert (clean.returncode, clean.stderr) == (0, "")
