#!/usr/bin/env bash
# The compiler's on-disk caches (TORCHINDUCTOR_CACHE_DIR: inductor's FX graphs, AOTAutograd entries, Triton
# kernels) packed for the next GPU call and unpacked from the last one, so that a path compiled in an earlier
# call compiles in seconds. Inductor keys its entries by card, torch version and graph: a cache from another
# card or torch is a miss and costs nothing.
#   bash benchmarks/inductor_cache.sh save CACHE_DIR PREFIX      # PREFIX.00, PREFIX.01, ... (parts of PART_SIZE)
#   bash benchmarks/inductor_cache.sh restore CACHE_DIR PREFIX   # unpacks PREFIX.NN (in order) into CACHE_DIR
# Parts are 15 MiB by default (PART_SIZE, split's units): a call brings back files of 16 MiB at most. A packed
# cache above MAX_MB (default 40) is not saved: a call carries 64 MiB with the tree and the wheels, and its
# parts would take the places of the call's results among the 8 files a call brings back (on 2026-12-07 the
# lever benchmark's cache packed to 94 MiB after two paths and 141 MiB after five, and a call's levers.json was
# left out for it).
# Each prints one line saying what it did; restore without parts is not an error (a cold compilation), and
# parts that do not unpack whole (one left behind) change nothing in CACHE_DIR.
set -uo pipefail
action=${1:-}; dir=${2:-}; prefix=${3:-}
if [ -z "$dir" ] || [ -z "$prefix" ] || { [ "$action" != save ] && [ "$action" != restore ]; }; then
  echo "usage: inductor_cache.sh save|restore CACHE_DIR PREFIX" >&2; exit 2
fi
count() { find "$dir" -type f | wc -l; }
if [ "$action" = restore ]; then
  mkdir -p "$dir"
  shopt -s nullglob
  parts=("$prefix".[0-9][0-9])  # split's two-digit suffixes: the glob's order is the parts' order
  shopt -u nullglob
  if [ "${#parts[@]}" -eq 0 ]; then
    echo "inductor cache: none at $prefix.NN; compiling cold"; exit 0
  fi
  unpacked=$(mktemp -d)  # all or nothing: a truncated entry in the cache could break a compilation
  if cat "${parts[@]}" | tar -xzf - -C "$unpacked" && cp -a "$unpacked"/. "$dir"/; then
    echo "inductor cache: unpacked ${#parts[@]} part(s) of $prefix; $dir holds $(count) files"
  else
    echo "inductor cache: the ${#parts[@]} part(s) of $prefix did not unpack whole; compiling cold"
  fi
  rm -rf "$unpacked"
  exit 0
fi
[ -d "$dir" ] || { echo "inductor cache: $dir does not exist; nothing saved"; exit 0; }
rm -f "$prefix".[0-9][0-9]
packed=$(mktemp)
if ! tar -czf "$packed" -C "$dir" .; then
  rm -f "$packed"; echo "inductor cache: packing $dir failed; nothing saved"; exit 1
fi
size=$(stat -c %s "$packed"); max_mb=${MAX_MB:-40}
if [ "$size" -gt $((max_mb * 1048576)) ]; then
  rm -f "$packed"
  echo "inductor cache: $(count) files, $((size / 1048576)) MiB packed, above MAX_MB=$max_mb (a call carries 64 MiB" \
    "with the tree); not saved"
  exit 0
fi
if ! split -b "${PART_SIZE:-15M}" -d -a 2 "$packed" "$prefix."; then
  rm -f "$packed" "$prefix".[0-9][0-9]; echo "inductor cache: splitting failed; nothing saved"; exit 1
fi
echo "inductor cache: saved $(count) files, $(du -h "$packed" | cut -f1) packed, in" \
  "$(ls -1 "$prefix".[0-9][0-9] | wc -l) part(s) of $prefix"
rm -f "$packed"
