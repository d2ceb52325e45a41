package nydus

import (
	"context"
	"io"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/buildkit/cache"
	"github.com/moby/buildkit/session"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	"github.com/pkg/errors"
)

// snapshotChain names each layer by its overlayfs snapshot directory: the layer's own upper
// directory, with overlayfs whiteouts (0/0 character devices, the opaque xattr). The daemon
// reads it in place: no tar is made, compressed or hashed. Mounting a ref read-only only
// computes the overlay options (lowerdir=<this layer>:<parents>); nothing is mounted here.
func (l layerSources) snapshotChain(ctx context.Context, ref cache.ImmutableRef, g session.Group) (*layerChain, error) {
	if l.snapshotter != "overlayfs" {
		return nil, errors.Errorf("nydus exporter: layers=snapshot needs the overlayfs snapshotter; this worker uses %q (use layers=stream)", l.snapshotter)
	}
	layers := ref.LayerChain()
	var releases []func() error
	release := func() {
		for _, r := range releases {
			_ = r()
		}
		_ = layers.Release(context.WithoutCancel(ctx))
	}
	infos := make([]*pb.LayerInfo, len(layers))
	for i, layer := range layers {
		dir, rel, err := layerDir(ctx, layer, g)
		if err != nil {
			release()
			return nil, errors.Wrapf(err, "nydus exporter: snapshot directory of layer %d", i)
		}
		releases = append(releases, rel)
		infos[i] = &pb.LayerInfo{
			Index:     int32(i),
			Reference: &pb.LayerReference{Path: dir, Kind: pb.LayerReference_KIND_DIRECTORY_OVERLAYFS},
		}
	}
	return &layerChain{
		infos: infos,
		open: func(context.Context, int) (io.ReadCloser, error) {
			return nil, errors.New("nydus exporter: a snapshot layer is read by the daemon, not streamed")
		},
		release: release,
	}, nil
}

// layerDir extracts the layer (a lazy base layer is pulled and unpacked) and returns its own
// directory in the overlayfs snapshotter.
func layerDir(ctx context.Context, layer cache.ImmutableRef, g session.Group) (string, func() error, error) {
	m, err := layer.Mount(ctx, true, g)
	if err != nil {
		return "", nil, err
	}
	mounts, release, err := m.Mount()
	if err != nil {
		return "", nil, err
	}
	dir, err := ownDir(mounts)
	if err != nil {
		_ = release()
		return "", nil, err
	}
	return dir, release, nil
}

// ownDir: a bottom layer is a bind mount of its directory; any other layer is an overlay
// whose upperdir (a layer not committed yet) or first lowerdir is the layer's own.
func ownDir(mounts []mount.Mount) (string, error) {
	if len(mounts) != 1 {
		return "", errors.Errorf("expected one mount, got %d", len(mounts))
	}
	m := mounts[0]
	switch m.Type {
	case "bind", "rbind":
		return m.Source, nil
	case "overlay":
		var lower string
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				return v, nil
			}
			if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				lower, _, _ = strings.Cut(v, ":")
			}
		}
		if lower != "" {
			return lower, nil
		}
	}
	return "", errors.Errorf("a %q mount is not an overlayfs snapshot directory", m.Type)
}
