package nydus

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/buildkit/cache"
	"github.com/moby/buildkit/exporter"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/solver/result"
	"github.com/moby/buildkit/util/bklog"
	"github.com/moby/buildkit/util/progress"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	digest "github.com/opencontainers/go-digest"
	"github.com/pkg/errors"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// metadataChunk: metadata values above this size go in metadata_chunk messages, so that the
// header stays well under the 16 MiB message limit.
const metadataChunk = 1 << 20

// metadataPrefixes: the Source.Metadata keys the daemon reads ([contract §4] step 3).
var metadataPrefixes = []string{
	exptypes.ExporterImageConfigKey, // also containerimage.config/<platform id>
	exptypes.ExporterImageBaseConfigKey,
	exptypes.ExporterPlatformsKey,
	"source.date.epoch",
	exptypes.ExporterImageNameKey,
	"annotation",
}

func (i *instance) Export(ctx context.Context, src *exporter.Source, buildInfo exporter.ExportBuildInfo) (map[string]string, exporter.FinalizeFunc, exporter.DescriptorReference, error) {
	pw, _, ctx := progress.NewFromContext(ctx)
	defer pw.Close()
	for _, w := range i.resolved.GetWarnings() {
		writeWarning(pw, &pb.Warning{Level: 1, Short: w})
	}

	header, refs, err := i.header(src, buildInfo)
	if err != nil {
		return nil, nil, nil, err
	}
	contents, warnings := attestationContents(ctx, src.Attestations, header.Platforms, session.NewGroup(buildInfo.SessionID))
	header.AttestationContents = contents
	for _, w := range warnings {
		writeWarning(pw, &pb.Warning{Level: 1, Short: w})
	}
	res, accepted, err := i.exportOnce(ctx, pw, header, refs, buildInfo.SessionID)
	if err != nil && !accepted && status.Code(err) == codes.NotFound && ctx.Err() == nil {
		// The daemon lost the instance between Resolve and Export (restarted, or the build
		// outlived job_ttl): resolve the same attrs again, once.
		if rerr := i.reresolve(ctx); rerr != nil {
			return nil, nil, nil, rerr
		}
		header.InstanceId = i.resolved.GetInstanceId()
		res, _, err = i.exportOnce(ctx, pw, header, refs, buildInfo.SessionID)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	for _, w := range res.GetWarnings() {
		writeWarning(pw, &pb.Warning{Level: 1, Short: w})
	}
	// The DescriptorReference is the daemon's root, written into the worker's content store for
	// BuildKit's build history (none when that fails). The instance is released here once
	// nothing more will be asked of it; an export whose FinalizeFunc is never called (a sibling
	// exporter failed) is dropped by the daemon after its job_ttl.
	descref := i.exp.results.descriptorReference(ctx, res)
	token := res.GetFinalizeToken()
	if token == "" {
		i.release(ctx)
		return res.GetResponse(), nil, descref, nil
	}
	finalize := func(ctx context.Context) error {
		defer i.release(ctx)
		return i.finalize(ctx, token, buildInfo.SessionID)
	}
	return res.GetResponse(), finalize, descref, nil
}

// exportOnce runs one Export stream; accepted says whether the daemon took the job.
func (i *instance) exportOnce(ctx context.Context, pw progress.Writer, header *pb.ExportHeader, refs []cache.ImmutableRef, sessionID string) (*pb.Result, bool, error) {
	stub, err := i.exp.client.stub()
	if err != nil {
		return nil, false, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(errors.WithStack(context.Canceled))
	stream, err := stub.Export(ctx)
	if err != nil {
		return nil, false, i.exp.client.wrap("Export", err)
	}
	s := &exportStream{
		inst:      i,
		stream:    stream,
		pw:        pw,
		sessionID: sessionID,
		accepted:  make(chan *pb.Accepted, 1),
		wants:     map[string]chan []int32{},
		done:      make(chan struct{}),
	}
	for _, p := range header.Platforms {
		s.wants[p.Id] = make(chan []int32, 1)
	}
	go s.readEvents(ctx)

	res, err := s.run(ctx, header, refs)
	jobID := s.jobID()
	if err != nil {
		cancel(err)
		if jobID != "" && ctx.Err() != nil {
			// BuildKit cancelled the export (client gone, a sibling exporter failed). The
			// stream's cancellation stops the job; Cancel covers a stream lost half-open.
			i.cancelJob(jobID)
		}
		return nil, jobID != "", err
	}
	return res, true, nil
}

// header builds the ExportHeader and the platforms' refs (nil: a scratch image).
func (i *instance) header(src *exporter.Source, buildInfo exporter.ExportBuildInfo) (*pb.ExportHeader, []cache.ImmutableRef, error) {
	h := &pb.ExportHeader{
		InstanceId:           i.resolved.GetInstanceId(),
		SessionId:            buildInfo.SessionID,
		BuildRef:             buildInfo.Ref,
		CompatibilityVersion: int64(buildInfo.CompatibilityVersion),
		DeferPush:            i.deferPush(),
		Metadata:             map[string][]byte{},
	}
	for k, v := range src.Metadata {
		for _, p := range metadataPrefixes {
			if strings.HasPrefix(k, p) {
				h.Metadata[k] = v
				break
			}
		}
	}
	ps, err := exptypes.ParsePlatforms(src.Metadata)
	if err != nil {
		return nil, nil, err
	}
	refs := make([]cache.ImmutableRef, 0, len(ps.Platforms))
	for _, p := range ps.Platforms {
		ref, ok := src.FindRef(p.ID)
		if !ok {
			return nil, nil, errors.Errorf("nydus exporter: no build result for platform %s", p.ID)
		}
		refs = append(refs, ref)
		h.Platforms = append(h.Platforms, &pb.Platform{
			Id:           p.ID,
			Os:           p.Platform.OS,
			Architecture: p.Platform.Architecture,
			Variant:      p.Platform.Variant,
			OsVersion:    p.Platform.OSVersion,
			OsFeatures:   p.Platform.OSFeatures,
		})
	}
	keys := make([]string, 0, len(src.Attestations))
	for k := range src.Attestations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, pid := range keys {
		for _, a := range src.Attestations[pid] {
			kind := "intoto"
			if a.InToto.PredicateType != "" {
				kind = a.InToto.PredicateType
			}
			inline, _ := strconv.ParseBool(string(a.Metadata[result.AttestationInlineOnlyKey]))
			h.Attestations = append(h.Attestations, &pb.AttestationSummary{PlatformId: pid, Kind: kind, InlineOnly: inline})
		}
	}
	return h, refs, nil
}

type exportStream struct {
	inst      *instance
	stream    pb.Exporter_ExportClient
	pw        progress.Writer
	sessionID string

	sendMu   sync.Mutex
	accepted chan *pb.Accepted
	wants    map[string]chan []int32

	mu     sync.Mutex
	job    string
	result *pb.Result
	err    error
	done   chan struct{} // closed when readEvents returns (err or result set)
}

func (s *exportStream) send(req *pb.ExportRequest) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(req)
}

func (s *exportStream) jobID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.job
}

