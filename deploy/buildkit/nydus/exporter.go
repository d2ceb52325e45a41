package nydus

import (
	"context"
	"maps"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/moby/buildkit/exporter"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/util/bklog"
	"github.com/moby/buildkit/version"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	"github.com/pkg/errors"
)

// Type is the exporter name: `buildctl build --output type=nydus,...`.
const Type = "nydus"

// layersAttr is read by this exporter, not by the daemon: it overrides the configured layer
// mode for one output (`--output type=nydus,layers=snapshot,...`).
const layersAttr = "layers"

// Exporter is BuildKit's exporter.Exporter for type=nydus. One per Worker.Exporter call;
// the daemon connection is shared by all of them.
type Exporter struct {
	client  *Client
	sm      *session.Manager
	hosts   docker.RegistryHosts
	layers  layerSources
	results resultStore
}

// Resolve runs before the build: the daemon validates the attrs now, so that a bad key fails
// buildctl before anything is built, with the daemon's message.
func (e *Exporter) Resolve(ctx context.Context, id int, attrs map[string]string) (exporter.ExporterInstance, error) {
	cfg := e.client.Config()
	mode := cfg.Layers
	daemonAttrs := maps.Clone(attrs)
	if v, ok := daemonAttrs[layersAttr]; ok {
		mode = v
		delete(daemonAttrs, layersAttr)
		switch mode {
		case LayersStream, LayersByReference, LayersSnapshot:
		default:
			return nil, errors.Errorf("nydus exporter: layers=%q: expected %s, %s or %s", mode, LayersStream, LayersByReference, LayersSnapshot)
		}
	}
	if cfg.ResolveTimeout.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.ResolveTimeout.Duration)
		defer cancel()
	}
	info, err := e.client.Info(ctx)
	if err != nil {
		return nil, err
	}
	caps := []string{"finalize"}
	if mode != LayersStream {
		if !hasCapability(info, "layer.by-reference") {
			return nil, errors.Errorf("nydus exporter: layers=%s needs a daemon with the layer.by-reference capability (it has %v)", mode, info.GetCapabilities())
		}
		caps = append(caps, "layer.by-reference")
	}
	stub, err := e.client.stub()
	if err != nil {
		return nil, err
	}
	req := &pb.ResolveRequest{
		ExporterIndex:      int32(id),
		Attrs:              daemonAttrs,
		BuildkitVersion:    version.Version,
		ClientCapabilities: caps,
	}
	resp, err := stub.Resolve(ctx, req)
	if err != nil {
		return nil, e.client.wrap("Resolve", err)
	}
	for _, w := range resp.GetWarnings() {
		bklog.G(ctx).Warnf("nydus exporter: %s", w)
	}
	normalized := maps.Clone(resp.GetNormalizedAttrs())
	if normalized == nil {
		normalized = map[string]string{}
	}
	normalized[layersAttr] = mode
	return &instance{
		exp:        e,
		id:         id,
		mode:       mode,
		info:       info,
		request:    req,
		resolved:   resp,
		attrs:      normalized,
		resolvedAt: time.Now(),
	}, nil
}

type instance struct {
	exp        *Exporter
	id         int
	mode       string
	info       *pb.GetInfoResponse
	request    *pb.ResolveRequest
	resolved   *pb.ResolveResponse
	attrs      map[string]string
	resolvedAt time.Time
}

func (i *instance) ID() int                  { return i.id }
func (i *instance) Type() string             { return Type }
func (i *instance) Attrs() map[string]string { return i.attrs }

// Config: Nydus images carry no inline cache; the compression is irrelevant to BuildKit.
func (i *instance) Config() *exporter.Config { return exporter.NewConfig() }

func (i *instance) Name() string {
	if n := i.resolved.GetDisplayName(); n != "" {
		return n
	}
	return "exporting to nydus image"
}

// deferPush: publish in FinalizeFunc, except when the pushed root is only known at push
// time (merge-manifest against the live tag): BuildKit reads the response keys of Export,
// so that export must push before it returns.
func (i *instance) deferPush() bool {
	a := i.resolved.GetNormalizedAttrs()
	return !(a["push"] == "true" && a["merge-manifest"] == "true" && a["merge-manifest-source"] == "registry")
}

// reresolve asks the daemon for a new instance with the same attrs.
func (i *instance) reresolve(ctx context.Context) error {
	if t := i.exp.client.Config().ResolveTimeout.Duration; t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	stub, err := i.exp.client.stub()
	if err != nil {
		return err
	}
	resp, err := stub.Resolve(ctx, i.request)
	if err != nil {
		return i.exp.client.wrap("Resolve", err)
	}
	i.resolved = resp
	return nil
}
