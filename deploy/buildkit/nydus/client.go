package nydus

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	pb "github.com/nydus-exporter/nydus-exporter/deploy/buildkit/nydusv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// Client is the one connection of a buildkitd to the daemon: dialled lazily (buildkitd
// starts whether or not the daemon is up), GetInfo asked once per connection.
type Client struct {
	cfg Config

	mu   sync.Mutex
	conn *grpc.ClientConn
	info *pb.GetInfoResponse
}

func NewClient(cfg Config) *Client {
	return &Client{cfg: cfg}
}

func (c *Client) Config() Config { return c.cfg }

func (c *Client) stub() (pb.ExporterClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		conn, err := dial(c.cfg)
		if err != nil {
			return nil, err
		}
		c.conn = conn
	}
	return pb.NewExporterClient(c.conn), nil
}

// Info is GetInfo, asked once and kept (capabilities, chunk limit).
func (c *Client) Info(ctx context.Context) (*pb.GetInfoResponse, error) {
	c.mu.Lock()
	info := c.info
	c.mu.Unlock()
	if info != nil {
		return info, nil
	}
	stub, err := c.stub()
	if err != nil {
		return nil, err
	}
	info, err = stub.GetInfo(ctx, &pb.GetInfoRequest{}, grpc.WaitForReady(false))
	if err != nil {
		return nil, c.wrap("GetInfo", err)
	}
	c.mu.Lock()
	c.info = info
	c.mu.Unlock()
	return info, nil
}

// forget drops the GetInfo answer: the daemon may have been restarted (or upgraded).
func (c *Client) forget() {
	c.mu.Lock()
	c.info = nil
	c.mu.Unlock()
}

// wrap keeps the daemon's message and code and says which daemon answered: a user reading
// buildctl's output needs to know that the nydus exporter (not the build) failed, and where.
func (c *Client) wrap(call string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("nydus exporter daemon at %s: %s: %w", c.cfg.Address, call, err)
	}
	if st.Code() == codes.Unavailable {
		c.forget()
		return status.Errorf(st.Code(), "nydus exporter daemon at %s is not reachable (%s): %s", c.cfg.Address, call, st.Message())
	}
	return status.Errorf(st.Code(), "nydus exporter: %s", st.Message())
}

func hasCapability(info *pb.GetInfoResponse, name string) bool {
	for _, c := range info.GetCapabilities() {
		if c == name {
			return true
		}
	}
	return false
}

func dial(cfg Config) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(cfg.MaxMessageBytes),
			grpc.MaxCallSendMsgSize(cfg.MaxMessageBytes),
		),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}
	var target string
	switch {
	case strings.HasPrefix(cfg.Address, "unix://"):
		target = cfg.Address // grpc-go's own unix resolver: unix:///abs/path
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	case strings.HasPrefix(cfg.Address, "tcp://"):
		target = "passthrough:///" + strings.TrimPrefix(cfg.Address, "tcp://")
		creds, err := transportCredentials(cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(creds))
	default:
		return nil, fmt.Errorf("nydus exporter address %q: expected unix:///PATH or tcp://HOST:PORT", cfg.Address)
	}
	return grpc.NewClient(target, opts...)
}

func transportCredentials(cfg Config) (credentials.TransportCredentials, error) {
	if cfg.TLSCA == "" && cfg.TLSCert == "" {
		return insecure.NewCredentials(), nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.TLSServerName}
	if cfg.TLSCA != "" {
		pem, err := os.ReadFile(cfg.TLSCA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", cfg.TLSCA)
		}
		tc.RootCAs = pool
	}
	if cfg.TLSCert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(tc), nil
}
