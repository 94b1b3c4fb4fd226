#!/usr/bin/env bash
# Undo what setup_slurm.sh recorded in the file $1: stop the daemons it started (newest first, by
# their pid files) and remove the config files it created.
[ -s "${1:-}" ] || exit 0
tac "$1" | while read -r kind path; do
  if [ "$kind" = pidfile ] && [ -s "$path" ] && kill -0 "$(cat "$path")" 2>/dev/null; then
    pid=$(cat "$path"); kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    echo "stopped $path"
  elif [ "$kind" = created ]; then
    rm -f "$path" && echo "removed $path"
  fi
done
