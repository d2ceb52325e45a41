package nydus

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/buildkit/exporter"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// exportDaemon plays the daemon's side of Export for a scratch image (no layers), then ends
// the stream the way `ending` says.
type exportDaemon struct {
	fakeDaemon
	ending func(stream grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error
	// known: the instances this daemon resolved ("" accepts any)
	known string

	mu       sync.Mutex
	header   *pb.ExportHeader
	chunks   map[string][]byte
	preds    map[int32][]byte
	released []string
	final    []string
}

func (d *exportDaemon) Export(stream grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.header = first.GetHeader()
	d.mu.Unlock()
	if d.header == nil {
		return status.Error(codes.InvalidArgument, "the first message must be the header")
	}
	if d.known != "" && d.header.GetInstanceId() != d.known {
		return status.Errorf(codes.NotFound, "unknown instance %s", d.header.GetInstanceId())
	}
	if err := stream.Send(&pb.ExportEvent{Ev: &pb.ExportEvent_Accepted{Accepted: &pb.Accepted{JobId: "j1"}}}); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		switch m := req.GetMsg().(type) {
		case *pb.ExportRequest_MetadataChunk:
			c := m.MetadataChunk
			d.mu.Lock()
			if d.chunks == nil {
				d.chunks = map[string][]byte{}
			}
			if int64(len(d.chunks[c.GetKey()])) != c.GetOffset() || len(c.GetData()) > metadataChunk {
				d.mu.Unlock()
				return status.Error(codes.InvalidArgument, "bad metadata_chunk")
			}
			d.chunks[c.GetKey()] = append(d.chunks[c.GetKey()], c.GetData()...)
			d.mu.Unlock()
		case *pb.ExportRequest_AttestationChunk:
			c := m.AttestationChunk
			d.mu.Lock()
			if d.preds == nil {
				d.preds = map[int32][]byte{}
			}
			if int64(len(d.preds[c.GetIndex()])) != c.GetOffset() {
				d.mu.Unlock()
				return status.Error(codes.InvalidArgument, "bad attestation_chunk")
			}
			d.preds[c.GetIndex()] = append(d.preds[c.GetIndex()], c.GetData()...)
			d.mu.Unlock()
		case *pb.ExportRequest_PlatformBegin:
			if len(m.PlatformBegin.GetLayers()) != 0 {
				return status.Error(codes.InvalidArgument, "a scratch image has no layers")
			}
			wants := &pb.LayerWants{PlatformId: m.PlatformBegin.GetPlatformId()}
			if err := stream.Send(&pb.ExportEvent{Ev: &pb.ExportEvent_LayerWants{LayerWants: wants}}); err != nil {
				return err
			}
		case *pb.ExportRequest_Commit:
			return d.ending(stream)
		}
	}
}

func (d *exportDaemon) Finalize(stream grpc.BidiStreamingServer[pb.FinalizeRequest, pb.ExportEvent]) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.final = append(d.final, req.GetStart().GetFinalizeToken())
	d.mu.Unlock()
	res := &pb.Result{Response: map[string]string{"containerimage.digest": "sha256:pushed"}}
	return stream.Send(&pb.ExportEvent{Ev: &pb.ExportEvent_Result{Result: res}})
}

func (d *exportDaemon) Release(_ context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	d.mu.Lock()
	d.released = append(d.released, req.GetInstanceId())
	d.mu.Unlock()
	return &pb.ReleaseResponse{Released: true}, nil
}

func scratchExport(t *testing.T, d *exportDaemon) (map[string]string, exporter.FinalizeFunc, error) {
	t.Helper()
	return scratchExportWith(t, d, nil)
}

func scratchExportWith(t *testing.T, d *exportDaemon, extra map[string][]byte) (map[string]string, exporter.FinalizeFunc, error) {
	t.Helper()
	return scratchExportSource(t, d, extra, nil)
}

