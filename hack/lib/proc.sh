# shellcheck shell=bash
# Background processes with pid files (sourced by hack/cluster.sh).
# A pid file holds the pid on line 1 and the process's argv[0] on line 2, so a pid reused by an
# unrelated process after a crash or reboot is never mistaken for ours.
# Expects RUN_DIR (pid files) to be set by the caller.

# proc_argv0 PID: the process's argv[0], empty when it is gone.
proc_argv0() {
  local -a argv
  mapfile -d '' -t -n 1 argv 2>/dev/null <"/proc/$1/cmdline" || return 0
  echo "${argv[0]:-}"
}

# proc_pid NAME: prints the live pid of NAME from its pid file; fails (and removes a stale pid
# file) when it is not running.
proc_pid() {
  local file=$RUN_DIR/$1.pid pid argv0
  [[ -s $file ]] || return 1
  { read -r pid; read -r argv0; } <"$file"
  if [[ -n $pid && -d /proc/$pid && $(proc_argv0 "$pid") == "$argv0" ]] \
    && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
    echo "$pid"
    return 0
  fi
  rm -f "$file"
  return 1
}

# proc_find PATTERN...: pids of processes whose command line (arguments joined by spaces, with a
# trailing space) contains every PATTERN as a fixed string, excluding this shell and its children.
proc_find() {
  local p f ok pat cmd
  local -a argv
  # Builtins only (no fork per process): this scans every process on the machine.
  for f in /proc/[0-9]*/cmdline; do
    p=${f#/proc/}
    p=${p%/cmdline}
    [[ $p == "$$" || $p == "$BASHPID" ]] && continue
    mapfile -d '' -t argv 2>/dev/null <"$f" || continue
    ((${#argv[@]})) || continue
    cmd="${argv[*]} "
    ok=1
    for pat in "$@"; do
      [[ $cmd == *"$pat"* ]] || { ok=0; break; }
    done
    [[ $ok == 1 ]] && echo "$p"
  done
  return 0
}

# proc_adopt NAME PID: records an already running process as NAME (its pid file was lost).
proc_adopt() {
  printf '%s\n%s\n' "$2" "$(proc_argv0 "$2")" >"$RUN_DIR/$1.pid"
}

# proc_start NAME LOG CMD...: starts CMD in its own session (so a terminal's Ctrl-C or the end of
# the calling shell does not reach it), output appended to LOG, and writes the pid file.
proc_start() {
  local name=$1 log=$2
  shift 2
  mkdir -p "$(dirname "$log")" "$RUN_DIR"
  # Keep one previous generation of a log that grew large, so logs cannot fill the disk.
  if [[ -f $log && $(stat -c %s "$log") -gt 104857600 ]]; then mv -f "$log" "$log.1"; fi
  printf '==== %s starting %s: %s\n' "$(date -u +%FT%TZ)" "$name" "$*" >>"$log"
  # A non-interactive shell's background child is not a process-group leader, so setsid execs
  # in place and $! is the component's own pid.
  # Every descriptor above 2 closed: the daemon must not inherit a lock, neither ours (fd 9)
  # nor one its caller took with flock(1), or it would hold it for its lifetime.
  local fd closes=""
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if ((fd > 2)); then closes+=" $fd>&-"; fi
  done
  eval "setsid \"\$@\" >>\"\$log\" 2>&1 </dev/null $closes &"
  local pid=$! i
  # Until setsid has exec'd the command, /proc/PID/cmdline still shows this shell: wait for it,
  # so the pid file's argv[0] check holds from the start.
  for ((i = 0; i < 50; i++)); do
    [[ -d /proc/$pid && $(proc_argv0 "$pid") != "$1" ]] || break
    sleep 0.02
  done
  printf '%s\n%s\n' "$pid" "$1" >"$RUN_DIR/$name.pid"
}

# proc_wait_gone PID SECONDS: waits for PID to exit; fails on timeout.
proc_wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while [[ -d /proc/$pid ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# proc_terminate PID SECONDS: SIGTERM, then SIGKILL after SECONDS.
proc_terminate() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  kill -CONT "$pid" 2>/dev/null || true  # a stopped process handles SIGTERM only once resumed
  if ! proc_wait_gone "$pid" "$2"; then
    echo "[cluster] pid $pid ignored SIGTERM for $2 s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    proc_wait_gone "$pid" 5 || true
  fi
}

# proc_stop NAME SECONDS: stops NAME if its pid file names a live process.
proc_stop() {
  local pid
  if pid=$(proc_pid "$1"); then
    proc_terminate "$pid" "$2"
  fi
  rm -f "$RUN_DIR/$1.pid"
}
