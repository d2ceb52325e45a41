package nydus

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/moby/buildkit/session"
	sessionauth "github.com/moby/buildkit/session/auth"
	"github.com/moby/buildkit/util/bklog"
	"github.com/moby/buildkit/util/resolver"
	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
)

// answerAuth answers the daemon's auth_request from the build client's session (its docker
// config, or its token authority): BuildKit's own registry authorizer computes the
// Authorization header, so secrets stay with the client where it can; plain credentials are
// the fallback. Nothing is stored and the reply is never logged.
func (e *Exporter) answerAuth(ctx context.Context, req *pb.AuthRequest, sessionID string) *pb.AuthReply {
	reply := &pb.AuthReply{RequestId: req.GetRequestId()}
	g := session.NewGroup(sessionID)
	if header := e.authorization(ctx, req, g); header != "" {
		reply.Answer = &pb.AuthReply_Authorization{Authorization: header}
		return reply
	}
	_, user, secret, err := sessionauth.CredentialsFunc(ctx, e.sm, g)(req.GetHost())
	switch {
	case err != nil:
		reply.Answer = &pb.AuthReply_Error{Error: "no credentials for " + req.GetHost() + ": " + err.Error()}
	case secret == "":
		reply.Answer = &pb.AuthReply_Error{Error: "the build client has no credentials for " + req.GetHost()}
	default:
		reply.Answer = &pb.AuthReply_Basic{Basic: &pb.BasicCredentials{Username: user, Secret: secret}}
	}
	return reply
}

// authorization replays the daemon's 401 into BuildKit's session-backed authorizer for the
// host and returns the header it would send ("" when it has none).
func (e *Exporter) authorization(ctx context.Context, req *pb.AuthRequest, g session.Group) string {
	if len(req.GetWwwAuthenticate()) == 0 || req.GetUrl() == "" {
		return ""
	}
	u, err := url.Parse(req.GetUrl())
	if err != nil {
		return ""
	}
	ref := req.GetHost() + "/" + req.GetRepository()
	hosts, err := resolver.DefaultPool.GetResolver(e.hosts, ref, resolver.ScopeType{Push: req.GetPush()}, e.sm, g).HostsFunc(req.GetHost())
	if err != nil || len(hosts) == 0 || hosts[0].Authorizer == nil {
		return ""
	}
	authorizer := hosts[0].Authorizer
	method := req.GetMethod()
	if method == "" {
		method = http.MethodGet
	}
	httpReq, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return ""
	}
	challenge := &http.Response{
		StatusCode: http.StatusUnauthorized,
		Header:     http.Header{"Www-Authenticate": req.GetWwwAuthenticate()},
		Request:    httpReq,
	}
	if err := authorizer.AddResponses(ctx, []*http.Response{challenge}); err != nil {
		bklog.G(ctx).WithError(err).Debugf("nydus exporter: authorizer for %s", req.GetHost())
		return ""
	}
	for _, scope := range req.GetScopes() {
		ctx = docker.WithScope(ctx, scope)
	}
	if err := authorizer.Authorize(ctx, httpReq); err != nil {
		bklog.G(ctx).WithError(err).Debugf("nydus exporter: authorize %s", req.GetHost())
		return ""
	}
	header := httpReq.Header.Get("Authorization")
	if strings.HasPrefix(header, "Bearer ") || strings.HasPrefix(header, "Basic ") {
		return header
	}
	return ""
}
