// cri-pull pulls an image into containerd with a snapshotter the way CRI does: the layer
// descriptors get the CRI snapshot labels (pkg/snapshotters.AppendInfoHandlerWrapper), so a
// remote snapshotter can claim layers without their content being fetched.
// Usage: cri-pull SOCKET SNAPSHOTTER REF (plain http)
package main

import (
	"context"
	"fmt"
	"os"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
)

func main() {
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "cri-pull:", err)
		os.Exit(1)
	}
}

func run(sock, snapshotter, ref string) error {
	client, err := containerd.New(sock)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: config.ConfigureHosts(ctx, config.HostOptions{DefaultScheme: "http"}),
	})
	img, err := client.Pull(ctx, ref,
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(snapshotter),
		containerd.WithResolver(resolver),
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(ref)),
	)
	if err != nil {
		return err
	}
	fmt.Println(img.Name(), img.Target().Digest)
	return nil
}
