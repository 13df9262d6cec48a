#!/usr/bin/env bash
# Checks that the documentation names only things that exist:
# - every repository path a document names (`services/…`, `crates/…`, `proto/…`, `docs/…`,
#   `scripts/…`, `deploy/…`, `.github/…`, in backticks or in prose) exists, read from the
#   repository's root;
# - every relative Markdown link ([text](path#anchor)) points at a file that exists and, when it
#   names an anchor in a Markdown file, at a heading that exists there (GitHub's anchors:
#   lower case, punctuation dropped, spaces as hyphens);
# - every `docs/X.md#anchor` named in prose has that heading.
#
# Placeholders are not paths: a path is cut at the first `<`, `*`, `{` or `…` it contains, so
# `deploy/env/<name>.env` is checked as `deploy/env/`.
#
# Usage: scripts/check-docs.sh [FILE.md ...]   (default: README.md, docs/, proto/)
# Exits 1 and lists each missing path or anchor as `file: what`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Named in the documents on purpose though absent from the repository: files an operator
# creates. Keep this list short and say why.
ignored=(
  deploy/env/prod.env # OPERATIONS.md: "commit deploy/env/prod.env" (the operator's own)
)

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(ls README.md docs/*.md docs/adr/*.md proto/*.md)
fi

# The anchors of a Markdown file's headings, one a line.
anchors() {
  grep -E '^#{1,6} ' "$1" \
    | sed -E 's/^#+ +//' \
    | tr '[:upper:]' '[:lower:]' \
    | sed -E 's/[^a-z0-9 _-]//g; s/ /-/g'
}

is_ignored() {
  local p
  for p in "${ignored[@]}"; do
    [ "$1" = "$p" ] && return 0
  done
  return 1
}

missing=0
report() {
  echo "$1: $2"
  missing=1
}

# Checks `target` (a path, optionally with #anchor) relative to `base` (a directory).
check_target() {
  local file=$1 base=$2 target=$3 path anchor
  path=${target%%#*}
  anchor=""
  [ "$path" != "$target" ] && anchor=${target#*#}
  [ -z "$path" ] && path=$(basename "$file") && base=$(dirname "$file")
  if is_ignored "$path"; then
    return
  fi
  if [ ! -e "$base/$path" ]; then
    report "$file" "missing path $path"
    return
  fi
  if [ -n "$anchor" ] && [[ "$path" == *.md ]]; then
    if ! anchors "$base/$path" | grep -qxF -- "$anchor"; then
      report "$file" "missing anchor $path#$anchor"
    fi
  fi
}

for file in "${files[@]}"; do
  # Repository paths, in backticks or prose: a known top-level folder not preceded by a path or
  # URL character, up to the first character that cannot be in one of our paths.
  while IFS= read -r p; do
    p=${p%%[<*{…]*}
    # A sentence's full stop or a list's comma is not part of the path.
    p=$(sed -E 's/[.,:;]+$//' <<<"$p")
    [ -n "$p" ] && check_target "$file" . "$p"
  done < <(grep -oE '(^|[^A-Za-z0-9_./-])(services|crates|proto|docs|scripts|deploy|\.github)/[^][ `()"'"'"',;]*' "$file" \
    | sed -E 's/^[^A-Za-z0-9_.]//' | sort -u)

  # Relative Markdown links.
  while IFS= read -r t; do
    case "$t" in
      http://* | https://* | mailto:*) continue ;;
    esac
    check_target "$file" "$(dirname "$file")" "$t"
  done < <(grep -oE '\]\([^) ]+\)' "$file" | sed -E 's/^\]\(//; s/\)$//' | sort -u)
done

if [ "$missing" -ne 0 ]; then
  echo "check-docs: the documents above name paths or anchors that do not exist" >&2
  exit 1
fi
echo "check-docs: ${#files[@]} documents, every named path and anchor exists"
