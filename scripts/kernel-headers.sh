#!/usr/bin/env bash
# Kernel headers for bcc without installing a package (called by scripts/setup.sh).
#
# bcc compiles its programs against kernel headers. When the running kernel has its own
# (/lib/modules/$(uname -r)/build) or ships them in-kernel (/sys/kernel/kheaders.tar.xz), nothing is
# done. Otherwise the nearest Debian headers are *downloaded* (apt-get download: the headers, their
# -common and the kbuild package -- never linux-image-*, never a dependency), unpacked with dpkg -x
# into a private cache and merged into one tree that bcc is pointed at with BCC_KERNEL_SOURCE
# (autoglm_trace.probes.headers finds it at run time). Nothing is written under /lib/modules or /boot
# and dpkg's database is not touched: `dpkg -l` is the same before and after.
#
# Tracepoint programs read their argument layout from tracefs and task_struct offsets come from BTF,
# so headers of a nearby version are enough.
set -euo pipefail
CACHE=${AUTOGLM_TRACE_HEADERS_CACHE:-/var/cache/autoglm-trace/kernel-headers}
KREL=$(uname -r)
say() { printf '[setup] %s\n' "$*" >&2; }

if [ -e "/lib/modules/$KREL/build/include" ]; then say "kernel headers: /lib/modules/$KREL/build"; exit 0; fi
if [ -e /sys/kernel/kheaders.tar.xz ]; then say "kernel headers: in-kernel (/sys/kernel/kheaders.tar.xz)"; exit 0; fi
if [ -n "${BCC_KERNEL_SOURCE:-}" ] && [ -e "$BCC_KERNEL_SOURCE/include" ]; then
  say "kernel headers: BCC_KERNEL_SOURCE=$BCC_KERNEL_SOURCE"; exit 0
fi
for t in "$CACHE"/*/tree; do
  if [ -e "$t/include/linux/kconfig.h" ] && [ -e "$t/.complete" ]; then say "kernel headers: $t (cached)"; exit 0; fi
done
if [ "$(id -u)" != 0 ]; then say "kernel headers missing for $KREL and not root: run 'sudo make setup'"; exit 0; fi
command -v apt-get >/dev/null || { say "no kernel headers for $KREL and no apt-get: bcc will not compile programs"; exit 0; }

arch=$(dpkg --print-architecture)
apt-get update -qq >&2 || say "apt-get update failed; trying with the current lists"
# The running kernel's own package when the archive has it, else the highest generic version
# (a custom or cloud kernel): the nearest to a newer kernel.
if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
  pkg="linux-headers-$KREL"
else
  pkg=$(apt-cache search --names-only "^linux-headers-[0-9].*-${arch}\$" | awk '{print $1}' \
        | grep -vE -- '-(cloud|rt)-' | sort -V | tail -n 1 || true)
fi
[ -n "$pkg" ] || { say "no linux-headers package in apt; bcc will not compile programs"; exit 0; }
flavour=${pkg#linux-headers-}          # e.g. 6.12.117+deb12-amd64
# The flavour package's direct Depends name the -common and kbuild packages it needs.
deps=$(apt-cache show "$pkg" | sed -n 's/^Depends: //p' | head -n 1 | tr ',' '\n' \
       | sed 's/^ *//; s/ .*//' | grep -E '^linux-(headers-.*-common.*|kbuild-.*)$' || true)
dest="$CACHE/$flavour"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/autoglm-headers.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's download sandbox user must be able to write here
say "downloading $pkg $deps (apt-get download: nothing is installed)"
(cd "$tmp" && apt-get download -qq "$pkg" $deps >&2 2>/dev/null) \
  || (cd "$tmp" && apt-get download "$pkg" $deps >&2)
mkdir -p "$tmp/root"
for f in "$tmp"/*.deb; do dpkg -x "$f" "$tmp/root"; done
src="$tmp/root/usr/src"
common=$(ls -d "$src"/linux-headers-*-common* 2>/dev/null | head -n 1)
flav="$src/linux-headers-$flavour"
[ -d "$flav" ] || { say "unpacked headers lack $flav"; exit 1; }
# One tree: the -common sources with the flavour's generated headers and config on top (bcc takes
# one directory in BCC_KERNEL_SOURCE; Debian splits them in two).
rm -rf "$tmp/tree"
if [ -n "$common" ]; then cp -a "$common" "$tmp/tree"; else mkdir -p "$tmp/tree"; fi
for e in .config Module.symvers arch include; do [ -e "$flav/$e" ] && cp -a "$flav/$e" "$tmp/tree/"; done
# The tree's scripts/tools links point into the kbuild package; keep that beside the tree.
mkdir -p "$dest"
rm -rf "$dest/tree" "$dest/lib"
[ -d "$tmp/root/usr/lib" ] && cp -a "$tmp/root/usr/lib" "$dest/lib"
for l in scripts tools; do
  if [ -L "$tmp/tree/$l" ]; then
    tgt=$(basename "$(dirname "$(readlink "$tmp/tree/$l")")")
    rm "$tmp/tree/$l"; ln -s "../lib/$tgt/$l" "$tmp/tree/$l"
  fi
done
mv "$tmp/tree" "$dest/tree"
{ echo "for kernel $KREL"; for f in "$tmp"/*.deb; do basename "$f"; done; } > "$dest/packages.txt"
touch "$dest/tree/.complete"
chmod -R go-w "$dest"
say "kernel headers: $dest/tree (nearest headers for $KREL; BCC_KERNEL_SOURCE is set at run time)"
