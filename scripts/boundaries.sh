#!/usr/bin/env bash
# Import-boundary check, generated from the layout table of docs/ARCHITECTURE.md: every package
# must fall under a row (its folder, or the nearest parent folder with a row), and its
# non-test imports of kvgate packages must be its own row's or listed in the row's last
# column (kvgate packages in backticks; a listed folder covers its sub-folders; "everything"
# lifts the check). A package without a row fails too, so a new package needs a row first.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=github.com/kvgate/kvgate
doc=docs/ARCHITECTURE.md

# rows: "folder<TAB>allowed allowed ..." from the table lines "| `folder` | ... | deps |".
rows=$(awk -F'|' '
  /^## Layout/ { in_table = 1; next }
  /^## / { in_table = 0 }
  in_table && /^\| `/ {
    folder = $2; gsub(/[` ]/, "", folder)
    deps = $(NF-1)
    allowed = ""
    if (deps ~ /everything/) allowed = "*"
    while (match(deps, /`[^`]+`/)) {
      allowed = allowed " " substr(deps, RSTART + 1, RLENGTH - 2)
      deps = substr(deps, RSTART + RLENGTH)
    }
    printf "%s\t%s\n", folder, allowed
  }' "$doc")
if [ -z "$rows" ]; then
  echo "boundary: no layout table found in $doc"; exit 1
fi

# row_of PKG: the folder of the row that owns PKG (the longest row folder that is PKG or a
# parent of it), or nothing.
row_of() {
  local pkg=$1 best="" f
  while IFS=$'\t' read -r f _; do
    if [[ $pkg == "$f" || $pkg == "$f"/* ]] && (( ${#f} > ${#best} )); then best=$f; fi
  done <<<"$rows"
  echo "$best"
}

allowed_of() { awk -F'\t' -v f="$1" '$1 == f { print $2 }' <<<"$rows"; }

fail=0
while read -r pkg imports; do
  pkg=${pkg#"$mod"/}
  row=$(row_of "$pkg")
  if [ -z "$row" ]; then
    echo "boundary: package $pkg has no row in $doc's layout table"; fail=1; continue
  fi
  allowed=$(allowed_of "$row")
  [ "$allowed" = "*" ] && continue
  for imp in $imports; do
    [[ $imp == "$mod"/* ]] || continue
    imp=${imp#"$mod"/}
    [ "$(row_of "$imp")" = "$row" ] && continue
    ok=0
    for a in $allowed; do
      if [[ $imp == "$a" || $imp == "$a"/* ]]; then ok=1; break; fi
    done
    if [ $ok = 0 ]; then
      echo "boundary: $pkg imports $imp, which its row ($row) in $doc does not list"; fail=1
    fi
  done
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)
exit $fail
