package nydus

import (
	"bytes"
	"context"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/moby/buildkit/exporter"
	"github.com/moby/buildkit/exporter/containerimage"
	"github.com/moby/buildkit/util/bklog"
	"github.com/moby/buildkit/util/leaseutil"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// resultStore is where BuildKit's build history looks for an exporter's result: the worker's
// content store (history copies the root from there into its own store, the root's children
// may be missing) and its lease manager.
type resultStore struct {
	content content.Store
	leases  leases.Manager
}

// descriptorReference writes the daemon's root (manifest or index) into the worker's content
// store under a temporary lease, which BuildKit releases once the build history has recorded
// it, the way its image exporter hands back its result. nil when there is nothing to record
// (no store, no root content, a mismatch) or it cannot be written: the history then records
// no result descriptor, and the build goes on.
func (r resultStore) descriptorReference(ctx context.Context, res *pb.Result) exporter.DescriptorReference {
	root, data := res.GetRootDescriptor(), res.GetRootContent()
	if r.content == nil || r.leases == nil || root == nil || len(data) == 0 {
		return nil
	}
	desc := ocispecs.Descriptor{
		MediaType:   root.GetMediaType(),
		Digest:      digest.Digest(root.GetDigest()),
		Size:        root.GetSize(),
		Annotations: root.GetAnnotations(),
	}
	if desc.Digest != digest.FromBytes(data) || desc.Size != int64(len(data)) {
		bklog.G(ctx).Warnf("nydus exporter: the daemon's root content does not match %s", desc.Digest)
		return nil
	}
	ctx, done, err := leaseutil.WithLease(context.WithoutCancel(ctx), r.leases, leaseutil.MakeTemporary)
	if err != nil {
		bklog.G(ctx).WithError(err).Warn("nydus exporter: no lease for the result descriptor")
		return nil
	}
	if err := content.WriteBlob(ctx, r.content, "nydus-result-"+desc.Digest.String(), bytes.NewReader(data), desc); err != nil {
		bklog.G(ctx).WithError(err).Warn("nydus exporter: writing the result descriptor")
		_ = done(context.WithoutCancel(ctx))
		return nil
	}
	return containerimage.NewDescriptorReference(desc, done)
}
