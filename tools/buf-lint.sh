#!/usr/bin/env bash
# Lints protos/ with buf (built once from the Go module proxy, cached in ~/.cache/faultlab/bin).
set -euo pipefail
BUF_VERSION=v1.75.0
BIN="${HOME}/.cache/faultlab/bin"
BUF="${BIN}/buf-${BUF_VERSION}"
if [ ! -x "$BUF" ]; then
  echo "building buf ${BUF_VERSION} from the Go module proxy (once)..." >&2
  mkdir -p "$BIN"
  GOBIN="$BIN" CGO_ENABLED=0 go install "github.com/bufbuild/buf/cmd/buf@${BUF_VERSION}"
  mv "${BIN}/buf" "$BUF"
fi
cd "$(dirname "$0")/../protos"
"$BUF" lint
echo "buf lint: ok"
