#!/usr/bin/env bash
# Fails when a module of src/ imports from a higher layer, when a module is
# in no layer, when the modules' imports form a circle, or when
# src/allocator/ imports a module outside its `allocator-imports` list.
#
# The layer table is the `layers` block in ARCHITECTURE.md (one place): each
# line is `<rank> <name>: <module> <module> ...`; a module may use modules of
# its own rank or lower ranks. A module is a top-level file or folder of
# src/; its imports are the `crate::<module>` paths and groups outside
# comments and strings (see used_modules).
set -euo pipefail
cd "$(dirname "$0")/.."

table=$(awk '/^```layers$/ {inside = 1; next} /^```$/ {inside = 0} inside' ARCHITECTURE.md)
if [ -z "$table" ]; then
  echo "check-layers: no \`\`\`layers block in ARCHITECTURE.md" >&2
  exit 1
fi
# The allocator stands on its own feet: the `allocator-imports` block lists
# the only modules src/allocator/ may use (no agent module: api, supervisor,
# credentials, registry, self_check, metrics, ...).
allocator_imports=" $(awk '/^```allocator-imports$/ {inside = 1; next} /^```$/ {inside = 0} inside' ARCHITECTURE.md | tr '\n' ' ') "
if [ "$allocator_imports" = "  " ]; then
  echo "check-layers: no \`\`\`allocator-imports block in ARCHITECTURE.md" >&2
  exit 1
fi
declare -A rank
while read -r number name modules; do
  for module in $modules; do
    rank[$module]=$number
  done
done <<<"$(sed 's/:/ /' <<<"$table")"

# The top-level modules a file names through `crate::`: plain paths
# (`crate::a::B`, in a `use` or inline in a type or call) and groups
# (`use crate::{a, b::{c, d}}`, over several lines too). Comments and
# string literals are skipped. perl is part of every Debian base system.
used_modules() {
  perl -0777 -ne '
    # Comments, raw strings, strings and char literals, left to right,
    # so a quote in a comment or a // in a string hides nothing.
    s{(/\*.*?\*/|//[^\n]*|\bb?r(\#*)".*?"\2|b?"(?:[^"\\]|\\.)*"|b?\x27(?:[^\x27\\]|\\.)\x27)}{ }gs;
    my %seen;
    while (/\bcrate::(\{|[a-z_][a-z0-9_]*)/g) {
      if ($1 ne "{") { $seen{$1} = 1; next }
      # A group: take the first path segment of each top-level item.
      my ($depth, $item, $start) = (1, "", pos());
      my $rest = substr($_, $start);
      for my $char (split //, $rest) {
        if ($char eq "{") { $depth++ }
        elsif ($char eq "}") { $depth--; last if $depth == 0 }
        elsif ($char eq "," && $depth == 1) {
          $seen{$1} = 1 if $item =~ /^\s*([a-z_][a-z0-9_]*)/; $item = ""; next
        }
        $item .= $char if $depth == 1;
      }
      $seen{$1} = 1 if $item =~ /^\s*([a-z_][a-z0-9_]*)/;
    }
    print "$_\n" for sort keys %seen;
  ' "$1"
}

failed=0
edges=$(mktemp)
trap 'rm -f "$edges"' EXIT
for file in $(find src -name '*.rs' | sort); do
  module=${file#src/}
  module=${module%%/*}
  module=${module%.rs}
  if [ -z "${rank[$module]:-}" ]; then
    echo "check-layers: $file: module \`$module\` is in no layer of ARCHITECTURE.md" >&2
    failed=1
    continue
  fi
  for used in $(used_modules "$file"); do
    [ "$used" = "$module" ] && continue
    if [ -z "${rank[$used]:-}" ]; then
      echo "check-layers: $file uses \`$used\`, which is in no layer" >&2
      failed=1
    elif [ "${rank[$used]}" -gt "${rank[$module]}" ]; then
      echo "check-layers: $file (layer ${rank[$module]}) imports \`$used\` from the higher layer ${rank[$used]}" >&2
      failed=1
    fi
    if [ "$module" = allocator ] && [[ "$allocator_imports" != *" $used "* ]]; then
      echo "check-layers: $file imports \`$used\`, which is not in ARCHITECTURE.md's allocator-imports" >&2
      failed=1
    fi
    echo "$module $used" >>"$edges"
  done
done

# tsort names a circle on stderr.
if ! tsort "$edges" >/dev/null 2>"$edges.err"; then
  echo "check-layers: the imports form a circle:" >&2
  cat "$edges.err" >&2
  failed=1
fi
rm -f "$edges.err"
if [ "$failed" -ne 0 ]; then
  exit 1
fi
echo "check-layers: ok (${#rank[@]} modules, no upward import, no circle)"
