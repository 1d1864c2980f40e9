"""The import rules of DESIGN.md §4, checked on the source (STYLE.md 4).

Rules, as the design states them:
1. `hypervisor` never imports `domains`, `devices` or `launcher`.
2. `devices` and `domains` import from the hypervisor only `hypervisor.public`
   (the ABI, like xen/include/public) and its submodules.
3. Nothing imports `launcher` except `launcher` itself (the `xenolab` entry
   point lives there; tests may use it, they are not scanned).
One rule follows from rule 2:
4. `hypervisor.public`, and the `hypervisor` package's `__init__` that runs
   whenever it is imported, import nothing else of the hypervisor: otherwise a
   domain importing the ABI would load Xen's internals through it.

Every `import` and `from ... import` counts, wherever it is written (inside
functions, under `if TYPE_CHECKING:`), as does `importlib.import_module` or
`__import__` with a literal name. Relative imports are resolved against the
importing module first; one that climbs above its top-level package is an
error of its own (Python refuses it) and is still checked as if the
repository root were a package.
"""

import ast
import pathlib
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCANNED = ("hypervisor", "domains", "devices", "launcher")
PUBLIC = "hypervisor.public"

RULE_HYPERVISOR = "hypervisor never imports domains, devices or launcher"
RULE_PUBLIC_ONLY = "devices and domains import from the hypervisor only hypervisor.public"
RULE_LAUNCHER = "nothing imports launcher except launcher itself"
RULE_ABI = (
    "hypervisor.public (and hypervisor/__init__.py) import nothing else of the "
    "hypervisor, or domains would load its internals through the ABI"
)
RULE_RELATIVE = "a relative import may not climb above its top-level package"


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    target: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.target}: {self.rule}"


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def broken_rules(importer: str, target: str) -> list[str]:
    """The rules of this module that `importer` importing `target` breaks."""
    rules = []
    mine, theirs = _top(importer), _top(target)
    if mine == "hypervisor" and theirs in ("domains", "devices", "launcher"):
        rules.append(RULE_HYPERVISOR)
    if mine in ("domains", "devices") and theirs == "hypervisor" and not _within(target, PUBLIC):
        rules.append(RULE_PUBLIC_ONLY)
    if theirs == "launcher" and mine != "launcher":
        rules.append(RULE_LAUNCHER)
    abi = _within(importer, PUBLIC) or importer == "hypervisor"
    if abi and theirs == "hypervisor" and not _within(target, PUBLIC) and target != "hypervisor":
        rules.append(RULE_ABI)
    return rules


