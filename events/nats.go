package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATSConfig says where the event log lives.
type NATSConfig struct {
	// URL of an existing NATS deployment; empty runs an embedded server.
	URL string
	// Creds is a NATS credentials file for URL.
	Creds string
	// DataDir holds the embedded server's JetStream store (DataDir/nats).
	DataDir string
	// Listen, if set, makes the embedded server also accept clients on this
	// host:port (nodes, other mdc instances). They must present Token.
	Listen string
	// Token is required from clients of Listen.
	Token string
	// SyncAlways makes the embedded server fsync every append (survives power
	// loss, not just a crash of mdc, at a large cost in appends/s).
	SyncAlways bool
	Logger     *slog.Logger
}

// Conn is a connection to the event log's NATS, with the embedded server if
// there is one.
type Conn struct {
	NC  *nats.Conn
	srv *server.Server
}

// Connect starts the embedded server (if no URL is given) and connects to it.
func Connect(ctx context.Context, cfg NATSConfig) (*Conn, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.URL != "" {
		opts := []nats.Option{nats.Name("mdc"), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second)}
		if cfg.Creds != "" {
			opts = append(opts, nats.UserCredentials(cfg.Creds))
		}
		nc, err := nats.Connect(cfg.URL, opts...)
		if err != nil {
			return nil, fmt.Errorf("connect to NATS at %s: %w", cfg.URL, err)
		}
		return &Conn{NC: nc}, nil
	}
	if cfg.DataDir == "" {
		return nil, errors.New("embedded NATS needs a data directory")
	}
	opts := &server.Options{
		ServerName: "mdc",
		JetStream:  true,
		StoreDir:   filepath.Join(cfg.DataDir, "nats"),
		DontListen: cfg.Listen == "",
		NoSigs:     true,
		SyncAlways: cfg.SyncAlways,
	}
	if cfg.Listen != "" {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("--nats-listen %q: %w", cfg.Listen, err)
		}
		if opts.Port, err = strconv.Atoi(port); err != nil {
			return nil, fmt.Errorf("--nats-listen %q: bad port", cfg.Listen)
		}
		opts.Host = host
		if cfg.Token == "" {
			return nil, errors.New("--nats-listen needs a token for the clients it lets in")
		}
		opts.Authorization = cfg.Token
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	srv.SetLoggerV2(ServerLogger(log.With("component", "nats")), false, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("embedded NATS did not become ready in 30s (is the data directory writable?)")
	}
	copts := []nats.Option{nats.Name("mdc"), nats.InProcessServer(srv)}
	if cfg.Token != "" && cfg.Listen != "" {
		copts = append(copts, nats.Token(cfg.Token))
	}
	nc, err := nats.Connect(nats.DefaultURL, copts...)
	if err != nil {
		srv.Shutdown()
		return nil, fmt.Errorf("connect to embedded NATS: %w", err)
	}
	return &Conn{NC: nc, srv: srv}, nil
}

// ClientURL is where other processes reach the embedded server ("" if it
// does not listen).
func (c *Conn) ClientURL() string {
	if c.srv == nil {
		return ""
	}
	if addr := c.srv.Addr(); addr != nil {
		return "nats://" + addr.String()
	}
	return ""
}

// Close flushes what is buffered and stops the embedded server.
func (c *Conn) Close() {
	if c.NC != nil {
		_ = c.NC.FlushTimeout(5 * time.Second)
		c.NC.Close()
	}
	if c.srv != nil {
		c.srv.Shutdown()
		c.srv.WaitForShutdown()
	}
}

// ServerLogger sends an embedded server's log to log: its notices at
// debug level, and no traces.
func ServerLogger(log *slog.Logger) server.Logger { return &natsLogger{log: log} }

type natsLogger struct{ log *slog.Logger }

func (l *natsLogger) Noticef(f string, v ...any) { l.log.Debug(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Warnf(f string, v ...any)   { l.log.Warn(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Fatalf(f string, v ...any)  { l.log.Error(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Errorf(f string, v ...any)  { l.log.Error(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Debugf(f string, v ...any)  { l.log.Debug(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Tracef(f string, v ...any)  {}
