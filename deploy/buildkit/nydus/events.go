package nydus

import (
	"context"
	"io"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/identity"
	"github.com/moby/buildkit/util/progress"
	"github.com/moby/buildkit/util/progress/logs"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
)

// eventSink shows the daemon's progress, log and warning events inside the exporter's
// vertex, as BuildKit's own exporters write theirs: one status row per progress id
// ("=> => converting layer linux/amd64 2/5"), log lines, vertex warnings.
type eventSink struct {
	pw             progress.Writer
	stdout, stderr io.WriteCloser
	release        func()
}

func newEventSink(ctx context.Context, pw progress.Writer) *eventSink {
	stdout, stderr, release := logs.NewLogStreams(ctx, false)
	return &eventSink{pw: pw, stdout: stdout, stderr: stderr, release: release}
}

func (e *eventSink) close() {
	e.stdout.Close()
	e.stderr.Close()
	e.release()
}

func (e *eventSink) handle(ev *pb.ExportEvent) {
	switch v := ev.GetEv().(type) {
	case *pb.ExportEvent_Progress:
		p := v.Progress
		st := progress.Status{Action: p.GetAction(), Current: int(p.GetCurrent()), Total: int(p.GetTotal())}
		if p.GetStarted() != nil {
			t := p.GetStarted().AsTime()
			st.Started = &t
		}
		if p.GetCompleted() != nil {
			t := p.GetCompleted().AsTime()
			st.Completed = &t
		}
		_ = e.pw.Write(p.GetId(), st)
	case *pb.ExportEvent_Log:
		if v.Log.GetStream() == 2 {
			_, _ = e.stderr.Write(v.Log.GetData())
		} else {
			_, _ = e.stdout.Write(v.Log.GetData())
		}
	case *pb.ExportEvent_Warning:
		writeWarning(e.pw, v.Warning)
	}
}

// writeWarning: the vertex is filled in from the writer's metadata (the exporter vertex).
func writeWarning(pw progress.Writer, w *pb.Warning) {
	level := int(w.GetLevel())
	if level == 0 {
		level = 1
	}
	_ = pw.Write(identity.NewID(), client.VertexWarning{
		Level:  level,
		Short:  []byte(w.GetShort()),
		Detail: w.GetDetail(),
		URL:    w.GetUrl(),
	})
}