def module_name(relpath: str) -> tuple[str, bool]:
    """("a.b.c", is_package) for "a/b/c.py"; a package's __init__ is the package."""
    parts = list(pathlib.PurePosixPath(relpath).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve(module: str | None, level: int, importer: str, is_package: bool):
    """The absolute name of a `from` import's module, and whether it climbs too high."""
    if level == 0:
        return module or "", False
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    climbs = level - 1 >= len(package)
    base = package[: max(0, len(package) - (level - 1))]
    return ".".join(base + ([module] if module else [])), climbs


def _literal_import(node: ast.Call) -> str | None:
    """The module named by import_module("x") or __import__("x"), if literal."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return None if arg.value.startswith(".") else arg.value
    return None


def imports(tree: ast.AST, importer: str, is_package: bool):
    """(line, imported name, climbs too high) for every import in `tree`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, False
        elif isinstance(node, ast.ImportFrom):
            base, climbs = _resolve(node.module, node.level, importer, is_package)
            for alias in node.names:
                name = base if alias.name == "*" else f"{base}.{alias.name}".lstrip(".")
                yield node.lineno, name, climbs
        elif isinstance(node, ast.Call) and (name := _literal_import(node)):
            yield node.lineno, name, False


def check_source(source: str, relpath: str) -> list[Violation]:
    """Every rule broken by `source`, as if it were the file at `relpath`."""
    importer, is_package = module_name(relpath)
    tree = ast.parse(source, filename=relpath)
    found = []
    for line, target, climbs in imports(tree, importer, is_package):
        rules = ([RULE_RELATIVE] if climbs else []) + broken_rules(importer, target)
        found += [Violation(relpath, line, importer, target, rule) for rule in rules]
    return found


def scanned_files() -> list[pathlib.Path]:
    return sorted(p for top in SCANNED for p in (ROOT / top).rglob("*.py"))


def test_the_tree_obeys_the_import_rules():
    files = scanned_files()
    tops = {p.relative_to(ROOT).parts[0] for p in files}
    assert {"hypervisor", "domains", "launcher"} <= tops, f"scanned nothing under {ROOT}?"
    violations = []
    for path in files:
        relpath = path.relative_to(ROOT).as_posix()
        violations += check_source(path.read_text(encoding="utf-8"), relpath)
    assert not violations, "import rules of DESIGN.md §4 broken:\n" + "\n".join(
        str(v) for v in violations
    )


# ---- the checker itself -----------------------------------------------------------

BAD = [
    ("hypervisor/core.py", "import domains.kernel.boot", "domains.kernel.boot", RULE_HYPERVISOR),
    ("hypervisor/core.py", "from devices import disk", "devices.disk", RULE_HYPERVISOR),
    (
        "hypervisor/spawn.py",
        "def f():\n    from launcher.rundir import path\n",
        "launcher.rundir.path",
        RULE_HYPERVISOR,
    ),
    (
        "hypervisor/core.py",
        "import importlib\nimportlib.import_module('domains.dom0.kernel')",
        "domains.dom0.kernel",
        RULE_HYPERVISOR,
    ),
    (
        "domains/kernel/kernel.py",
        "from hypervisor.core import Hypervisor",
        "hypervisor.core.Hypervisor",
        RULE_PUBLIC_ONLY,
    ),
    (
        "domains/kernel/kernel.py",
        "from hypervisor import core",
        "hypervisor.core",
        RULE_PUBLIC_ONLY,
    ),
    ("domains/kernel/kernel.py", "import hypervisor", "hypervisor", RULE_PUBLIC_ONLY),
    ("domains/kernel/kernel.py", "from hypervisor import *", "hypervisor", RULE_PUBLIC_ONLY),
    (
        "domains/kernel/kernel.py",
        "import hypervisor.publicity",
        "hypervisor.publicity",
        RULE_PUBLIC_ONLY,
    ),
    (
        "devices/disk.py",
        "class D:\n    def m(self):\n        import hypervisor.grant_table\n",
        "hypervisor.grant_table",
        RULE_PUBLIC_ONLY,
    ),
    (
        "domains/dom0/kernel.py",
        "from launcher.hostspec import DomainSpec",
        "launcher.hostspec.DomainSpec",
        RULE_LAUNCHER,
    ),
    ("devices/__init__.py", "import launcher", "launcher", RULE_LAUNCHER),
    (
        "hypervisor/public/xen.py",
        "from hypervisor.domain import Domain",
        "hypervisor.domain.Domain",
        RULE_ABI,
    ),
    ("hypervisor/__init__.py", "from hypervisor import core", "hypervisor.core", RULE_ABI),
    # relative imports, resolved against the importing module
    ("hypervisor/public/xen.py", "from .. import core", "hypervisor.core", RULE_ABI),
    (
        "hypervisor/public/__init__.py",
        "from ..event_channel import EventChannels",
        "hypervisor.event_channel.EventChannels",
        RULE_ABI,
    ),
    ("hypervisor/core.py", "from .. import domains", "domains", RULE_HYPERVISOR),
    ("hypervisor/core.py", "from .. import domains", "domains", RULE_RELATIVE),
    (
        "domains/kernel/kernel.py",
        "from ...hypervisor import core",
        "hypervisor.core",
        RULE_PUBLIC_ONLY,
    ),
    (
        "domains/dom0/xenstored/__init__.py",
        "from ....launcher import cli",
        "launcher.cli",
        RULE_LAUNCHER,
    ),
]


@pytest.mark.parametrize(("relpath", "source", "target", "rule"), BAD)
def test_the_checker_catches_a_violation(relpath, source, target, rule):
    found = check_source(source, relpath)
    assert any(v.target == target and v.rule == rule for v in found), found
    v = next(v for v in found if v.rule == rule)
    assert str(v).startswith(f"{relpath}:{v.line}: ")
    assert "import" in source.splitlines()[v.line - 1]


GOOD = [
    ("domains/kernel/kernel.py", "from hypervisor.public.xen import PAGE_SIZE"),
    ("domains/kernel/kernel.py", "from hypervisor.public import envelope"),
    ("domains/kernel/kernel.py", "from hypervisor import public"),
    ("domains/kernel/kernel.py", "import hypervisor.public.ring as ring"),
    ("devices/disk.py", "from hypervisor.public.grant_table import GNTST"),
    ("domains/dom0/xenstored/__init__.py", "from .client import LocalClient"),
    ("domains/dom0/toolstack/ops.py", "from ..xenstored.perms import XsError"),
    ("domains/dom0/kernel.py", "from domains.kernel.kernel import Kernel"),
    ("hypervisor/core.py", "from hypervisor import hypercalls, spawn"),
    ("hypervisor/core.py", "from .public import envelope"),
    ("hypervisor/public/xs_wire.py", "from . import xen\nfrom .ring import ring_size"),
    ("launcher/cli.py", "from launcher import commands\nfrom . import host"),
    ("launcher/host.py", "from hypervisor.public.endpoints import xen_endpoint"),
    ("launcher/bench.py", "from domains.xenolinux.evtchn_bench import WARMUP"),
    ("domains/kernel/boot.py", "import importlib\nimportlib.import_module(name)"),
]


@pytest.mark.parametrize(("relpath", "source"), GOOD)
def test_the_checker_allows_what_the_rules_allow(relpath, source):
    assert check_source(source, relpath) == []


def test_violation_message_names_file_line_and_rule():
    (v,) = check_source('"""doc"""\n\nimport os\nfrom domains import x\n', "hypervisor/a.py")
    assert str(v) == f"hypervisor/a.py:4: hypervisor.a imports domains.x: {RULE_HYPERVISOR}"
