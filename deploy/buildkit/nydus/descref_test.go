package nydus

import (
	"context"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/plugins/content/local"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	digest "github.com/opencontainers/go-digest"
)

// leaseBook is a leases.Manager that only keeps count (BuildKit's is containerd's metadata store).
type leaseBook struct {
	mu   sync.Mutex
	live map[string]bool
}

func (b *leaseBook) Create(_ context.Context, opts ...leases.Opt) (leases.Lease, error) {
	var l leases.Lease
	for _, o := range opts {
		if err := o(&l); err != nil {
			return l, err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.live[l.ID] = true
	return l, nil
}

func (b *leaseBook) Delete(_ context.Context, l leases.Lease, _ ...leases.DeleteOpt) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.live, l.ID)
	return nil
}

func (b *leaseBook) List(context.Context, ...string) ([]leases.Lease, error) { return nil, nil }
func (b *leaseBook) AddResource(context.Context, leases.Lease, leases.Resource) error {
	return nil
}
func (b *leaseBook) DeleteResource(context.Context, leases.Lease, leases.Resource) error {
	return nil
}
func (b *leaseBook) ListResources(context.Context, leases.Lease) ([]leases.Resource, error) {
	return nil, nil
}

func TestDescriptorReferenceIsTheRootInTheContentStore(t *testing.T) {
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	book := &leaseBook{live: map[string]bool{}}
	r := resultStore{content: store, leases: book}
	ctx := context.Background()
	root := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	dgst := digest.FromBytes(root)
	res := &pb.Result{
		RootDescriptor: &pb.Descriptor{MediaType: "application/vnd.oci.image.index.v1+json", Digest: dgst.String(), Size: int64(len(root))},
		RootContent:    root,
	}

	ref := r.descriptorReference(ctx, res)
	if ref == nil {
		t.Fatal("no DescriptorReference")
	}
	if ref.Descriptor().Digest != dgst || ref.Descriptor().Size != int64(len(root)) {
		t.Fatalf("descriptor %v", ref.Descriptor())
	}
	if info, err := store.Info(ctx, dgst); err != nil || info.Size != int64(len(root)) {
		t.Fatalf("the root is not in the content store: %v %v", info, err)
	}
	if len(book.live) != 1 {
		t.Fatalf("%d leases held, want 1 until Release", len(book.live))
	}
	if err := ref.Release(); err != nil || len(book.live) != 0 {
		t.Fatalf("Release: %v, %d leases left", err, len(book.live))
	}

	// Content that does not match its descriptor, or none: no reference, and no lease left.
	res.RootContent = []byte("other bytes")
	if r.descriptorReference(ctx, res) != nil || len(book.live) != 0 {
		t.Fatal("a mismatched root must give no DescriptorReference")
	}
	res.RootContent = nil
	if r.descriptorReference(ctx, res) != nil {
		t.Fatal("no root content must give no DescriptorReference")
	}
}
