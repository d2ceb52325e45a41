package nydus

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "buildkitd.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfigReadsOnlyTheNydusTable(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, `
[worker.oci]
  enabled = true
  unknown-to-us = 1
[exporter.nydus]
  address = "tcp://10.0.0.1:7070"
  resolve-timeout = "3s"
  layers = "snapshot"
  chunk-bytes = 65536
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Address != "tcp://10.0.0.1:7070" || cfg.ResolveTimeout.Duration != 3*time.Second ||
		cfg.Layers != LayersSnapshot || cfg.ChunkBytes != 65536 || cfg.MaxMessageBytes != 16<<20 {
		t.Fatalf("unexpected config %+v", cfg)
	}
}

func TestLoadConfigDefaultsWithoutFileOrTable(t *testing.T) {
	for _, path := range []string{filepath.Join(t.TempDir(), "missing.toml"), writeConfig(t, "[worker.oci]\n")} {
		cfg, err := LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		if cfg != DefaultConfig() {
			t.Fatalf("%s: %+v is not the default", path, cfg)
		}
	}
}

func TestLoadConfigRejectsTyposAndBadValues(t *testing.T) {
	for text, want := range map[string]string{
		"[exporter.nydus]\n  adress = \"unix:///x\"\n":   "adress",
		"[exporter.nydus]\n  layers = \"tarball\"\n":     "tarball",
		"[exporter.nydus]\n  address = \"http://x\"\n":   "http://x",
		"[exporter.nydus]\n  resolve-timeout = \"10\"\n": "duration",
		"[exporter.nydus]\n  tls-cert = \"/c.pem\"\n":    "tls-key",
	} {
		_, err := LoadConfig(writeConfig(t, text))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v does not name %q", text, err, want)
		}
	}
}

func TestTheDocumentedConfigLoads(t *testing.T) {
	cfg, err := LoadConfig("../buildkitd.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Layers != LayersByReference || cfg.Address != "unix:///run/nydus-exporter/exporter.sock" {
		t.Fatalf("%+v", cfg)
	}
}
