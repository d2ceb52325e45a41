package nydus

import (
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
)

func TestOwnDirOfOverlaySnapshots(t *testing.T) {
	for _, tc := range []struct {
		mounts []mount.Mount
		want   string
	}{
		{[]mount.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"ro", "rbind"}}}, "/s/1/fs"},
		{[]mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/s/3/fs:/s/2/fs:/s/1/fs"}}}, "/s/3/fs"},
		// a layer not committed yet: its own directory is the upper one
		{[]mount.Mount{{Type: "overlay", Options: []string{"workdir=/s/4/work", "upperdir=/s/4/fs", "lowerdir=/s/3/fs"}}}, "/s/4/fs"},
	} {
		got, err := ownDir(tc.mounts)
		if err != nil || got != tc.want {
			t.Errorf("%v: got %q, %v; want %q", tc.mounts, got, err, tc.want)
		}
	}
	if _, err := ownDir([]mount.Mount{{Type: "fuse.stargz"}}); err == nil {
		t.Error("a non-overlayfs mount must be refused")
	}
}