// readEvents is the only reader of the stream until the result (or an error) arrives.
func (s *exportStream) readEvents(ctx context.Context) {
	defer close(s.done)
	events := newEventSink(ctx, s.pw)
	defer events.close()
	for {
		ev, err := s.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("nydus exporter: the daemon ended the Export stream without a result")
			} else {
				err = s.inst.exp.client.wrap("Export", err)
			}
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
		switch e := ev.GetEv().(type) {
		case *pb.ExportEvent_Accepted:
			s.mu.Lock()
			s.job = e.Accepted.GetJobId()
			s.mu.Unlock()
			s.accepted <- e.Accepted
		case *pb.ExportEvent_LayerWants:
			ch, ok := s.wants[e.LayerWants.GetPlatformId()]
			if !ok || len(ch) > 0 {
				s.mu.Lock()
				s.err = errors.Errorf("nydus exporter: unexpected layer_wants for platform %q", e.LayerWants.GetPlatformId())
				s.mu.Unlock()
				return
			}
			ch <- e.LayerWants.GetIndices()
		case *pb.ExportEvent_AuthRequest:
			reply := s.inst.exp.answerAuth(ctx, e.AuthRequest, s.sessionID)
			if err := s.send(&pb.ExportRequest{Msg: &pb.ExportRequest_AuthReply{AuthReply: reply}}); err != nil {
				bklog.G(ctx).WithError(err).Debug("nydus exporter: sending auth_reply")
			}
		case *pb.ExportEvent_Result:
			s.mu.Lock()
			s.result = e.Result
			s.mu.Unlock()
			return
		default:
			events.handle(ev)
		}
	}
}

