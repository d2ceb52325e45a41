// Package nydus is BuildKit's `nydus` exporter type: a client of the nydus-exporter daemon's
// gRPC contract (proto/nydus/exporter/v1/exporter.proto). BuildKit has no exporter plugins,
// so WrapWorker puts it in front of the OCI worker's own exporters (see deploy/buildkit/shim.md).
package nydus

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// Layer modes: how a layer reaches the daemon.
const (
	LayersStream      = "stream"       // uncompressed tar diffs in layer_data chunks
	LayersByReference = "by-reference" // the tar blob's path in the worker's content store
	LayersSnapshot    = "snapshot"     // the overlayfs snapshotter's per-layer upper directory
)

// Config is the [exporter.nydus] table of buildkitd.toml (deploy/buildkit/buildkitd.toml).
type Config struct {
	Address         string   `toml:"address"`
	ResolveTimeout  Duration `toml:"resolve-timeout"`
	Layers          string   `toml:"layers"`
	ChunkBytes      int      `toml:"chunk-bytes"`
	MaxMessageBytes int      `toml:"max-message-bytes"`
	TLSCA           string   `toml:"tls-ca"`
	TLSCert         string   `toml:"tls-cert"`
	TLSKey          string   `toml:"tls-key"`
	TLSServerName   string   `toml:"tls-server-name"`
}

// Duration reads TOML strings such as "10s".
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (e.g. \"10s\")", string(b))
	}
	d.Duration = v
	return nil
}

// DefaultConfig: the daemon's default socket path of the container image and 1 MiB chunks.
func DefaultConfig() Config {
	return Config{
		Address:         "unix:///run/nydus-exporter/exporter.sock",
		ResolveTimeout:  Duration{10 * time.Second},
		Layers:          LayersStream,
		ChunkBytes:      1 << 20,
		MaxMessageBytes: 16 << 20,
	}
}

// LoadConfig reads the [exporter.nydus] table of a buildkitd.toml (a missing file is the
// defaults, as for buildkitd itself). The rest of the file is buildkitd's; unknown keys in
// our own table are errors, so that a typo does not silently fall back to a default.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return cfg, nil
	}
	if err != nil {
		return cfg, err
	}
	var whole struct {
		Exporter map[string]any `toml:"exporter"`
	}
	if err := toml.Unmarshal(raw, &whole); err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	table, ok := whole.Exporter["nydus"]
	if !ok {
		return cfg, nil
	}
	again, err := toml.Marshal(table)
	if err != nil {
		return cfg, err
	}
	dec := toml.NewDecoder(bytes.NewReader(again))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			keys := make([]string, 0, len(strict.Errors))
			for _, e := range strict.Errors {
				keys = append(keys, strings.Join(e.Key(), "."))
			}
			return cfg, fmt.Errorf("%s [exporter.nydus]: unknown keys %s", path, strings.Join(keys, ", "))
		}
		return cfg, fmt.Errorf("%s [exporter.nydus]: %w", path, err)
	}
	return cfg, cfg.Validate()
}

// Validate checks the values a daemon connection cannot start without.
func (c Config) Validate() error {
	if !strings.HasPrefix(c.Address, "unix://") && !strings.HasPrefix(c.Address, "tcp://") {
		return fmt.Errorf("[exporter.nydus] address %q: expected unix:///PATH or tcp://HOST:PORT", c.Address)
	}
	switch c.Layers {
	case LayersStream, LayersByReference, LayersSnapshot:
	default:
		return fmt.Errorf("[exporter.nydus] layers %q: expected %s, %s or %s", c.Layers, LayersStream, LayersByReference, LayersSnapshot)
	}
	if c.ChunkBytes <= 0 || c.MaxMessageBytes <= c.ChunkBytes {
		return fmt.Errorf("[exporter.nydus] chunk-bytes %d must be positive and below max-message-bytes %d", c.ChunkBytes, c.MaxMessageBytes)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("[exporter.nydus] tls-cert and tls-key go together")
	}
	return nil
}
