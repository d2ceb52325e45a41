package nydus

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/buildkit/exporter"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeDaemon is an in-process server of the contract on a real unix socket.
type fakeDaemon struct {
	pb.UnimplementedExporterServer
	info     *pb.GetInfoResponse
	resolve  func(*pb.ResolveRequest) (*pb.ResolveResponse, error)
	getInfos int
}

func (f *fakeDaemon) GetInfo(context.Context, *pb.GetInfoRequest) (*pb.GetInfoResponse, error) {
	f.getInfos++
	return f.info, nil
}

func (f *fakeDaemon) Resolve(_ context.Context, req *pb.ResolveRequest) (*pb.ResolveResponse, error) {
	return f.resolve(req)
}

func serve(t *testing.T, f pb.ExporterServer) (string, func()) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterExporterServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	return "unix://" + sock, srv.Stop
}

func clientFor(addr string) *Client {
	cfg := DefaultConfig()
	cfg.Address = addr
	return NewClient(cfg)
}

func TestResolveErrorKeepsTheDaemonsMessage(t *testing.T) {
	f := &fakeDaemon{
		info: &pb.GetInfoResponse{Capabilities: []string{"finalize"}},
		resolve: func(req *pb.ResolveRequest) (*pb.ResolveResponse, error) {
			return nil, status.Error(codes.FailedPrecondition, "fs-version=5: only RAFS v6 is written")
		},
	}
	addr, stop := serve(t, f)
	defer stop()
	e := &Exporter{client: clientFor(addr)}
	_, err := e.Resolve(context.Background(), 0, map[string]string{"fs-version": "5"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "only RAFS v6 is written") {
		t.Fatalf("got %v", err)
	}
}

func TestResolveSendsAttrsWithoutTheLayersKey(t *testing.T) {
	var got *pb.ResolveRequest
	f := &fakeDaemon{
		info: &pb.GetInfoResponse{Capabilities: []string{"finalize", "layer.by-reference"}},
		resolve: func(req *pb.ResolveRequest) (*pb.ResolveResponse, error) {
			got = req
			return &pb.ResolveResponse{InstanceId: "i1", NormalizedAttrs: map[string]string{"push": "true"}}, nil
		},
	}
	addr, stop := serve(t, f)
	defer stop()
	e := &Exporter{client: clientFor(addr)}
	for i := 0; i < 2; i++ {
		inst, err := e.Resolve(context.Background(), 3, map[string]string{"name": "r/x:1", "layers": "by-reference"})
		if err != nil {
			t.Fatal(err)
		}
		if inst.ID() != 3 || inst.Attrs()["layers"] != "by-reference" || inst.Type() != "nydus" {
			t.Fatalf("instance %d %v", inst.ID(), inst.Attrs())
		}
	}
	if _, ok := got.GetAttrs()["layers"]; ok || got.GetAttrs()["name"] != "r/x:1" || got.GetExporterIndex() != 3 {
		t.Fatalf("sent %v", got)
	}
	if strings.Join(got.GetClientCapabilities(), ",") != "finalize,layer.by-reference" {
		t.Fatalf("capabilities %v", got.GetClientCapabilities())
	}
	if f.getInfos != 1 {
		t.Fatalf("GetInfo asked %d times, want once", f.getInfos)
	}
}

func TestByReferenceNeedsTheCapability(t *testing.T) {
	f := &fakeDaemon{info: &pb.GetInfoResponse{Capabilities: []string{"finalize"}}}
	addr, stop := serve(t, f)
	defer stop()
	e := &Exporter{client: clientFor(addr)}
	_, err := e.Resolve(context.Background(), 0, map[string]string{"layers": "snapshot"})
	if err == nil || !strings.Contains(err.Error(), "layer.by-reference") {
		t.Fatalf("got %v", err)
	}
}

func TestDaemonDownNamesTheAddress(t *testing.T) {
	addr := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	e := &Exporter{client: clientFor(addr)}
	_, err := e.Resolve(context.Background(), 0, map[string]string{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), addr) {
		t.Fatalf("got %v", err)
	}
}

func TestDaemonRestartBetweenCallsAsksGetInfoAgain(t *testing.T) {
	f := &fakeDaemon{
		info: &pb.GetInfoResponse{Capabilities: []string{"finalize"}},
		resolve: func(*pb.ResolveRequest) (*pb.ResolveResponse, error) {
			return &pb.ResolveResponse{InstanceId: "i"}, nil
		},
	}
	addr, stop := serve(t, f)
	c := clientFor(addr)
	if _, err := c.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	stop()
	_, err := (&Exporter{client: c}).Resolve(context.Background(), 0, nil)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v", err)
	}
	if c.info != nil {
		t.Fatal("an unreachable daemon's GetInfo answer must be forgotten")
	}
}

// serveAt serves f on a given socket path (a restarted daemon comes back at the same path).
func serveAt(t *testing.T, sock string, f pb.ExporterServer) func() {
	t.Helper()
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterExporterServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	return srv.Stop
}

func TestDaemonRestartBetweenResolveAndExport(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	first := &fakeDaemon{
		info: &pb.GetInfoResponse{},
		resolve: func(*pb.ResolveRequest) (*pb.ResolveResponse, error) {
			return &pb.ResolveResponse{InstanceId: "inst-1"}, nil
		},
	}
	stop := serveAt(t, sock, first)
	e := &Exporter{client: clientFor("unix://" + sock)}
	inst, err := e.Resolve(context.Background(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	// the restarted daemon knows nothing of inst-1: the exporter resolves again, once
	restarted := &exportDaemon{known: "inst-2", ending: func(stream grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error {
		return stream.Send(&pb.ExportEvent{Ev: &pb.ExportEvent_Result{Result: &pb.Result{Response: map[string]string{"k": "v"}}}})
	}}
	restarted.info = &pb.GetInfoResponse{}
	restarted.resolve = func(*pb.ResolveRequest) (*pb.ResolveResponse, error) {
		return &pb.ResolveResponse{InstanceId: "inst-2"}, nil
	}
	stop = serveAt(t, sock, restarted)
	defer stop()
	big := []byte(strings.Repeat("x", 3<<20)) // sent in metadata_chunks, on the retry too
	src := &exporter.Source{Metadata: map[string][]byte{
		"containerimage.config": []byte(`{"os":"linux","architecture":"amd64"}`),
		"annotation.big":        big,
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var resp map[string]string
	for attempt := 0; ; attempt++ {
		// a channel that has not seen the new daemon yet answers UNAVAILABLE, naming it
		resp, _, _, err = inst.Export(ctx, src, exporter.ExportBuildInfo{})
		if status.Code(err) != codes.Unavailable || attempt == 50 {
			break
		}
		if !strings.Contains(err.Error(), sock) {
			t.Fatalf("got %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || resp["k"] != "v" || restarted.header.GetInstanceId() != "inst-2" {
		t.Fatalf("got %v, %v", resp, err)
	}
	if len(restarted.chunks["annotation.big"]) != len(big) {
		t.Fatalf("the retry sent %d bytes of the big value, want %d", len(restarted.chunks["annotation.big"]), len(big))
	}
}
