# Sourced by the experiment scripts: logged LOG COMMAND... runs COMMAND into LOG;
# on failure it shows the log's end, named by the calling script, and exits 1.
logged() {  # log-file command...
  local log=$1
  shift
  "$@" > "$log" 2>&1 || { echo "$(basename "$0"): failed: $* (last lines of $log):" >&2; tail -20 "$log" >&2; exit 1; }
}
