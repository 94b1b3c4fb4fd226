#!/usr/bin/env bash
# Stop the daemons whose pid files are listed in $1 (written by setup_slurm.sh), newest first.
[ -s "${1:-}" ] || exit 0
tac "$1" | while read -r pidfile; do
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid=$(cat "$pidfile"); kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    echo "stopped $pidfile"
  fi
done
