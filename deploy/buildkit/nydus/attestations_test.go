package nydus

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/platforms"
	"github.com/moby/buildkit/exporter"
	gatewaypb "github.com/moby/buildkit/frontend/gateway/pb"
	"github.com/moby/buildkit/solver/result"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	digest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
)

func contentOf(b []byte) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) { return b, nil }
}

func TestAttestationsGoWithTheirContentAndLargeOnesInChunks(t *testing.T) {
	d := &exportDaemon{ending: func(stream grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error {
		return stream.Send(&pb.ExportEvent{Ev: &pb.ExportEvent_Result{Result: &pb.Result{}}})
	}}
	pid := platforms.Format(platforms.Normalize(platforms.DefaultSpec()))
	provenance := []byte(`{"buildType":"https://mobyproject.org/buildkit@v1"}`)
	sbom := []byte(`{"spdxVersion":"SPDX-2.3","x":"` + strings.Repeat("p", 3<<20) + `"}`) // over the chunk size
	other := digest.FromString("other")
	atts := map[string][]exporter.Attestation{pid: {
		{
			Kind: gatewaypb.AttestationKind_InToto, Path: "provenance.json", ContentFunc: contentOf(provenance),
			Metadata: map[string][]byte{result.AttestationInlineOnlyKey: []byte("true")},
			InToto:   result.InTotoAttestation{PredicateType: "https://slsa.dev/provenance/v0.2"},
		},
		{
			Kind: gatewaypb.AttestationKind_InToto, Path: "sbom.spdx.json", ContentFunc: contentOf(sbom),
			InToto: result.InTotoAttestation{
				PredicateType: "https://spdx.dev/Document",
				Subjects: []result.InTotoSubject{
					{Kind: gatewaypb.InTotoSubjectKind_Self},
					{Kind: gatewaypb.InTotoSubjectKind_Raw, Name: "other", Digest: []digest.Digest{other}},
				},
			},
		},
	}, "linux/no-such-platform": {
		{Kind: gatewaypb.AttestationKind_InToto, Path: "x.json", ContentFunc: contentOf([]byte(`{}`))},
	}}
	if _, _, err := scratchExportSource(t, d, nil, atts); err != nil {
		t.Fatal(err)
	}
	got := d.header.GetAttestationContents()
	if len(got) != 2 {
		t.Fatalf("attestation_contents %v (the unknown platform's must be left out)", got)
	}
	p, s := got[0], got[1]
	if p.GetPlatformId() != pid || p.GetPredicateType() != "https://slsa.dev/provenance/v0.2" || !p.GetInlineOnly() ||
		string(p.GetPredicate()) != string(provenance) || p.GetPredicateSize() != int64(len(provenance)) || len(p.GetSubjects()) != 0 {
		t.Fatalf("provenance %v", p)
	}
	if len(s.GetPredicate()) != 0 || s.GetPredicateSize() != int64(len(sbom)) || string(d.preds[1]) != string(sbom) {
		t.Fatalf("sbom: %d bytes in the header, size %d, %d in chunks; want 0, %d, %d",
			len(s.GetPredicate()), s.GetPredicateSize(), len(d.preds[1]), len(sbom), len(sbom))
	}
	subjects := s.GetSubjects()
	if len(subjects) != 2 || subjects[0].GetName() != "" || len(subjects[0].GetDigest()) != 0 ||
		subjects[1].GetName() != "other" || subjects[1].GetDigest()["sha256"] != other.Encoded() {
		t.Fatalf("subjects %v", subjects)
	}
}

func TestManyAttestationsKeepTheHeaderSmallAndBadOnesAreWarnings(t *testing.T) {
	d := &exportDaemon{ending: func(stream grpc.BidiStreamingServer[pb.ExportRequest, pb.ExportEvent]) error {
		return stream.Send(&pb.ExportEvent{Ev: &pb.ExportEvent_Result{Result: &pb.Result{}}})
	}}
	pid := platforms.Format(platforms.Normalize(platforms.DefaultSpec()))
	medium := []byte(`"` + strings.Repeat("m", 900<<10) + `"`) // under the chunk size
	var atts []exporter.Attestation
	for range 8 {
		atts = append(atts, exporter.Attestation{
			Kind: gatewaypb.AttestationKind_InToto, Path: "m.json", ContentFunc: contentOf(medium),
			InToto: result.InTotoAttestation{PredicateType: "https://example.com/medium"},
		})
	}
	atts = append(atts, exporter.Attestation{
		Kind: gatewaypb.AttestationKind_InToto, Path: "bad.json", ContentFunc: contentOf([]byte("{not json")),
		InToto: result.InTotoAttestation{PredicateType: "https://example.com/bad"},
	})
	if _, _, err := scratchExportSource(t, d, nil, map[string][]exporter.Attestation{pid: atts}); err != nil {
		t.Fatal(err) // never a failed build
	}
	got := d.header.GetAttestationContents()
	if len(got) != 8 {
		t.Fatalf("%d attestations sent, want the 8 good ones", len(got))
	}
	inline := 0
	for n, a := range got {
		inline += len(a.GetPredicate())
		whole := append(append([]byte{}, a.GetPredicate()...), d.preds[int32(n)]...)
		if string(whole) != string(medium) {
			t.Fatalf("attestation %d: %d bytes arrived, want %d", n, len(whole), len(medium))
		}
	}
	if inline > inlinePredicates || inline == 0 {
		t.Fatalf("%d predicate bytes in the header, want some and at most %d", inline, inlinePredicates)
	}
}
