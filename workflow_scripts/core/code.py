"""What a rule's job runs, and when its code counts as changed.

Each rule names its stage as "package.module:function" (rules/*.smk: `script: stage(...)`). Snakemake
re-runs a script rule whose script is newer than its outputs (its code trigger), but it reads only
that one file, so an edit to a module the stage imports would leave stale results in silence. The
script a rule runs is therefore a small generated file per stage, under the study's .snakemake/,
whose first line holds the fingerprint of the stage module and of every project module it imports.
It is rewritten, and so made newer than the results, exactly when that fingerprint changes.

The fingerprint reads the code, not its text: comments, docstrings and layout do not count.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import os
from pathlib import Path

PACKAGE = "workflow_scripts"
ROOT = Path(__file__).resolve().parents[1]
ENTRIES = Path(".snakemake") / "icl_stages"
FINGERPRINT = "# code fingerprint: "


def module_file(module: str) -> Path:
    """The file of a dotted project module ("workflow_scripts.core.paths" or "core.paths")."""
    parts = module.split(".")
    parts = parts[1:] if parts[0] == PACKAGE else parts
    path = ROOT.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


# Every rule asks at parse time, and stages share most modules: each file is read once per process.
@functools.lru_cache(maxsize=None)
def project_imports(path: Path) -> frozenset[str]:
    """The project modules a file imports, anywhere in it, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE + ".")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith(PACKAGE):
            # `from workflow_scripts.core import paths` imports a module; `from workflow_scripts.core.paths import x` a name
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if module_file(candidate).is_file() else node.module)
    return frozenset(name for name in found if module_file(name).is_file() and name.count(".") >= 2)


def closure(module: str) -> list[str]:
    """The stage module and every project module it imports, directly or not, sorted."""
    seen, todo = set(), [module if module.startswith(PACKAGE) else f"{PACKAGE}.{module}"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(project_imports(module_file(name)) - seen)
    return sorted(seen)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=None)
def code_digest(path: Path) -> str:
    """A file's code: its syntax tree without docstrings (comments and layout are not in it)."""
    return hashlib.sha256(ast.dump(_without_docstrings(ast.parse(path.read_text()))).encode()).hexdigest()


def fingerprint(module: str) -> str:
    digest = hashlib.sha256()
    for name in closure(module):
        digest.update(f"{name}\0{code_digest(module_file(name))}\0".encode())
    return digest.hexdigest()[:16]


def split_spec(spec: str) -> tuple[str, str]:
    module, sep, function = spec.partition(":")
    if not sep or not function.isidentifier() or not module_file(module).is_file():
        raise ValueError(f"stage {spec!r}: expected 'package.module:function' naming a module of {ROOT}")
    return f"{PACKAGE}.{module}", function


def entry_text(spec: str, digest: str) -> str:
    module, function = split_spec(spec)
    return (
        f"{FINGERPRINT}{digest}\n"
        f"# The script Snakemake runs for stage {spec} (written by rules/common.smk, workflow_scripts/core/code.py).\n"
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT.parent)!r})\n"
        "from workflow_scripts.core.job import run\n"
        f"run(snakemake, {module!r}, {function!r})  # noqa: F821  (injected by Snakemake)\n"
    )


def recorded_fingerprint(path: Path) -> str | None:
    try:
        first = path.read_text().split("\n", 1)[0]
    except OSError:
        return None
    return first[len(FINGERPRINT):] if first.startswith(FINGERPRINT) else None


def entry_script(spec: str, folder: str | Path = ENTRIES) -> str:
    """The script for `spec`, written or refreshed now. Its modification time is when the stage's
    code last changed, as far as this study has seen: a first record is dated 1970, so results made
    before the study kept records are trusted, not re-run."""
    folder = Path(folder).resolve()
    path = folder / (spec.replace(":", ".") + ".py")
    digest = fingerprint(split_spec(spec)[0])
    text = entry_text(spec, digest)
    before = recorded_fingerprint(path)
    if before == digest and path.read_text() == text:
        return str(path)
    folder.mkdir(parents=True, exist_ok=True)
    old_mtime = path.stat().st_mtime if before == digest else 0.0 if before is None else None
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # jobs may read this file while another process parses the workflow
    if old_mtime is not None:  # same code, another checkout path: keep the date of the code
        os.utime(path, (old_mtime, old_mtime))
    return str(path)
