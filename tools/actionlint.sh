#!/usr/bin/env bash
# Lints the GitHub Actions workflows with actionlint, built once from the Go module
# proxy and cached in ~/.cache/faultlab/bin (like tools/buf-lint.sh).
# Usage: bash tools/actionlint.sh [workflow files...]   (default: .github/workflows/*.yml)
set -euo pipefail
ACTIONLINT_VERSION=v1.7.12
BIN="${FAULTLAB_TOOLS_BIN:-${HOME}/.cache/faultlab/bin}"
ACTIONLINT="${BIN}/actionlint-${ACTIONLINT_VERSION}"
if [ ! -x "$ACTIONLINT" ]; then
  command -v go >/dev/null || { echo "actionlint.sh: go is not on PATH; install Go >= 1.24 to build actionlint" >&2; exit 1; }
  echo "building actionlint ${ACTIONLINT_VERSION} from the Go module proxy (once)..." >&2
  mkdir -p "$BIN"
  stage="$(mktemp -d "${BIN}/.actionlint.XXXXXX")"
  trap 'rm -rf "$stage"' EXIT
  GOBIN="$stage" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "-s -w -X github.com/rhysd/actionlint.version=${ACTIONLINT_VERSION}" \
    "github.com/rhysd/actionlint/cmd/actionlint@${ACTIONLINT_VERSION}"
  mv -f "${stage}/actionlint" "$ACTIONLINT"  # atomic: a parallel run never sees half a binary
fi
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
  set -- .github/workflows/*.yml
fi
# shellcheck/pyflakes integrations stay off: neither is installed by the project.
"$ACTIONLINT" -shellcheck= -pyflakes= "$@"
echo "actionlint: ok ($*)"
