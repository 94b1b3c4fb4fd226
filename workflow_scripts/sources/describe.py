"""Where a task's data comes from, in words, for messages that name the config keys to fix."""
from __future__ import annotations

from pathlib import Path


def describe_source(task: str, cfg: dict, source_file: str | Path | None = None) -> str:
    """The task's data file and the config keys that name it, for messages."""
    source = cfg.get("source")
    if source == "registry":
        where = f"tasks.{task}.member {cfg.get('member')!r} of tasks.{task}.package {cfg.get('package')!r}"
    elif source == "hub":
        where = f"tasks.{task}.path {cfg.get('path')!r} (name {cfg.get('name')!r}, split {cfg.get('split', 'train')!r})"
    elif "path" in cfg:
        return f"tasks.{task}.path {str(cfg['path'])!r}"
    else:
        return f"task {task!r}"
    return f"{source_file} ({where})" if source_file else where
