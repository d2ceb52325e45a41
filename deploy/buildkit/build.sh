#!/bin/sh
# Build bin/nydus-buildkitd and bin/buildctl from the BuildKit release pinned in go.mod.
#
#   deploy/buildkit/build.sh BIN_DIR
#
# nydus-buildkitd is BuildKit's own cmd/buildkitd plus one file, hook/zz_nydus.go.in, which
# installs the nydus exporter through buildkitd's worker initializers. Nothing is copied:
# `go build -overlay` presents a virtual package directory of this module, cmd/nydus-buildkitd,
# made of BuildKit's cmd/buildkitd files as they are in the module cache (checked against
# go.sum) plus the hook. (Go refuses overlays that replace files beneath GOMODCACHE, so the
# hook cannot be added to BuildKit's directory itself.)
#
# Go's module and build caches stay where Go keeps them by default ($HOME/go/pkg/mod,
# $HOME/.cache/go-build), outside the clone, so a rebuild only relinks.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mkdir -p "$1" && cd "$1" && pwd)
command -v go >/dev/null 2>&1 || { echo "build.sh: Go >= 1.26 is needed (https://go.dev/dl/)" >&2; exit 1; }
cd "$here"
go mod download github.com/moby/buildkit
version=$(go list -m -f '{{.Version}}' github.com/moby/buildkit)
bkdir=$(go list -m -f '{{.Dir}}' github.com/moby/buildkit)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
virtual="$here/cmd/nydus-buildkitd"
{
	printf '{"Replace":{'
	for f in "$bkdir"/cmd/buildkitd/*.go; do
		case "$f" in *_test.go) continue ;; esac
		printf '"%s/%s":"%s",' "$virtual" "$(basename "$f")" "$f"
	done
	printf '"%s/zz_nydus.go":"%s"}}\n' "$virtual" "$here/hook/zz_nydus.go.in"
} >"$tmp/overlay.json"
pkg="-X github.com/moby/buildkit/version.Package=github.com/moby/buildkit"
go build -overlay "$tmp/overlay.json" -ldflags "$pkg -X github.com/moby/buildkit/version.Version=$version+nydus" \
	-o "$bin/nydus-buildkitd" ./cmd/nydus-buildkitd
go build -ldflags "$pkg -X github.com/moby/buildkit/version.Version=$version" -o "$bin/buildctl" github.com/moby/buildkit/cmd/buildctl
