#!/usr/bin/env bash
# One-command, idempotent set-up for autoglm-trace on Debian/Ubuntu (called by `make setup`,
# and so by `make test` and `make demo`):
#   1. apt packages: bcc (python3-bpfcc, bpfcc-tools, libbpfcc), python3-venv
#   2. kernel headers for bcc (scripts/kernel-headers.sh): the running kernel's own when present, else
#      the nearest Debian headers unpacked into /var/cache/autoglm-trace/kernel-headers (no package
#      is installed, nothing is written under /lib/modules or /boot).
#   3. tracefs / debugfs mounted (bcc attaches tracepoints through them)
#   4. a venv in .venv built from the system python3 with --system-site-packages (sees bcc)
#      and the package installed into it (editable) with its test extras.
# Each step is skipped when already done; without root, steps 1-3 are reported and skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SYS_PY=/usr/bin/python3
say() { printf '[setup] %s\n' "$*" >&2; }
is_root() { [ "$(id -u)" = 0 ]; }
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! is_root; then say "not root: cannot install ${missing[*]} (run 'sudo make setup')"; return 0; fi
  if [ $apt_updated = 0 ]; then apt-get update -qq >&2 || say "apt-get update failed; trying with the current lists"; apt_updated=1; fi
  say "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

if command -v apt-get >/dev/null 2>&1; then
  apt_install python3-venv python3-bpfcc bpfcc-tools libbpfcc
else
  say "no apt-get: install bcc (python3-bpfcc) with your distribution's package manager"
fi

# Kernel headers ------------------------------------------------------------------------------
# Never installs a headers package (Debian's depends on linux-image-*: a kernel in /boot, systemd
# upgraded): the nearest headers are downloaded and unpacked into a private cache instead.
bash scripts/kernel-headers.sh || say "kernel headers could not be prepared; bcc will not compile programs"

# tracefs / debugfs -----------------------------------------------------------------------------
if is_root; then
  if [ ! -e /sys/kernel/tracing/available_events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null && say "mounted tracefs" || say "could not mount tracefs"
  fi
  if [ ! -e /sys/kernel/debug/tracing ] && [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null && say "mounted debugfs" || true
  fi
fi

# venv ------------------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV from $SYS_PY (with system site-packages, for bcc)"
  "$SYS_PY" -m venv --system-site-packages "$VENV"
fi
# The spark extra (pyspark, for the fleet-SQL portability test) only where a Java runtime exists:
# pyspark is large and useless without one. Installing Java is left to the machine (Debian: openjdk-17-jre-headless).
extras=test
if command -v java >/dev/null 2>&1; then extras=test,spark; else say "no java: skipping the spark extra (the Spark SQL test will skip)"; fi
stamp="$VENV/.installed-$( (cat pyproject.toml; echo "$extras") | md5sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  say "installing autoglm-trace[$extras] into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e ".[$extras]" >&2
  rm -f "$VENV"/.installed-* && touch "$stamp"
  # Drop the just-written shared objects from the page cache. Linux 6.x caches a freshly written
  # file in large folios and maps a whole folio on a fault (mm/filemap.c filemap_map_pages), so a
  # recorder started right after install maps ~30 MB more of libarrow and numpy than one started
  # later (measured: 126 vs 93 MB peak RSS for `record -- /bin/true`). Read back on demand, they
  # come in the small folios of mmap readahead. Only the venv's own files are touched.
  "$VENV/bin/python" - "$VENV" <<'PY' >&2 || true
import os, sys
n = 0
for root, _dirs, files in os.walk(sys.argv[1]):
    for name in files:
        if ".so" not in name:
            continue
        try:
            fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        except OSError:
            pass
        finally:
            os.close(fd)
print(f"[setup] dropped {n} freshly installed shared objects from the page cache")
PY
fi
"$VENV/bin/python" - <<'PY' >&2 || true
try:
    import bcc  # noqa: F401
    print("[setup] bcc importable from the venv")
except Exception as e:  # noqa: BLE001
    print(f"[setup] bcc NOT importable ({e}); kernel probes will be skipped")
PY
