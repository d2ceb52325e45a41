package nydus

import (
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/moby/buildkit/exporter"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/worker"
	"github.com/moby/buildkit/worker/base"
	"github.com/moby/buildkit/worker/label"
)

// Worker is a BuildKit worker with one more exporter type: Exporter("nydus") is ours, every
// other name goes to the wrapped worker (the pattern of moby's builder-next "moby" exporter).
type Worker struct {
	worker.Worker
	client *Client
	hosts  docker.RegistryHosts
	layers layerSources
}

// WrapWorkers wraps each worker; all of them share the daemon connection.
func WrapWorkers(ws []worker.Worker, client *Client, hosts docker.RegistryHosts) []worker.Worker {
	out := make([]worker.Worker, len(ws))
	for i, w := range ws {
		out[i] = WrapWorker(w, client, hosts)
	}
	return out
}

func WrapWorker(w worker.Worker, client *Client, hosts docker.RegistryHosts) *Worker {
	nw := &Worker{Worker: w, client: client, hosts: hosts}
	if bw, ok := w.(*base.Worker); ok {
		// Blob paths and snapshot directories are the OCI worker's own; the containerd
		// worker's live in containerd's root, so it streams.
		if w.Labels()[label.Executor] == "oci" {
			nw.layers.workerRoot = bw.WorkerOpt.Root
		}
		if bw.WorkerOpt.Snapshotter != nil {
			nw.layers.snapshotter = bw.WorkerOpt.Snapshotter.Name()
		}
		if nw.hosts == nil {
			nw.hosts = bw.WorkerOpt.RegistryHosts
		}
	}
	return nw
}

func (w *Worker) Exporter(name string, sm *session.Manager) (exporter.Exporter, error) {
	if name != Type {
		return w.Worker.Exporter(name, sm)
	}
	results := resultStore{content: w.Worker.ContentStore(), leases: w.Worker.LeaseManager()}
	return &Exporter{client: w.client, sm: sm, hosts: w.hosts, layers: w.layers, results: results}, nil
}
