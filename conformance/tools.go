//go:build tools

// Package tools pins the conformance programs built by build.sh: importing their main packages
// here keeps `go mod tidy` from dropping them from go.mod and go.sum. There is no code of ours.
package tools

import (
	_ "github.com/summerwind/h2spec/cmd/h2spec"
	_ "google.golang.org/grpc/interop/client"
	_ "google.golang.org/grpc/interop/server"
)
