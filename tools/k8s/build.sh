#!/usr/bin/env bash
# Build the Kubernetes control plane used by the k8s test tier from the Go
# module proxy: kube-apiserver, kube-controller-manager, kubectl (all from
# k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3) and helm (v4).
#
# Versions come from tools/k8s/go.mod and tools/k8s/helm/go.mod. Binaries are
# cached in ${FAULTLAB_K8S_CACHE:-~/.cache/faultlab/k8s}/v<kubernetes>/bin; a
# binary that exists and reports the expected version is not rebuilt, so a
# second run is a no-op. Prints the bin directory as its last line of stdout.
#
# Environment: FAULTLAB_K8S_CACHE (cache root), FAULTLAB_K8S_JOBS (go build -p,
# default 2), GOTOOLCHAIN (default auto: fetches a newer Go only if a go.mod
# asks for one, e.g. GOTOOLCHAIN=go1.27.3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[k8s-build] %s\n' "$*" >&2; }
die() { printf '[k8s-build] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go is not on PATH; install Go >= 1.25 (https://go.dev/dl/)"

mod_version() { # <go.mod> <module path>
    awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1"
}

k8s_version="$(mod_version "$here/go.mod" k8s.io/kubernetes)"
etcd_version="$(mod_version "$here/go.mod" go.etcd.io/etcd/server/v3)"
helm_version="$(mod_version "$here/helm/go.mod" helm.sh/helm/v4)"
[[ -n "$k8s_version" && -n "$etcd_version" && -n "$helm_version" ]] ||
    die "could not read pinned versions from $here/go.mod and $here/helm/go.mod (k8s='$k8s_version' etcd='$etcd_version' helm='$helm_version')"

minor="${k8s_version#v1.}"
minor="${minor%%.*}"

cache_root="${FAULTLAB_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/faultlab/k8s}"
bin="$cache_root/$k8s_version/bin"
jobs="${FAULTLAB_K8S_JOBS:-2}"
mkdir -p "$bin"

export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
[[ "$GOTOOLCHAIN" == local ]] && export GOTOOLCHAIN=auto
export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"

# One build at a time per cache directory (parallel test sessions share it).
exec 9>"$cache_root/$k8s_version/.build.lock"
if command -v flock >/dev/null; then
    flock -n 9 || { log "another build holds $cache_root/$k8s_version/.build.lock; waiting"; flock 9; }
fi

reports() { # <binary> <expected substring> <version args...>
    local binary="$1" want="$2"
    shift 2
    [[ -x "$bin/$binary" ]] || return 1
    local out
    out="$("$bin/$binary" "$@" 2>&1)" || return 1
    [[ "$out" == *"$want"* ]]
}

need=()
reports kube-apiserver "Kubernetes $k8s_version" --version || need+=(kube-apiserver)
reports kube-controller-manager "Kubernetes $k8s_version" --version || need+=(kube-controller-manager)
reports kubectl "Client Version: $k8s_version" version --client || need+=(kubectl)
reports etcd "etcd Version: ${etcd_version#v}" --version || need+=(etcd)
reports helm "$helm_version" version --short || need+=(helm)

if [[ ${#need[@]} -eq 0 ]]; then
    log "cached: kubernetes $k8s_version, etcd $etcd_version, helm $helm_version in $bin"
    printf '%s\n' "$bin"
    exit 0
fi

log "building ${need[*]} (kubernetes $k8s_version, etcd $etcd_version, helm $helm_version) with $(go version | awk '{print $3}'), -p $jobs"
log "GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"

stage="$(mktemp -d "$cache_root/$k8s_version/.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

now() { date +%s; }

build() { # <module dir> <output name> <package> <ldflags>
    local dir="$1" name="$2" pkg="$3" ldflags="$4" t0
    t0="$(now)"
    log "go build $pkg -> $bin/$name"
    if ! (cd "$dir" && go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$stage/$name" "$pkg") >"$stage/$name.log" 2>&1; then
        cat "$stage/$name.log" >&2
        die "go build $pkg failed (in $dir, GOTOOLCHAIN=$GOTOOLCHAIN, CGO_ENABLED=0); output above"
    fi
    mv -f "$stage/$name" "$bin/$name"
    log "built $name in $(($(now) - t0))s"
}

build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

for name in "${need[@]}"; do
    case "$name" in
    kube-apiserver | kube-controller-manager | kubectl)
        build "$here" "$name" "k8s.io/kubernetes/cmd/$name" "$kube_ldflags" ;;
    etcd)
        build "$here" etcd go.etcd.io/etcd/server/v3 "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version" ;;
    helm)
        build "$here/helm" helm helm.sh/helm/v4/cmd/helm \
            "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version -X helm.sh/helm/v4/internal/version.gitTreeState=clean" ;;
    esac
done

reports kube-apiserver "Kubernetes $k8s_version" --version || die "$bin/kube-apiserver does not report $k8s_version: $("$bin/kube-apiserver" --version 2>&1)"
reports kube-controller-manager "Kubernetes $k8s_version" --version || die "$bin/kube-controller-manager does not report $k8s_version: $("$bin/kube-controller-manager" --version 2>&1)"
reports kubectl "Client Version: $k8s_version" version --client || die "$bin/kubectl does not report $k8s_version: $("$bin/kubectl" version --client 2>&1)"
reports etcd "etcd Version: ${etcd_version#v}" --version || die "$bin/etcd does not report $etcd_version: $("$bin/etcd" --version 2>&1)"
reports helm "$helm_version" version --short || die "$bin/helm does not report $helm_version: $("$bin/helm" version --short 2>&1)"

log "done: $bin"
printf '%s\n' "$bin"
