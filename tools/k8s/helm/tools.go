//go:build tools

// Package tools pins helm v4 in its own module: helm v4.3.2 requires the
// k8s.io v0.37 libraries, which cannot share a build list with kubernetes
// v1.35.4 (pinned to v0.35.4 in ../go.mod).
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
