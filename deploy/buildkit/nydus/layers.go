package nydus

import (
	"context"
	"io"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/moby/buildkit/cache"
	cacheconfig "github.com/moby/buildkit/cache/config"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/solver"
	"github.com/moby/buildkit/util/compression"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

const uncompressedAnnotation = "containerd.io/uncompressed"

// layerSources finds a platform's layers for each layers mode.
type layerSources struct {
	// workerRoot is the OCI worker's state directory (<buildkitd root>/runc-<snapshotter>):
	// its content store holds the blobs sent by reference.
	workerRoot string
	// snapshotter is the worker's snapshotter name ("overlayfs" for layers=snapshot).
	snapshotter string
}

// layerChain is one platform's layers, lowest first, as announced in platform_begin.
type layerChain struct {
	infos   []*pb.LayerInfo
	open    func(ctx context.Context, index int) (io.ReadCloser, error)
	release func()
}

func (l layerSources) chain(ctx context.Context, mode string, ref cache.ImmutableRef, g session.Group) (*layerChain, error) {
	if ref == nil { // a scratch image: no layers
		return &layerChain{release: func() {}}, nil
	}
	if mode != LayersStream && l.workerRoot == "" {
		mode = LayersStream // not the OCI worker: its blobs and snapshots are not ours to name
	}
	switch mode {
	case LayersSnapshot:
		return l.snapshotChain(ctx, ref, g)
	case LayersByReference:
		return l.referenceChain(ctx, ref, g)
	default:
		return l.streamChain(ctx, ref, g)
	}
}

// remote is the ref's blob chain. New layers are created uncompressed (the daemon reads the
// tar anyway, so gzip would be work for nothing); layers BuildKit already has (a pulled base,
// a blob a sibling type=image export compressed) go as they are stored: the daemon sniffs
// gzip, zstd and plain tar.
func remote(ctx context.Context, ref cache.ImmutableRef, g session.Group) (*solver.Remote, error) {
	remotes, err := ref.GetRemotes(ctx, true, cacheconfig.RefConfig{Compression: compression.New(compression.Uncompressed)}, false, g)
	if err != nil {
		return nil, errors.Wrap(err, "nydus exporter: getting the layer blobs")
	}
	if len(remotes) == 0 {
		return nil, errors.New("nydus exporter: the build result has no layer blobs")
	}
	return remotes[0], nil
}

func layerInfos(descs []ocispecs.Descriptor) []*pb.LayerInfo {
	infos := make([]*pb.LayerInfo, len(descs))
	var chainID digest.Digest
	for i, d := range descs {
		diffID := digest.Digest(d.Annotations[uncompressedAnnotation])
		if diffID != "" {
			if chainID == "" {
				chainID = diffID
			} else {
				chainID = digest.FromString(chainID.String() + " " + diffID.String())
			}
		}
		infos[i] = &pb.LayerInfo{
			Index:       int32(i),
			BlobDigest:  d.Digest.String(),
			MediaType:   d.MediaType,
			Size:        d.Size,
			DiffId:      diffID.String(),
			Annotations: d.Annotations,
		}
		if diffID != "" {
			infos[i].ChainId = chainID.String()
		}
	}
	return infos
}

func (l layerSources) streamChain(ctx context.Context, ref cache.ImmutableRef, g session.Group) (*layerChain, error) {
	r, err := remote(ctx, ref, g)
	if err != nil {
		return nil, err
	}
	return &layerChain{
		infos: layerInfos(r.Descriptors),
		open: func(ctx context.Context, index int) (io.ReadCloser, error) {
			// ReaderAt of the remote's provider fetches a lazy (not yet pulled) layer.
			ra, err := r.Provider.ReaderAt(ctx, r.Descriptors[index])
			if err != nil {
				return nil, err
			}
			return readCloser{content.NewReader(ra), ra}, nil
		},
		release: func() {},
	}, nil
}

// referenceChain names each blob by its path in the worker's content store; the daemon
// (sharing buildkitd's root, read-only, at the same path) reads it in place.
func (l layerSources) referenceChain(ctx context.Context, ref cache.ImmutableRef, g session.Group) (*layerChain, error) {
	r, err := remote(ctx, ref, g)
	if err != nil {
		return nil, err
	}
	// GetRemotes does not pull lazy layers; Unlazy puts every blob in the content store.
	if u, ok := r.Provider.(cache.Unlazier); ok {
		if err := u.Unlazy(ctx); err != nil {
			return nil, errors.Wrap(err, "nydus exporter: pulling the base layers")
		}
	}
	infos := layerInfos(r.Descriptors)
	for i, d := range r.Descriptors {
		infos[i].Reference = &pb.LayerReference{
			Path: filepath.Join(l.workerRoot, "content", "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded()),
			Kind: pb.LayerReference_KIND_TAR,
		}
	}
	return &layerChain{infos: infos, release: func() {}}, nil
}

type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }
