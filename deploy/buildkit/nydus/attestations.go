package nydus

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	"github.com/moby/buildkit/exporter"
	"github.com/moby/buildkit/exporter/attestation"
	gatewaypb "github.com/moby/buildkit/frontend/gateway/pb"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/solver/result"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	"github.com/pkg/errors"
)

// attestationContents reads the build's attestations the way BuildKit's image exporter does
// (attestation.Unbundle, which validates them, then attestation.ReadAll from each one's callback
// or ref and path), for the header's attestation_contents ([contract §5.7]); the daemon makes
// the in-toto statements once it knows the Nydus manifests. Attestations never fail a build: a
// platform whose attestations cannot be read loses them, with a warning.
func attestationContents(ctx context.Context, atts map[string][]exporter.Attestation, platforms []*pb.Platform, g session.Group) ([]*pb.Attestation, []string) {
	known := map[string]bool{}
	for _, p := range platforms {
		known[p.GetId()] = true
	}
	pids := make([]string, 0, len(atts))
	for pid := range atts {
		pids = append(pids, pid)
	}
	sort.Strings(pids)
	var out []*pb.Attestation
	var warnings []string
	for _, pid := range pids {
		if !known[pid] {
			warnings = append(warnings, fmt.Sprintf("attestations of %s not attached: the result has no such platform", pid))
			continue
		}
		made, skipped, err := platformAttestations(ctx, pid, atts[pid], g)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("attestations of %s not attached: %v", pid, err))
			continue
		}
		out = append(out, made...)
		warnings = append(warnings, skipped...)
	}
	return out, warnings
}

// platformAttestations: the attestations of one platform, and a warning for each one left out
// (its content unreadable or not JSON); an error when none can be read (Unbundle failed).
func platformAttestations(ctx context.Context, pid string, atts []exporter.Attestation, g session.Group) ([]*pb.Attestation, []string, error) {
	unbundled, err := attestation.Unbundle(ctx, g, atts)
	if err != nil {
		return nil, nil, err
	}
	out := make([]*pb.Attestation, 0, len(unbundled))
	var skipped []string
	for _, att := range unbundled {
		if att.Kind != gatewaypb.AttestationKind_InToto {
			continue // Unbundle leaves only in-toto attestations
		}
		content, err := attestation.ReadAll(ctx, g, att)
		if err == nil && len(content) > 0 && !json.Valid(content) {
			// BuildKit's image exporter fails the build here (the statement cannot be marshalled).
			err = errors.New("the predicate is not JSON")
		}
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("attestation %s (%s) of %s not attached: %v", att.Path, att.InToto.PredicateType, pid, err))
			continue
		}
		inline, _ := strconv.ParseBool(string(att.Metadata[result.AttestationInlineOnlyKey]))
		a := &pb.Attestation{
			PlatformId:    pid,
			PredicateType: att.InToto.PredicateType,
			InlineOnly:    inline,
			Predicate:     content,
			PredicateSize: int64(len(content)),
		}
		for _, s := range att.InToto.Subjects {
			switch s.Kind {
			case gatewaypb.InTotoSubjectKind_Self:
				// No digest: the daemon names the Nydus manifest (one purl per image name).
				name := s.Name
				if name == "_" {
					name = ""
				}
				a.Subjects = append(a.Subjects, &pb.AttestationSubject{Name: name})
			case gatewaypb.InTotoSubjectKind_Raw:
				a.Subjects = append(a.Subjects, &pb.AttestationSubject{Name: s.Name, Digest: result.ToDigestMap(s.Digest...)})
			default:
				return nil, nil, fmt.Errorf("unknown attestation subject kind %v", s.Kind)
			}
		}
		out = append(out, a)
	}
	return out, skipped, nil
}

// inlinePredicates: the most predicate bytes the header carries, so that it stays well under
// the 16 MiB message limit however many attestations there are.
const inlinePredicates = 4 << 20

// splitPredicates strips the predicates over the chunk size (and those past inlinePredicates)
// from the header's copy; they go as attestation_chunk messages after the header.
func splitPredicates(first *pb.ExportHeader, full []*pb.Attestation) []*pb.ExportRequest {
	var chunks []*pb.ExportRequest
	inline := 0
	for n, a := range full {
		data := a.GetPredicate()
		if len(data) <= metadataChunk && inline+len(data) <= inlinePredicates {
			inline += len(data)
			continue
		}
		first.AttestationContents[n].Predicate = nil
		for off := 0; off < len(data); off += metadataChunk {
			end := min(off+metadataChunk, len(data))
			chunk := &pb.AttestationChunk{Index: int32(n), Offset: int64(off), Data: data[off:end]}
			chunks = append(chunks, &pb.ExportRequest{Msg: &pb.ExportRequest_AttestationChunk{AttestationChunk: chunk}})
		}
	}
	return chunks
}