func scratchExportSource(t *testing.T, d *exportDaemon, extra map[string][]byte, atts map[string][]exporter.Attestation) (map[string]string, exporter.FinalizeFunc, error) {
	t.Helper()
	d.info = &pb.GetInfoResponse{MaxChunkBytes: 1 << 20}
	d.resolve = func(*pb.ResolveRequest) (*pb.ResolveResponse, error) {
		return &pb.ResolveResponse{InstanceId: "inst-1", DisplayName: "exporting to nydus image r/x:1"}, nil
	}
	addr, stop := serve(t, d)
	t.Cleanup(stop)
	e := &Exporter{client: clientFor(addr)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	inst, err := e.Resolve(ctx, 0, map[string]string{"name": "r/x:1"})
	if err != nil {
		t.Fatal(err)
	}
	if inst.Name() != "exporting to nydus image r/x:1" {
		t.Fatalf("vertex name %q", inst.Name())
	}
	src := &exporter.Source{Metadata: map[string][]byte{
		"containerimage.config": []byte(`{"os":"linux","architecture":"amd64"}`),
		"unrelated.key":         []byte("not sent"),
	}}
	for k, v := range extra {
		src.Metadata[k] = v
	}
	src.Attestations = atts
	resp, finalize, ref, err := inst.Export(ctx, src, exporter.ExportBuildInfo{Ref: "build-1", SessionID: "s1"})
	if ref != nil {
		t.Fatal("without a worker content store no DescriptorReference goes back to BuildKit")
	}
	return resp, finalize, err
}

func TestExportThenFinalizeThenRelease(t *testing.T) {
	d := &exportDaemon{ending: func(stream grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error {
		res := &pb.Result{FinalizeToken: "tok", Response: map[string]string{"containerimage.digest": "sha256:staged"}}
		return stream.Send(&pb.ExportEvent{Ev: &pb.ExportEvent_Result{Result: res}})
	}}
	resp, finalize, err := scratchExport(t, d)
	if err != nil {
		t.Fatal(err)
	}
	if resp["containerimage.digest"] != "sha256:staged" || finalize == nil {
		t.Fatalf("response %v, finalize %v", resp, finalize != nil)
	}
	h := d.header
	if !h.GetDeferPush() || h.GetBuildRef() != "build-1" || h.GetInstanceId() != "inst-1" || len(h.GetPlatforms()) != 1 {
		t.Fatalf("header %v", h)
	}
	if _, ok := h.GetMetadata()["unrelated.key"]; ok || string(h.GetMetadata()["containerimage.config"]) == "" {
		t.Fatalf("metadata %v", h.GetMetadata())
	}
	if len(d.released) != 0 {
		t.Fatal("released before Finalize")
	}
	if err := finalize(context.Background()); err != nil {
		t.Fatal(err)
	}
	if strings.Join(d.final, ",") != "tok" || strings.Join(d.released, ",") != "inst-1" {
		t.Fatalf("finalized %v, released %v", d.final, d.released)
	}
}

func TestExportErrorKeepsTheDaemonsCodeAndMessage(t *testing.T) {
	d := &exportDaemon{ending: func(grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error {
		return status.Error(codes.ResourceExhausted, "no space left in the state directory")
	}}
	_, _, err := scratchExport(t, d)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("got %v", err)
	}
}

func TestExportStreamEndingWithoutResultIsAnError(t *testing.T) {
	d := &exportDaemon{ending: func(grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error { return nil }}
	_, _, err := scratchExport(t, d)
	if err == nil || !strings.Contains(err.Error(), "without a result") {
		t.Fatalf("got %v", err)
	}
}

func TestExportStreamCutIsAnError(t *testing.T) {
	d := &exportDaemon{ending: func(grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error {
		return status.Error(codes.Unavailable, "the daemon is draining")
	}}
	_, _, err := scratchExport(t, d)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "draining") {
		t.Fatalf("got %v", err)
	}
}

func TestLargeMetadataGoesInChunks(t *testing.T) {
	d := &exportDaemon{ending: func(stream grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error {
		return stream.Send(&pb.ExportEvent{Ev: &pb.ExportEvent_Result{Result: &pb.Result{}}})
	}}
	big := []byte(strings.Repeat("annotation value ", 200000)) // 3.4 MB: over the chunk size
	if _, _, err := scratchExportWith(t, d, map[string][]byte{"annotation.big": big}); err != nil {
		t.Fatal(err)
	}
	if _, inHeader := d.header.GetMetadata()["annotation.big"]; inHeader {
		t.Fatal("a value over 1 MiB must not be in the header")
	}
	if string(d.chunks["annotation.big"]) != string(big) {
		t.Fatalf("reassembled %d bytes, want %d", len(d.chunks["annotation.big"]), len(big))
	}
}