// failed is the reader's error once it has stopped (nil while it runs or after a result).
func (s *exportStream) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// wait blocks until ch yields or the reader stops.
func wait[T any](ctx context.Context, s *exportStream, ch chan T) (T, error) {
	var zero T
	select {
	case v := <-ch:
		return v, nil
	case <-s.done:
		select {
		case v := <-ch:
			return v, nil
		default:
		}
		if err := s.failed(); err != nil {
			return zero, err
		}
		return zero, errors.New("nydus exporter: the daemon sent its result before the export was complete")
	case <-ctx.Done():
		return zero, context.Cause(ctx)
	}
}

// sendErr turns a failed Send into the stream's real error: a Send fails with io.EOF when the
// daemon ended the stream, and the status comes from Recv.
func (s *exportStream) sendErr(ctx context.Context, err error) error {
	if !errors.Is(err, io.EOF) {
		return s.inst.exp.client.wrap("Export", err)
	}
	select {
	case <-s.done:
		if e := s.failed(); e != nil {
			return e
		}
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	return errors.New("nydus exporter: the daemon closed the Export stream")
}

func (s *exportStream) run(ctx context.Context, header *pb.ExportHeader, refs []cache.ImmutableRef) (*pb.Result, error) {
	// The header carries the small values; the big ones follow (header stays as given: a
	// retry after a re-resolve sends it again).
	first := proto.CloneOf(header)
	first.Metadata = map[string][]byte{}
	big := map[string][]byte{}
	for k, v := range header.Metadata {
		if len(v) > metadataChunk {
			big[k] = v
		} else {
			first.Metadata[k] = v
		}
	}
	predicates := splitPredicates(first, header.AttestationContents)
	if err := s.send(&pb.ExportRequest{Msg: &pb.ExportRequest_Header{Header: first}}); err != nil {
		return nil, s.sendErr(ctx, err)
	}
	for _, req := range predicates {
		if err := s.send(req); err != nil {
			return nil, s.sendErr(ctx, err)
		}
	}
	for k, v := range big {
		for off := 0; off < len(v); off += metadataChunk {
			end := min(off+metadataChunk, len(v))
			chunk := &pb.MetadataChunk{Key: k, Offset: int64(off), Data: v[off:end], Last: end == len(v)}
			if err := s.send(&pb.ExportRequest{Msg: &pb.ExportRequest_MetadataChunk{MetadataChunk: chunk}}); err != nil {
				return nil, s.sendErr(ctx, err)
			}
		}
	}
	accepted, err := wait(ctx, s, s.accepted)
	if err != nil {
		return nil, err
	}
	if !accepted.GetResumed() {
		g := session.NewGroup(s.sessionID)
		for n, p := range header.Platforms {
			if err := s.sendPlatform(ctx, p.Id, refs[n], g); err != nil {
				return nil, err
			}
		}
		if err := s.send(&pb.ExportRequest{Msg: &pb.ExportRequest_Commit{Commit: &pb.Commit{}}}); err != nil {
			return nil, s.sendErr(ctx, err)
		}
	}
	// The write side stays open until the result: auth_reply messages may still be needed.
	select {
	case <-s.done:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	s.mu.Lock()
	res, rerr := s.result, s.err
	s.mu.Unlock()
	if rerr != nil {
		return nil, rerr
	}
	s.sendMu.Lock()
	_ = s.stream.CloseSend()
	s.sendMu.Unlock()
	return res, nil
}

func (s *exportStream) sendPlatform(ctx context.Context, pid string, ref cache.ImmutableRef, g session.Group) error {
	chain, err := s.inst.exp.layers.chain(ctx, s.inst.mode, ref, g)
	if err != nil {
		return err
	}
	defer chain.release()
	begin := &pb.PlatformBegin{PlatformId: pid, Layers: chain.infos}
	if err := s.send(&pb.ExportRequest{Msg: &pb.ExportRequest_PlatformBegin{PlatformBegin: begin}}); err != nil {
		return s.sendErr(ctx, err)
	}
	wanted, err := wait(ctx, s, s.wants[pid])
	if err != nil {
		return err
	}
	chunk := s.inst.exp.client.Config().ChunkBytes
	if limit := int(s.inst.info.GetMaxChunkBytes()); limit > 0 && chunk > limit {
		chunk = limit
	}
	for _, index := range wanted {
		if index < 0 || int(index) >= len(chain.infos) {
			return errors.Errorf("nydus exporter: the daemon wants layer %d of %s, which has %d", index, pid, len(chain.infos))
		}
		if err := s.sendLayer(ctx, pid, index, chain, chunk); err != nil {
			return err
		}
	}
	end := &pb.PlatformEnd{PlatformId: pid}
	if err := s.send(&pb.ExportRequest{Msg: &pb.ExportRequest_PlatformEnd{PlatformEnd: end}}); err != nil {
		return s.sendErr(ctx, err)
	}
	return nil
}

// sendLayer streams one layer's bytes in chunks, hashing them on the way; no read-ahead:
// HTTP/2 flow control is the backpressure.
func (s *exportStream) sendLayer(ctx context.Context, pid string, index int32, chain *layerChain, chunk int) error {
	info := chain.infos[index]
	r, err := chain.open(ctx, int(index))
	if err != nil {
		return errors.Wrapf(err, "nydus exporter: opening layer %d (%s)", index, info.GetBlobDigest())
	}
	defer r.Close()
	id := fmt.Sprintf("sending %s layer %d/%d %s", pid, index+1, len(chain.infos), shortDigest(info.GetBlobDigest()))
	started := time.Now()
	status := progress.Status{Action: "sending", Total: int(info.GetSize()), Started: &started}
	digester := digest.Canonical.Digester()
	buf := make([]byte, chunk)
	var offset int64
	lastReport := int64(0)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			digester.Hash().Write(buf[:n])
			data := &pb.LayerData{PlatformId: pid, Index: index, Offset: offset, Data: buf[:n]}
			if err := s.send(&pb.ExportRequest{Msg: &pb.ExportRequest_LayerData{LayerData: data}}); err != nil {
				return s.sendErr(ctx, err)
			}
			offset += int64(n)
			if offset-lastReport >= 16<<20 {
				lastReport = offset
				status.Current = int(offset)
				_ = s.pw.Write(id, status)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return errors.Wrapf(rerr, "nydus exporter: reading layer %d (%s)", index, info.GetBlobDigest())
		}
	}
	end := &pb.LayerEnd{PlatformId: pid, Index: index, Digest: digester.Digest().String()}
	if err := s.send(&pb.ExportRequest{Msg: &pb.ExportRequest_LayerEnd{LayerEnd: end}}); err != nil {
		return s.sendErr(ctx, err)
	}
	completed := time.Now()
	status.Current, status.Completed = int(offset), &completed
	_ = s.pw.Write(id, status)
	return nil
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// cancelJob is the out-of-band Cancel for a stream that may be lost half-open.
func (i *instance) cancelJob(jobID string) {
	stub, err := i.exp.client.stub()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := stub.Cancel(ctx, &pb.CancelRequest{JobId: jobID}); err != nil {
		bklog.G(ctx).WithError(err).Debugf("nydus exporter: Cancel %s", jobID)
	}
}

// finalize is BuildKit's FinalizeFunc: the push (or oci-layout write) of a deferred export.
func (i *instance) finalize(ctx context.Context, token, sessionID string) error {
	pw, _, ctx := progress.NewFromContext(ctx)
	defer pw.Close()
	stub, err := i.exp.client.stub()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := stub.Finalize(ctx)
	if err != nil {
		return i.exp.client.wrap("Finalize", err)
	}
	start := &pb.FinalizeStart{InstanceId: i.resolved.GetInstanceId(), FinalizeToken: token}
	if err := stream.Send(&pb.FinalizeRequest{Msg: &pb.FinalizeRequest_Start{Start: start}}); err != nil && !errors.Is(err, io.EOF) {
		return i.exp.client.wrap("Finalize", err)
	}
	events := newEventSink(ctx, pw)
	defer events.close()
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("nydus exporter: the daemon ended Finalize without a result")
			}
			return i.exp.client.wrap("Finalize", err)
		}
		switch e := ev.GetEv().(type) {
		case *pb.ExportEvent_AuthRequest:
			reply := i.exp.answerAuth(ctx, e.AuthRequest, sessionID)
			if err := stream.Send(&pb.FinalizeRequest{Msg: &pb.FinalizeRequest_AuthReply{AuthReply: reply}}); err != nil {
				bklog.G(ctx).WithError(err).Debug("nydus exporter: sending auth_reply")
			}
		case *pb.ExportEvent_Result:
			for _, w := range e.Result.GetWarnings() {
				writeWarning(pw, &pb.Warning{Level: 1, Short: w})
			}
			_ = stream.CloseSend()
			return nil
		default:
			events.handle(ev)
		}
	}
}

// release is the daemon's Release: the instance and whatever it still keeps.
func (i *instance) release(ctx context.Context) {
	stub, err := i.exp.client.stub()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := stub.Release(ctx, &pb.ReleaseRequest{InstanceId: i.resolved.GetInstanceId()}); err != nil {
		bklog.G(ctx).WithError(i.exp.client.wrap("Release", err)).Warn("nydus exporter: releasing the instance")
	}
}
