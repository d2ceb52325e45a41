#!/bin/sh
# Regenerate the committed Go stubs (nydusv1/) from proto/nydus/exporter/v1/exporter.proto.
#
#   deploy/buildkit/generate.sh [OUT_DIR]     (default: deploy/buildkit/nydusv1)
#
# protoc is grpc_tools' (the repository's venv, as for the Python stubs); the Go plugins are
# the versions pinned as tools in go.mod. The proto has no go_package option, so the import
# path is given with M flags. tests/buildkit/test_go_stubs.py regenerates into a temporary
# directory and compares byte for byte.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$here/nydusv1}
python=${PYTHON:-$repo/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$here" && go build -o "$tmp/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go \
	&& go build -o "$tmp/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc)
proto=nydus/exporter/v1/exporter.proto
pkg=github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1
wkt=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
mkdir -p "$tmp/out" "$out"
"$python" -m grpc_tools.protoc -I"$repo/proto" -I"$wkt" \
	--plugin=protoc-gen-go="$tmp/protoc-gen-go" --plugin=protoc-gen-go-grpc="$tmp/protoc-gen-go-grpc" \
	--go_out="$tmp/out" --go_opt=paths=source_relative --go_opt=M$proto="$pkg;nydusv1" \
	--go-grpc_out="$tmp/out" --go-grpc_opt=paths=source_relative --go-grpc_opt=M$proto="$pkg;nydusv1" \
	"$repo/proto/$proto"
cp "$tmp/out/nydus/exporter/v1/exporter.pb.go" "$tmp/out/nydus/exporter/v1/exporter_grpc.pb.go" "$out/"
