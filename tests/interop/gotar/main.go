// gotar writes a Nydus bootstrap layer tar (uncompressed, to stdout) the way the real
// converter does: nydus-snapshotter's packToTar with Go's archive/tar, a directory header
// tar.Header{Name: dir, Mode: 0755, Typeflag: tar.TypeDir} and, for each file,
// tar.Header{Name: name, Mode: 0444, Size: size}.
//
// Usage: gotar NAME=FILE... (all names in one directory, e.g. image/image.boot=/tmp/b)
package main

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gotar:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: gotar NAME=FILE...")
	}
	tw := tar.NewWriter(os.Stdout)
	for i, arg := range args {
		name, path, ok := strings.Cut(arg, "=")
		if !ok {
			return fmt.Errorf("argument %q is not NAME=FILE", arg)
		}
		if i == 0 {
			dir := &tar.Header{Name: filepath.Dir(name), Mode: 0755, Typeflag: tar.TypeDir}
			if err := tw.WriteHeader(dir); err != nil {
				return err
			}
		}
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0444, Size: fi.Size()}); err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}
