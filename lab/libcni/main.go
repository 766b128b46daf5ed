// libcni-client: a minimal CNI runtime for the tests, driving plugins through libcni
// (the library containerd and CRI-O use), version 1.1.2 as packaged by Debian.
//
//	libcni-client add|check|del|version CONFLIST_FILE NETNS_PATH CONTAINER_ID IFNAME [K=V;...]
//
// Plugins are searched in the directories of CNI_PATH (colon-separated). libcni's result
// cache goes to LIBCNI_CACHE_DIR (default: a directory under $TMPDIR). LIBCNI_CAP_ARGS may
// hold a JSON object of capability arguments (e.g. {"portMappings": [...]}).
// "version" prints the VERSION answer of every plugin in the list.
// On success the result JSON (add) or nothing (check, del) is printed and the exit code is
// 0; on failure the error is printed on stdout as JSON {"code", "msg", "details"} when it is
// a CNI error, else {"code": 0, "msg": ...}, and the exit code is 1. Usage errors exit 2.
//
// Build (offline, GOPATH mode; done by lab.node_io.build_libcni_client):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(mktemp -d) GOFLAGS= \
//	  go build -o build/libcni-client ./lab/libcni
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const usage = "usage: libcni-client add|check|del|version CONFLIST_FILE NETNS_PATH CONTAINER_ID IFNAME [K=V;...]"

func parseArgs(s string) ([][2]string, error) {
	var out [][2]string
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ";") {
		parts := strings.SplitN(kv, "=", 2)
		if len(parts) != 2 {
			return nil, fmt.Errorf("bad CNI arg %q, want K=V", kv)
		}
		out = append(out, [2]string{parts[0], parts[1]})
	}
	return out, nil
}

func printError(err error) {
	var cniErr *types.Error
	out := map[string]interface{}{"code": 0, "msg": err.Error()}
	if errors.As(err, &cniErr) {
		out = map[string]interface{}{"code": cniErr.Code, "msg": cniErr.Msg, "details": cniErr.Details}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}

func run(cmd string, args []string) error {
	list, err := libcni.ConfListFromFile(args[0])
	if err != nil {
		return err
	}
	cacheDir := os.Getenv("LIBCNI_CACHE_DIR")
	if cacheDir == "" {
		cacheDir = filepath.Join(os.TempDir(), "libcni-client-cache")
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), cacheDir, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if cmd == "version" {
		infos := map[string]interface{}{}
		for _, p := range list.Plugins {
			info, err := cni.GetVersionInfo(ctx, p.Network.Type)
			if err != nil {
				return err
			}
			infos[p.Network.Type] = info.SupportedVersions()
		}
		b, _ := json.Marshal(infos)
		fmt.Println(string(b))
		return nil
	}
	if len(args) < 4 {
		return fmt.Errorf("%s", usage)
	}
	rt := &libcni.RuntimeConf{NetNS: args[1], ContainerID: args[2], IfName: args[3]}
	if len(args) > 4 {
		if rt.Args, err = parseArgs(args[4]); err != nil {
			return err
		}
	}
	if caps := os.Getenv("LIBCNI_CAP_ARGS"); caps != "" {
		if err := json.Unmarshal([]byte(caps), &rt.CapabilityArgs); err != nil {
			return fmt.Errorf("LIBCNI_CAP_ARGS: %v", err)
		}
	}
	switch cmd {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		b, err := json.Marshal(res)
		if err != nil {
			return err
		}
		fmt.Println(string(b))
		return nil
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return cni.DelNetworkList(ctx, list, rt)
	}
	return fmt.Errorf("unknown command %q; %s", cmd, usage)
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		printError(err)
		os.Exit(1)
	}
}
