#!/bin/sh
# Build the host CNI executable: a static Go program, standard library only.
#
#   cni/shim/build.sh OUT [VERSION]
#
# Used by the Makefile, the image's Go build stage and the tests, so that all three build
# it the same way. Offline: the program needs nothing but the Go toolchain.
set -eu
out=$1
version=${2:-dev}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
cd "$(dirname "$0")"
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
CGO_ENABLED=0 GO111MODULE=on GOFLAGS=-mod=mod \
    go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$tmp" .
mv -f "$tmp" "$out"
